"""Benchmarks (toolchain, never imported by the runtime).

``nclama bench ops`` times the primitive-op kernels; ``nclama bench machine`` times hard execution against soft
execution and against the plain Python function, and soft execution of recursive Fibonacci by depth. Every number is
a ratio against a baseline measured in the same process, since this machine is shared and noisy.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Sequence

import torch

from ..ops import STRUCTURED, pushforward
from .compiler import compile_library, standard_library

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


def _machine_cases(rng, value_size: int) -> dict:
    """Workloads of ``bench_machine``: label -> (program, a builder of one example's arguments). Numbers go in as
    the cells the Python function takes (a tape [sign, digits]), so that both sides compute on the same input."""
    def sort_input(n):
        return lambda: ([rng.randrange(value_size) for _ in range(n)],)

    def add_input(digits):
        tape = lambda: [0] + [rng.randrange(10) for _ in range(digits - 1)] + [rng.randrange(1, 10)]  # noqa: E731
        return lambda: (tape(), tape())

    return {
        "insertion_sort, 16 items": ("insertion_sort", sort_input(16)),
        "insertion_sort, 64 items": ("insertion_sort", sort_input(64)),
        "long_add, 40 digits": ("long_add", add_input(40)),
        "gcd, operands below V": ("gcd", lambda: (rng.randrange(1, value_size), rng.randrange(1, value_size))),
        "fib_tape(60)": ("fib_tape", lambda: (60,)),
    }


def bench_machine(batch: int = 4096, value_size: int = 1024, seed: int = 0, examples: int = 20,
                  num_threads: int | None = 1, fib_depths: Sequence[int] = (2, 4, 6, 8), fib_value_size: int = 64) -> dict:
    """Hard execution of the standard library against the plain Python function of ``toolchain/stdlib.py`` on the
    same inputs, in this process: at batch 1 (``Library.run_calls`` of one call, encoding and decoding included, on
    each path of ``machine.HARD_PATHS``; medians over ``examples`` inputs, 3 for the batched torch path, which takes
    up to seconds a call), and at batch ``batch`` (``run_batch`` on the default path and on the batched torch path,
    against the Python function in a loop). Every answer is checked against Python. Then soft Fibonacci by depth.

    ``num_threads``: torch's threads (the compiled path's batch runs one machine per numba thread)."""
    import random

    from . import stdlib
    from ..library import Library
    from ..machine import HARD_PATHS, Machine

    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    threads = torch.get_num_threads()
    try:
        rng = random.Random(seed)
        lib = standard_library(value_size)
        single, batched = [], []
        for label, (name, build) in _machine_cases(rng, value_size).items():
            reference = getattr(stdlib, name)
            returns = lib[name].returns

            def python(args, reference=reference):  # the function mutates lists: it gets copies, as the machine's
                return reference(*[list(a) if isinstance(a, list) else a for a in args])

            def expected(args, returns=returns):
                value = python(args)
                return Library.from_cells(returns, value) if returns in ("tape", "numbers") else value

            inputs = [build() for _ in range(examples)]
            lib.run_calls([(name, inputs[0])])  # warm-up: the compiled loop's first call compiles or loads it
            row = {"workload": label, "python_us": statistics.median(_time_us(python, args) for args in inputs)}
            for path in HARD_PATHS:
                times = []
                for args in inputs[: 3 if path == "batched" else examples]:
                    start = time.perf_counter()
                    result = lib.run_calls([(name, args)], path=path)
                    times.append((time.perf_counter() - start) * 1e6)
                    if result.values != [expected(args)]:
                        raise AssertionError(f"{path} execution of {name} disagrees with Python")
                row[f"{path}_us"] = statistics.median(times)
                row[f"{path}_over_python"] = row[f"{path}_us"] / row["python_us"]
            row["steps"] = result.steps[0]
            single.append(row)

            many = [build() for _ in range(batch)]
            start = time.perf_counter()
            want = [expected(args) for args in many]
            python_s = time.perf_counter() - start
            timing = {}
            for path in (Machine.hard_path(batch), "batched"):
                start = time.perf_counter()
                result = lib.run_calls([(name, args) for args in many], path=path)
                timing[path] = time.perf_counter() - start
                if result.values != want:
                    raise AssertionError(f"{path} execution of {name} disagrees with Python at batch {batch}")
            default = Machine.hard_path(batch)
            batched.append({"workload": label, "batch": batch, "max_steps": max(result.steps), "python_s": python_s,
                            "default_path": default, "default_s": timing[default], "batched_s": timing["batched"],
                            "default_over_python": python_s / timing[default],
                            "batched_over_python": python_s / timing["batched"]})
        return {"single": single, "batch": batched, "value_size": value_size, "threads": threads,
                "fib": bench_soft_fib(fib_depths, fib_value_size)}
    finally:
        torch.set_num_threads(previous_threads)


def _time_us(fn, args, repeats: int = 20) -> float:
    """Mean time of ``fn(args)`` in microseconds over ``repeats`` calls (one call of a sub-microsecond function is
    below the clock's resolution)."""
    start = time.perf_counter()
    for _ in range(repeats):
        fn(args)
    return (time.perf_counter() - start) * 1e6 / repeats


def bench_soft_fib(depths: Sequence[int], value_size: int) -> list[dict]:
    """Soft execution of the recursive ``fib`` by depth, with gradients: steps/s and the memory autograd keeps
    (distinct storages saved for backward, counted by saved-tensor hooks)."""
    from .analysis import SavedBytes, stdlib_function_source
    from ..library import Library

    lib = compile_library(stdlib_function_source("fib_recursive"), value_size, memory_size=8)
    program = lib["fib_recursive"]
    rows = []
    for depth in depths:
        saved = SavedBytes()
        x, memory = lib.encode_soft(program, [(depth,)])
        x.requires_grad_(True)
        entry = torch.ones(1, 1)
        start = time.perf_counter()
        with saved.hooks():
            run = lib.run_soft(entry, x, memory)
        forward_s = time.perf_counter() - start
        run.cells[0, lib.machine.num_registers].max().backward()
        steps = float(run.steps[0].detach())
        rows.append({"depth": depth, "steps": steps, "steps_per_s": steps / forward_s,
                     "autograd_mib": saved.megabytes, "forward_s": forward_s})
    return rows


def format_machine_tables(report: dict) -> str:
    """Markdown tables of ``bench_machine``."""
    lines = [f"Batch 1, V = {report['value_size']}: one call through `Library.run_calls` (encode, run, decode) on each "
             "path, against the plain Python function; medians, microseconds; the ratio is the call's time over "
             "Python's (lower is better).", "",
             "| workload | steps | Python (us) | compiled (us) | compiled / Python | plain (us) | plain / Python | "
             "batched (us) | batched / Python |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["single"]:
        lines.append(f"| {r['workload']} | {r['steps']} | {r['python_us']:.1f} | {r['compiled_us']:.1f} | "
                     f"{r['compiled_over_python']:.1f}x | {r['plain_us']:.0f} | {r['plain_over_python']:.0f}x | "
                     f"{r['batched_us']:.0f} | {r['batched_over_python']:.0f}x |")
    lines += ["", f"Batch {report['batch'][0]['batch'] if report['batch'] else '-'}: `run_calls` of the whole batch "
              f"against the Python function in a loop ({report['threads']} torch thread(s)); the ratio is the machine's "
              "throughput over Python's (higher is better).", "",
              "| workload | max steps | Python (s) | default path | default (s) | default / Python | batched (s) | "
              "batched / Python |", "|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in report["batch"]:
        lines.append(f"| {r['workload']} | {r['max_steps']} | {r['python_s']:.3f} | {r['default_path']} | "
                     f"{r['default_s']:.3f} | {r['default_over_python']:.2f}x | {r['batched_s']:.2f} | "
                     f"{r['batched_over_python']:.3f}x |")
    lines += ["", "Soft execution of recursive fib (with autograd):", "",
              "| depth n | steps | steps/s | autograd memory (MiB) |", "|---:|---:|---:|---:|"]
    for r in report["fib"]:
        lines.append(f"| {r['depth']} | {r['steps']:.0f} | {r['steps_per_s']:.0f} | {r['autograd_mib']:.1f} |")
    return "\n".join(lines)


BENCH_PROMPTS = ("What is 81273 plus 4406?", "Sort the list [5, 3, 9, 1].", "gcd(84, 36)=", "What is 734 times 58?")


def _preset_case(name: str):
    """A preset's (LLaMA, tokenizer, NCLlama converted from it): random weights, the project's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from .checkpoints import preset
    from ..library import Library
    from ..modeling_nclama import NCLlamaForCausalLM
    from .tokenization import default_tokenizer, reader_tokens

    tok = default_tokenizer()
    settings = {k: v for k, v in preset(name).items() if not k.startswith("nc_")}
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(**{**settings, **ids}))
    return llama, tok, NCLlamaForCausalLM.from_llama(llama, standard_library(256), reader_tokens=reader_tokens(tok))


def _base_case(folder: str):
    """A pretrained base folder's (LLaMA, tokenizer, NCLlama converted from it) with the standard library at
    V = 1024, " yes" / " no" as the comparison words and the call head on the hidden state; every other setting
    at its default."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from ..library import Library
    from ..modeling_nclama import NCLlamaForCausalLM
    from .tokenization import reader_tokens

    tok = AutoTokenizer.from_pretrained(folder)
    llama = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = NCLlamaForCausalLM.from_llama(llama, standard_library(1024), reader_tokens=reader_tokens(tok, words=[" yes", " no"]),
                                          nc_call_reader="hidden")
    return llama, tok, model


def _recipe_case(recipe_path: str):
    """(LLaMA, tokenizer, NCLlama) of a training recipe that converts a LLaMA (``model.from_llama``): the NCLlama
    exactly as ``nclama train`` builds it before training, the LLaMA its base folder."""
    from transformers import LlamaForCausalLM

    from .training import build_model, load_recipe

    spec = load_recipe(recipe_path)["model"]
    if "from_llama" not in spec:
        raise ValueError(f"{recipe_path}: the model bench needs a recipe whose model converts a LLaMA (model.from_llama)")
    model, tok, _ = build_model(spec)
    return LlamaForCausalLM.from_pretrained(spec["from_llama"]["path"], dtype=torch.float32), tok, model.float()


def bench_model(presets: Sequence[str] = ("tiny", "llama-3.2-1b"), batch: int = 4, new_tokens: int = 8,
                repeats: int = 15, num_threads: int | None = None, bases: Sequence[str] = (),
                recipes: Sequence[str] = ()) -> list[dict]:
    """NCLlama (hard mode, library attached) against ``LlamaForCausalLM`` of the same preset and weights, in this
    process, on the same batch: forward+backward time, greedy generation tokens/s (batch 1), and the memory autograd
    keeps for backward. The NCLlama is converted from that LLaMA with ``from_llama``. The two models are timed in
    alternation (``repeats`` rounds; the first of each round alternates), so that the machine's load changes hit both
    alike: times are medians over the rounds, the overhead and the generation ratio medians of each round's ratio.

    ``bases``: pretrained LLaMA folders (``nclama base smollm2-135m-instruct -o out/smollm2``) benchmarked the same
    way with their own weights and tokenizer; ``recipes``: training recipes whose model converts a LLaMA folder, the
    NCLlama built as ``nclama train`` builds it (its nc_* settings), against that folder's LLaMA."""
    from .analysis import SavedBytes

    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    cases = [(name, lambda name=name: _preset_case(name)) for name in presets]
    cases += [(Path(folder).name, lambda folder=folder: _base_case(folder)) for folder in bases]
    cases += [(Path(recipe).stem, lambda recipe=recipe: _recipe_case(recipe)) for recipe in recipes]
    rows = []
    try:
        for name, build in cases:
            llama, tok, model = build()
            tok.padding_side = "left"
            prompts = [BENCH_PROMPTS[i % len(BENCH_PROMPTS)] for i in range(batch)]
            inputs = tok(prompts, return_tensors="pt", padding=True)
            one = tok(prompts[:1], return_tensors="pt")

            def train_step(model):
                model.train()
                model.zero_grad(set_to_none=True)
                model(**inputs, labels=inputs["input_ids"]).loss.backward()
                model.zero_grad(set_to_none=True)

            def generate(model):
                model.eval()
                with torch.no_grad():
                    model.generate(**one, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                   pad_token_id=tok.pad_token_id)

            def autograd_mib(model) -> float:
                saved = SavedBytes()
                with saved.hooks():
                    model.train()
                    model(**inputs, labels=inputs["input_ids"]).loss.backward()
                model.zero_grad(set_to_none=True)
                return saved.megabytes

            models = {"llama": llama, "nclama": model}
            times = {label: {"train": [], "generate": []} for label in models}
            for label, m in models.items():  # warm up: caches, the library's results
                train_step(m), generate(m)
            for round_ in range(repeats):  # which model goes first alternates, so neither always follows the other
                for label, m in sorted(models.items(), reverse=bool(round_ % 2)):
                    times[label]["train"].append(_time_ms(lambda: train_step(m), 1, warmup=0))
                    times[label]["generate"].append(_time_ms(lambda: generate(m), 1, warmup=0))
            result = {
                label: {"train_ms": statistics.median(t["train"]),
                        "tokens_per_s": new_tokens / (statistics.median(t["generate"]) / 1e3),
                        "autograd_mib": autograd_mib(models[label])}
                for label, t in times.items()
            }
            del llama, model, models
            base, mine = result["llama"], result["nclama"]
            # The ratios are medians of each round's own ratio: the two models of a round run back to back, so a
            # change of the machine's load between rounds cancels out (the ratio of the medians would keep it).
            train_ratios = [n / l for n, l in zip(times["nclama"]["train"], times["llama"]["train"])]
            generate_ratios = [l / n for n, l in zip(times["nclama"]["generate"], times["llama"]["generate"])]
            rows.append({
                "preset": name, "batch": batch, "seq": inputs["input_ids"].shape[1], "llama": base, "nclama": mine,
                "train_overhead": statistics.median(train_ratios) - 1.0,
                "generate_ratio": statistics.median(generate_ratios),
                "threads": torch.get_num_threads(), "rounds": repeats,
            })
    finally:
        torch.set_num_threads(previous_threads)
    return rows


def format_model_table(rows: list[dict]) -> str:
    """Markdown table of ``bench_model``."""
    lines = ["| preset | batch x seq | threads | forward+backward ms (LLaMA / NCLlama) | overhead | generate tokens/s "
             "(LLaMA / NCLlama) | ratio | autograd MiB (LLaMA / NCLlama) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        a, b = r["llama"], r["nclama"]
        lines.append(f"| {r['preset']} | {r['batch']} x {r['seq']} | {r['threads']} | {a['train_ms']:.0f} / {b['train_ms']:.0f} | "
                     f"{100 * r['train_overhead']:+.0f}% | {a['tokens_per_s']:.1f} / {b['tokens_per_s']:.1f} | "
                     f"{r['generate_ratio']:.2f}x | {a['autograd_mib']:.1f} / {b['autograd_mib']:.1f} |")
    return "\n".join(lines)
