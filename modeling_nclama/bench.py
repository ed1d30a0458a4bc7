"""Benchmarks (toolchain, never imported by the runtime). ``nclama bench ops`` times the primitive-op kernels."""
from __future__ import annotations

import statistics
import time
from typing import Sequence

import torch

from .ops import STRUCTURED, pushforward

BENCH_OPS: tuple[str, ...] = ("add", "sub", "lt", "eq", "min", "mul", "mod")


def _time_ms(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in ms, after ``warmup`` untimed calls (which also build cached index maps)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_ops(
    value_sizes: Sequence[int] = (16, 128, 1000),
    batch: int = 256,
    repeats: int = 7,
    ops: Sequence[str] = BENCH_OPS,
    top_k: int = 4,
    seed: int = 0,
    num_threads: int | None = 1,
) -> list[dict]:
    """Time each kernel method on random distributions of shape [batch, V], in this process.

    Rows: op, V, batch, method, ms (median per call), speedup (index ms / method ms), max_abs_diff against the
    index path (0 up to rounding for exact methods, though at large V the float32 index path itself is the least
    accurate: ~4e-5 at V = 1000 against ~1e-7 for the structured kernels; top-k with k < V drops mass on dense
    inputs by design).
    The index path repeats at most 3 times when V >= 512, where one call takes about a second.
    ``num_threads`` sets torch's intra-op threads for the run (None: leave as is). It defaults to 1 because on a
    small shared machine multi-threaded sub-millisecond kernels stall on each other (measured here: a [256, 1000]
    cumsum takes 0.24 ms on 1 thread and 8 ms on 2 threads under load).
    """
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _bench_ops(value_sizes, batch, repeats, ops, top_k, seed)
    finally:
        torch.set_num_threads(previous_threads)


def _bench_ops(value_sizes, batch, repeats, ops, top_k, seed) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    with torch.inference_mode():
        for value_size in value_sizes:
            p_a = torch.rand(batch, value_size, generator=gen).softmax(-1)
            p_b = torch.rand(batch, value_size, generator=gen).softmax(-1)
            for name in ops:
                methods = {"index": {}, "topk": {"top_k": top_k}}
                if name in STRUCTURED:
                    methods = {"structured": {}, **methods}
                reference = pushforward(name, p_a, p_b, method="index")
                results = {}
                for method, kwargs in methods.items():
                    def call(method=method, kwargs=kwargs):
                        return pushforward(name, p_a, p_b, method=method, **kwargs)
                    n = min(repeats, 3) if method == "index" and value_size >= 512 else repeats
                    diff = (call() - reference).abs().max().item()
                    results[method] = (_time_ms(call, n, warmup=0 if method == "index" else 1), diff)
                for method, (ms, diff) in results.items():
                    rows.append({
                        "op": name, "V": value_size, "batch": batch,
                        "method": method if method != "topk" else f"topk (k={top_k})",
                        "threads": torch.get_num_threads(), "ms": ms, "speedup": results["index"][0] / ms,
                        "max_abs_diff": diff,
                    })
    return rows


def format_ops_table(rows: list[dict]) -> str:
    """Markdown table of ``bench_ops`` rows."""
    lines = ["| op | V | batch | threads | method | ms / call | index / method | max abs diff vs index |",
             "|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['V']} | {r['batch']} | {r['threads']} | {r['method']} | {r['ms']:.3f} | "
                     f"{r['speedup']:.1f}x | {r['max_abs_diff']:.1e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_ops_table(bench_ops()))
