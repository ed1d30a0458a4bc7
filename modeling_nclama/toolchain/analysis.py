"""Differentiability experiments on the differentiable computer (toolchain; never imported by the runtime).

Three experiments:

``fibonacci_gradients``: the paper's Fibonacci analysis, measured. The recursive ``fib`` of the standard library
(``fib(n - 1) + fib(n - 2)``, recursion depth ``n``) runs in soft mode for n = 1 .. max_depth; the loss is the negative
log-probability of ``fib(n) mod V`` in the result distribution, and backpropagation through the whole unrolled
execution gives, per depth, the gradient norms with respect to the input distribution and to the program's weights.
Two programs are measured at every depth:

* the *exact* compiled program (one-hot, ``-inf`` logits): soft execution equals hard execution, the answer has
  probability 1, and the program's weights have zero gradient by construction; the input gradient is measured.
* the *softened* program (``Program.soften(sharpness)``: every logit at least ``sharpness`` below its row's maximum,
  so every field leaks ``~exp(-sharpness)`` mass per entry): trainable, and the leak compounds over the unrolled
  steps; both the input gradient and the program-weight gradient are measured.

``repair_program``: adaptation by gradient descent (Adaptive Neural Compilation, Bunel et al. 2016). A compiled
program gets one corrupted instruction field, is shown to be wrong in hard mode, is softened and fine-tuned with Adam
on input/output examples through soft execution, and its argmax (re-assembled exactly one-hot) is checked in hard mode
on held-out random inputs.

``fibonacci_training_curves``: trainability against depth. One field row of a line of the compiled recursive ``fib`` is
corrupted and retrained with Adam through soft execution on fib(k), k <= n, for increasing n; the rest of the program
is either exact or softened as in ``fibonacci_gradients``. It records the loss, the probability of the right answer
and the argmax program's hard accuracy per update.

The first two run on CPU in seconds to a minute at their defaults, the third in 2.5 to 4 minutes (one thread).
matplotlib is imported only by the plotting functions.
"""
from __future__ import annotations

import ast
import math
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from ..library import Library
from ..program import BRANCHES, OPS, Program
from .compiler import compile_library

__all__ = [
    "stdlib_function_source",
    "fibonacci_gradients",
    "format_table",
    "plot_fibonacci_gradients",
    "repair_program",
    "format_repair_report",
    "fibonacci_training_curves",
    "format_training_table",
    "plot_fibonacci_training",
]


# ---------------------------------------------------------------------------------------------------------------------
# helpers


def stdlib_function_source(name: str) -> str:
    """The source text of one function of ``modeling_nclama/toolchain/stdlib.py`` (read with ``ast``, never imported/executed).

    Compiling one function alone gives a small machine (few registers, few lines), which keeps soft execution cheap;
    the compiled code of the function is the same as in ``standard_library``."""
    text = (Path(__file__).resolve().parent / "stdlib.py").read_text()
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_source_segment(text, node) + "\n"
    raise KeyError(f"no function {name!r} in the standard library")


def _fib_mod(n: int, value_size: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, (a + b) % value_size
    return a % value_size


class SavedBytes:
    """Counts the distinct storage bytes autograd saves for backward (the memory backprop through the unrolled
    execution needs), via ``torch.autograd.graph.saved_tensors_hooks``. Cheap: one dict insert per saved tensor."""

    def __init__(self):
        self.storages: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            s = t.untyped_storage()
            self.storages[s.data_ptr()] = s.nbytes()
        except (RuntimeError, NotImplementedError):  # e.g. tensors without storage
            pass
        return t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    @property
    def megabytes(self) -> float:
        return sum(self.storages.values()) / 2**20

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


def _grad_norm(tensors: Sequence[torch.Tensor]) -> float:
    total = 0.0
    for t in tensors:
        if t.grad is not None:
            total += float(t.grad.detach().double().pow(2).sum())
    return math.sqrt(total)


# ---------------------------------------------------------------------------------------------------------------------
# 1. Fibonacci: gradients through deep unrolled recursion


def _fib_once(lib: Library, program: Program, n: int, *, train_weights: bool, max_steps: int, dtype: torch.dtype) -> dict:
    """One soft run of ``fib(n)`` on a one-hot input distribution, with backprop; returns the measurements."""
    V = lib.value_size
    weights = {k: w.detach().clone().requires_grad_(train_weights and w.numel() > 0) for k, w in program.weights.items()}
    run_lib = lib.with_programs([program.with_weights(weights)])
    x_in = torch.nn.functional.one_hot(torch.tensor(n), V).to(dtype).requires_grad_(True)
    args, memory = run_lib.encode_soft(run_lib[program.name], [(x_in,)], dtype=dtype)
    entry = torch.zeros(1, len(run_lib), dtype=dtype)
    entry[0, run_lib.machine.index[program.name]] = 1.0
    saved = SavedBytes()
    start = time.perf_counter()
    with saved.hooks():
        # prune=-1: never skip work of zero probability. The default (prune=0) skips it, which is exact for the values
        # but drops the gradient terms d(mass) * work of zero-mass ops/calls/returns at one-hot points.
        run = run_lib.run_soft(entry, args, memory, max_steps=max_steps, prune=-1.0)
        result = run.cells[0, run_lib.machine.num_registers]
        target = _fib_mod(n, V)
        p_correct = result[target]
        loss = -torch.log(p_correct.clamp_min(torch.finfo(dtype).tiny))
    loss.backward()
    elapsed = time.perf_counter() - start
    g = x_in.grad.detach()
    return {
        "steps": float(run.steps[0].detach()),
        "halted": float(run.halted[0].detach()),
        "fault": float(run.fault[0].detach()),
        "p_correct": float(p_correct.detach()),
        "loss": float(loss.detach()),
        "grad_input": float((g - g.mean()).norm()),
        "grad_input_raw": float(g.norm()),
        "grad_program": _grad_norm([w for w in weights.values() if w.requires_grad]) if train_weights else 0.0,
        "time_s": elapsed,
        "saved_mb": saved.megabytes,
    }


def fibonacci_gradients(
    max_depth: int = 8,
    value_size: int = 32,
    sharpness: float = 16.0,
    *,
    min_depth: int = 1,
    exact: bool = True,
    dtype: torch.dtype = torch.float64,
    step_margin: int = 16,
    threads: Optional[int] = None,
    verbose: bool = False,
) -> list[dict]:
    """Gradients through recursive ``fib(n)`` in soft mode, for n = ``min_depth`` .. ``max_depth`` (depth = n).

    The input is the exact one-hot distribution of ``n`` (a leaf tensor of shape [V]); the loss is
    ``-log P(result = fib(n) mod V)``. Per depth, one row (a dict) with:

    * ``depth``, ``target`` (fib(n) mod V), ``hard_steps`` (steps of exact execution);
    * for the softened program (``Program.soften(sharpness)``, finite logits): ``steps`` (expected steps),
      ``halted`` (halting probability), ``fault`` (stack-overflow/memory-fault probability), ``p_correct``,
      ``loss``, ``grad_input`` (L2 norm of dloss/d input distribution, projected on the simplex's tangent space, i.e.
      minus its mean: the part a softmax upstream can use), ``grad_input_raw`` (the plain L2 norm), ``grad_program`` (L2 norm of dloss/d all
      logit tensors of the program), ``time_s`` (forward + backward wall time), ``saved_mb`` (distinct storage bytes
      autograd saved for backward: the memory cost of backprop through the unrolled run);
    * if ``exact``, the same for the exactly compiled program with the prefix ``exact_`` (its ``p_correct`` is 1 and
      its program gradient is zero by construction, so only the input gradient is meaningful). Caveat: soft execution
      is not differentiable at exactly one-hot points where no pc mass sits on a line with a result (a call or ret
      line): the branch probability ``P(result = 0) = result[0] / P(normal line)`` is 0/0 there, clamped to 0. So this
      column is autograd's value at that point (all terms kept: ``prune=-1``), not a true gradient; finite
      differences in the tangent direction e_5 - e_n give 69 vs autograd 57 at n = 2 (the softened program matches
      finite differences to 5 digits). Its growth with depth is the point: the sensitivity of the superposed machine
      to a perturbation of its input grows geometrically with the number of steps.

    Soft runs stop at ``hard_steps + step_margin`` steps (a softened program never halts with probability exactly 1).
    float64 is the default: the exact program's input gradient grows by orders of magnitude per recursion level and
    overflows float32 (inf/nan) at depth 8 with V = 32. The machine is fib alone (``stdlib_function_source("fib_recursive")``),
    2 registers, 11 lines; its stack holds ``max_depth + 2`` frames.
    """
    if not 1 <= min_depth <= max_depth:
        raise ValueError(f"need 1 <= min_depth <= max_depth, got {min_depth}, {max_depth}")
    if max_depth >= value_size:
        raise ValueError(f"max_depth {max_depth} must be below value_size {value_size} (n is one value)")
    if threads:
        torch.set_num_threads(threads)
    lib = compile_library(stdlib_function_source("fib_recursive"), value_size=value_size, memory_size=2, stack_depth=max_depth + 2)
    compiled = lib["fib_recursive"]
    softened = compiled.soften(sharpness)
    rows = []
    for n in range(min_depth, max_depth + 1):
        hard = lib.run_batch("fib_recursive", [(n,)])
        if hard.status[0] != "ok" or hard.values[0] != _fib_mod(n, value_size):
            raise RuntimeError(f"hard fib({n}) gave {hard.values[0]} ({hard.status[0]}), expected {_fib_mod(n, value_size)}")
        max_steps = hard.steps[0] + step_margin
        row = {"depth": n, "target": _fib_mod(n, value_size), "hard_steps": hard.steps[0], "sharpness": sharpness}
        row.update(_fib_once(lib, softened, n, train_weights=True, max_steps=max_steps, dtype=dtype))
        if exact:
            measured = _fib_once(lib, compiled, n, train_weights=False, max_steps=max_steps, dtype=dtype)
            row.update({f"exact_{k}": v for k, v in measured.items() if k != "grad_program"})
        rows.append(row)
        if verbose:
            print(format_table([row], header=not rows[:-1]), flush=True)
    return rows


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return str(value)
    if 1e-3 <= abs(value) < 1e4:
        return f"{value:.4g}"
    return f"{value:.2e}"


def format_table(rows: Sequence[dict], header: bool = True) -> str:
    """Markdown table of ``fibonacci_gradients`` rows."""
    has_exact = bool(rows) and "exact_grad_input" in rows[0]
    cols = [
        ("depth n", lambda r: str(r["depth"])),
        ("hard steps", lambda r: str(r["hard_steps"])),
    ]
    if has_exact:
        cols += [
            ("exact: ‖∇input‖", lambda r: _fmt(r["exact_grad_input"])),
            ("exact: time s", lambda r: f"{r['exact_time_s']:.2f}"),
        ]
    cols += [
        ("soft: P(correct)", lambda r: _fmt(r["p_correct"])),
        ("soft: loss", lambda r: _fmt(r["loss"])),
        ("soft: P(halted)", lambda r: _fmt(r["halted"])),
        ("soft: ‖∇input‖", lambda r: _fmt(r["grad_input"])),
        ("soft: ‖∇program‖", lambda r: _fmt(r["grad_program"])),
        ("soft: time s", lambda r: f"{r['time_s']:.2f}"),
        ("soft: saved MB", lambda r: f"{r['saved_mb']:.1f}"),
    ]
    lines = []
    if header:
        lines.append("| " + " | ".join(c for c, _ in cols) + " |")
        lines.append("|" + "|".join(" ---: " for _ in cols) + "|")
    for r in rows:
        lines.append("| " + " | ".join(f(r) for _, f in cols) + " |")
    return "\n".join(lines)


def plot_fibonacci_gradients(rows: Sequence[dict], path: Union[str, Path]) -> Path:
    """PNG: gradient norms (log scale) and steps vs depth (left), probability of the right answer vs depth (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    depth = [r["depth"] for r in rows]
    positive = lambda xs: [x if x > 0 and math.isfinite(x) else float("nan") for x in xs]  # noqa: E731
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    if rows and "exact_grad_input" in rows[0]:
        left.plot(depth, positive([r["exact_grad_input"] for r in rows]), "o-", label="‖∇input‖, exact program")
    left.plot(depth, positive([r["grad_input"] for r in rows]), "s-", label="‖∇input‖, softened program")
    left.plot(depth, positive([r["grad_program"] for r in rows]), "^-", label="‖∇program‖, softened program")
    left.set_yscale("log")
    left.set_xlabel("recursion depth n of fib(n)")
    left.set_ylabel("gradient L2 norm")
    left.grid(True, which="both", alpha=0.3)
    steps_axis = left.twinx()
    steps_axis.plot(depth, [r["hard_steps"] for r in rows], "k:", label="machine steps")
    steps_axis.set_yscale("log")
    steps_axis.set_ylabel("machine steps (dotted)")
    left.legend(loc="upper left", fontsize=8)
    sharp = rows[0].get("sharpness", float("nan")) if rows else float("nan")
    left.set_title("gradients through unrolled recursive fib")
    right.plot(depth, positive([r["p_correct"] for r in rows]), "s-", color="C1", label=f"softened (sharpness {sharp:g})")
    if rows and "exact_p_correct" in rows[0]:
        right.plot(depth, positive([r["exact_p_correct"] for r in rows]), "o--", color="C0", label="exact program")
    right.set_yscale("log")
    right.set_xlabel("recursion depth n of fib(n)")
    right.set_ylabel("P(result = fib(n) mod V)")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=8)
    right.set_title("probability of the right answer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# 2. Repair a corrupted program by gradient descent


def _random_inputs(program: Program, count: int, rng: random.Random, value_size: int, max_len: int) -> list[tuple]:
    out = []
    for _ in range(count):
        example = []
        for _, ptype in program.params:
            if ptype == "int":
                example.append(rng.randrange(value_size))
            else:
                example.append([rng.randrange(value_size) for _ in range(rng.randint(0, max_len))])
        out.append(tuple(example))
    return out


def _hard_accuracy(lib: Library, program: Program, inputs: Sequence[tuple], expected: Sequence[int], max_steps: int) -> float:
    result = lib.with_programs([program]).run_batch(program.name, inputs, max_steps=max_steps)
    return sum(v == e for v, e in zip(result.values, expected)) / len(expected)


def _line_text(program: Program, line: int) -> str:
    return program.assembly().splitlines()[line + 1 + (1 if program.num_consts else 0)].strip()


def _corrupt(program: Program, line: int, field: str, value: Union[str, int]) -> Program:
    instructions = program.instructions()
    ins = instructions[line]
    if field == "op":
        if value not in OPS:
            raise ValueError(f"unknown op {value!r}")
        new = replace(ins, op=value)
    elif field == "branch":
        if value not in BRANCHES:
            raise ValueError(f"unknown branch {value!r}")
        new = replace(ins, branch=value)
    elif field in ("dst", "a", "b", "c", "target", "callee"):
        new = replace(ins, **{field: value})
    else:
        raise ValueError(f"field must be op, dst, a, b, c, branch, target or callee, got {field!r}")
    instructions[line] = new
    return program.with_instructions(instructions)


def _default_corruption(program: Program) -> tuple[int, str, str]:
    """The last ``add`` becomes ``sub`` (for ``sum_list``: the accumulation ``s += x`` becomes ``s -= x``)."""
    adds = [i for i, ins in enumerate(program.instructions()) if ins.op == "add"]
    if not adds:
        raise ValueError(f"{program.name} has no add to corrupt; pass corrupt=(line, field, value)")
    return adds[-1], "op", "sub"


def repair_program(
    name: str = "sum_list",
    source: Optional[str] = None,
    *,
    corrupt: Optional[tuple[int, str, Union[str, int]]] = None,
    value_size: int = 16,
    memory_size: int = 8,
    max_len: int = 4,
    train_rows: str = "field",
    sharpness: float = 10.0,
    line_sharpness: Optional[float] = 3.0,
    lr: float = 0.3,
    max_updates: int = 150,
    num_train: int = 32,
    num_test: int = 200,
    seed: int = 0,
    step_margin: int = 4,
    prune: float = 1e-3,
    threads: Optional[int] = None,
    verbose: bool = False,
) -> dict:
    """Corrupt one instruction field of a compiled program, then repair it by gradient descent through soft execution.

    ``name``: a program of ``source`` (default: that function of the standard library, compiled alone) returning an
    int. ``corrupt``: ``(line, field, value)``, e.g. ``(6, "op", "sub")``, ``(3, "target", 0)``, ``(4, "a", 2)``;
    default: the last ``add`` becomes ``sub``. The original compiled program is the reference: expected outputs are
    its hard-mode results. Random inputs: ints in [0, V), lists of 0 .. ``max_len`` items in [0, V).

    Training: the corrupted program is softened (``Program.soften(sharpness)``; the corrupted line's rows, every
    field, at ``line_sharpness`` instead, unless it is None: we know which line is suspect and give it room to move),
    and its logits are trained with Adam (``lr``) on ``num_train`` input/output examples, loss = mean
    -log P(result = expected) from soft execution (one full-batch update per step). Which logits train:
    ``train_rows="field"`` (default): only the corrupted field's row of that line (repairs the default corruption on
    every seed tried, 0-2); ``"line"``: the corrupted line's rows of every field (op, dst, a, b, c, branch, target,
    callee; less reliable: the line's load/store mass faults on out-of-memory addresses and the search wanders);
    ``"all"``: every logit tensor of the program (all lines, all fields, the constant pool). ``prune`` is passed to ``run_soft``: work whose probability is at most
    ``prune`` is skipped (1e-3 makes an update ~15x faster; the skipped ops of the other lines get no gradient).
    Training stops as soon as the argmax program is exact in hard mode on the training examples, or after
    ``max_updates``. Outcomes depend on the data (``seed``, ``num_train``): see the notes in the report of the PR.

    Returns a report: the corrupted and repaired instruction (text) and the original, the listings, hard accuracy of the
    corrupted and repaired programs on the training inputs and on ``num_test`` held-out random inputs, the loss curve,
    the updates used, which lines changed, and wall time.
    """
    if train_rows not in ("all", "line", "field"):
        raise ValueError(f"train_rows must be 'all', 'line' or 'field', got {train_rows!r}")
    if threads:
        torch.set_num_threads(threads)
    source = source if source is not None else stdlib_function_source(name)
    lib = compile_library(source, value_size=value_size, memory_size=memory_size, stack_depth=8, max_steps=10_000)
    original = lib[name]
    if original.returns != "int":
        raise ValueError(f"repair_program trains on int results; {name} returns {original.returns}")
    rng = random.Random(seed)
    train_inputs = _random_inputs(original, num_train, rng, value_size, max_len)
    test_inputs = _random_inputs(original, num_test, rng, value_size, max_len)
    train_ref = lib.run_batch(name, train_inputs)
    test_ref = lib.run_batch(name, test_inputs)
    if any(s != "ok" for s in train_ref.status + test_ref.status):
        raise RuntimeError(f"the original {name} fails on some random inputs")
    hard_limit = 4 * max(train_ref.steps + test_ref.steps) + 64  # a corrupted program may loop: cap it
    line, field, value = corrupt if corrupt is not None else _default_corruption(original)
    corrupted = _corrupt(original, line, field, value)
    acc_train_before = _hard_accuracy(lib, corrupted, train_inputs, train_ref.values, hard_limit)
    acc_test_before = _hard_accuracy(lib, corrupted, test_inputs, test_ref.values, hard_limit)

    soft = corrupted.soften(sharpness)
    weights = {k: w.clone() for k, w in soft.weights.items()}
    if line_sharpness is not None:
        line_soft = corrupted.soften(line_sharpness).weights
        for k, w in weights.items():
            if k != "consts" and w.numel():
                w[line] = line_soft[k][line]
    params = {k: w.detach().clone().requires_grad_(w.numel() > 0) for k, w in weights.items()}
    masks = None
    if train_rows != "all":
        masks = {}
        for k, w in params.items():
            m = torch.zeros_like(w)
            if k != "consts" and w.numel() and (train_rows == "line" or k == field):
                m[line] = 1.0
            masks[k] = m
        trainable = [params[k] for k in params if masks[k].any()]
    else:
        trainable = [w for w in params.values() if w.numel()]
    optimizer = torch.optim.Adam(trainable, lr=lr)
    soft_steps = max(train_ref.steps) + step_margin
    expected = torch.tensor(train_ref.values)
    entry = torch.zeros(num_train, 1)
    entry[:, 0] = 1.0
    args, memory = lib.encode(original, train_inputs)
    V = value_size
    args = torch.nn.functional.one_hot(args, V).float()
    memory = torch.nn.functional.one_hot(memory, V).float()
    losses, train_acc_curve = [], []
    start = time.perf_counter()
    updates = 0
    repaired = soft.with_weights({k: w.detach() for k, w in params.items()}).hardened()
    for updates in range(1, max_updates + 1):
        program = soft.with_weights(params)
        run = lib.with_programs([program]).run_soft(entry, args, memory, max_steps=soft_steps, prune=prune)
        result = run.cells[:, lib.machine.num_registers]
        p = result.gather(1, expected.unsqueeze(1)).squeeze(1)
        loss = -torch.log(p.clamp_min(1e-12)).mean()
        optimizer.zero_grad()
        loss.backward()
        if masks is not None:
            for k, w in params.items():
                if w.grad is not None:
                    w.grad.mul_(masks[k])
        optimizer.step()
        losses.append(loss.item())
        repaired = soft.with_weights({k: w.detach() for k, w in params.items()}).hardened()
        acc = _hard_accuracy(lib, repaired, train_inputs, train_ref.values, hard_limit)
        train_acc_curve.append(acc)
        if verbose:
            print(f"update {updates:4d}  loss {losses[-1]:.4f}  hard train accuracy {acc:.3f}", flush=True)
        if acc == 1.0:
            break
    elapsed = time.perf_counter() - start
    acc_train_after = _hard_accuracy(lib, repaired, train_inputs, train_ref.values, hard_limit)
    acc_test_after = _hard_accuracy(lib, repaired, test_inputs, test_ref.values, hard_limit)
    orig_ins, rep_ins = original.instructions(), repaired.instructions()
    changed = [i for i, (a, b) in enumerate(zip(orig_ins, rep_ins)) if a != b]
    return {
        "program": name,
        "value_size": value_size,
        "corruption": {"line": line, "field": field, "value": value},
        "original_instruction": _line_text(original, line),
        "corrupted_instruction": _line_text(corrupted, line),
        "repaired_instruction": _line_text(repaired, line),
        "repaired_equals_original": changed == [] and original.consts() == repaired.consts(),
        "lines_differing_from_original": changed,
        "train_rows": train_rows,
        "sharpness": sharpness,
        "lr": lr,
        "updates": updates,
        "soft_steps": soft_steps,
        "loss_curve": losses,
        "train_accuracy_curve": train_acc_curve,
        "accuracy_before": {"train": acc_train_before, "test": acc_test_before},
        "accuracy_after": {"train": acc_train_after, "test": acc_test_after},
        "num_train": num_train,
        "num_test": num_test,
        "time_s": elapsed,
        "original_assembly": original.assembly(),
        "corrupted_assembly": corrupted.assembly(),
        "repaired_assembly": repaired.assembly(),
        "repaired_program": repaired,
    }


def format_repair_report(report: dict) -> str:
    """A readable summary of ``repair_program``'s report."""
    c = report["corruption"]
    b, a = report["accuracy_before"], report["accuracy_after"]
    curve = report["loss_curve"]
    shown = ", ".join(f"{x:.3g}" for x in curve[:: max(1, len(curve) // 8)])
    return "\n".join(
        [
            f"program {report['program']} (V={report['value_size']}), corrupted line {c['line']} field {c['field']} -> {c['value']!r}",
            f"  original:  {report['original_instruction']}",
            f"  corrupted: {report['corrupted_instruction']}",
            f"  repaired:  {report['repaired_instruction']}  (program identical to the original: {report['repaired_equals_original']})",
            f"hard accuracy before: train {b['train']:.3f}, held-out {b['test']:.3f} ({report['num_test']} random inputs)",
            f"hard accuracy after:  train {a['train']:.3f}, held-out {a['test']:.3f}",
            f"training: rows={report['train_rows']}, sharpness {report['sharpness']:g}, Adam lr {report['lr']:g},"
            f" {report['updates']} updates on {report['num_train']} examples, {report['soft_steps']} soft steps each,"
            f" {report['time_s']:.1f} s",
            f"loss curve (every {max(1, len(curve) // 8)}th): {shown}, final {curve[-1]:.3g}" if curve else "no updates",
        ]
    )


# ---------------------------------------------------------------------------------------------------------------------
# 3. Trainability: training curves through recursive fib at increasing depth


def _fib_training_run(
    lib: Library,
    deep: Library,
    corrupted: Program,
    rest: Optional[float],
    *,
    depth: int,
    line: int,
    field: str,
    line_sharpness: float,
    steps: int,
    lr: float,
    prune: float,
    step_margin: int,
    held_out: Sequence[int],
    hard_limit: int,
    dtype: torch.dtype,
    bar: tqdm,
) -> dict:
    """Train one row, ``field`` of ``line``, of the corrupted fib with Adam on fib(k), k = 0 .. depth; the rest of the
    program stays one-hot (``rest=None``) or softened to sharpness ``rest``, frozen. Metrics after 0 .. steps
    updates."""
    V, R = lib.value_size, lib.machine.num_registers
    name = "exact" if rest is None else "softened"
    base = corrupted if rest is None else corrupted.soften(rest)
    frozen = {k: w.to(dtype) for k, w in base.weights.items()}
    row = corrupted.soften(line_sharpness).weights[field][line].to(dtype).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([row], lr=lr)
    ks = list(range(depth + 1))
    targets = torch.tensor([_fib_mod(k, V) for k in ks])
    hard = lib.run_batch(corrupted.name, [(k,) for k in ks])  # the library holds the original program
    soft_steps = max(hard.steps) + step_margin
    args, memory = lib.encode(corrupted, [(k,) for k in ks])
    args = torch.nn.functional.one_hot(args, V).to(dtype)
    memory = torch.nn.functional.one_hot(memory, V).to(dtype)
    entry = torch.ones(len(ks), 1, dtype=dtype)
    held_expected = [_fib_mod(k, V) for k in held_out]

    def program(weights_row: torch.Tensor) -> Program:
        w = frozen[field]
        return base.with_weights({**frozen, field: torch.cat([w[:line], weights_row.unsqueeze(0), w[line + 1:]])})

    curve: dict[str, list] = {"loss": [], "p_correct": [], "hard_accuracy": [], "grad_norm": []}
    start = time.perf_counter()
    for update in range(steps + 1):
        with torch.set_grad_enabled(update < steps):
            run = lib.with_programs([program(row)]).run_soft(entry, args, memory, max_steps=soft_steps, prune=prune)
            p = run.cells[:, R].gather(1, targets.unsqueeze(1)).squeeze(1)
            loss = -torch.log(p.clamp_min(torch.finfo(dtype).tiny)).mean()
        argmax = program(row.detach()).hardened()
        curve["loss"].append(loss.item())
        curve["p_correct"].append(p[-1].item())
        curve["hard_accuracy"].append(_hard_accuracy(lib, argmax, [(k,) for k in ks], targets.tolist(), hard_limit))
        if update == steps:
            break
        optimizer.zero_grad()
        loss.backward()
        curve["grad_norm"].append(float(row.grad.norm()))
        optimizer.step()
        bar.set_postfix(depth=depth, program=name, loss=f"{loss.item():.3g}", refresh=False)
        bar.update(1)
    reached = [i for i, x in enumerate(curve["p_correct"]) if x >= 0.5]
    return {
        "program": name,
        "rest_sharpness": rest,
        "depth": depth,
        "hard_steps": hard.steps[-1],
        "soft_steps": soft_steps,
        **curve,
        "p_correct_by_k": p.tolist(),
        "updates_to_half": reached[0] if reached else None,
        "instruction_after": _line_text(argmax, line),
        "hard_accuracy_held_out": _hard_accuracy(deep, argmax, [(k,) for k in held_out], held_expected, hard_limit),
        "time_s": time.perf_counter() - start,
    }


def fibonacci_training_curves(
    max_depth: int = 7,
    steps: int = 40,
    *,
    min_depth: int = 2,
    value_size: int = 32,
    corrupt: tuple[int, str, Union[str, int]] = (9, "b", 1),
    sharpness: float = 16.0,
    line_sharpness: float = 3.0,
    lr: float = 0.3,
    prune: float = 1e-3,
    step_margin: int = 4,
    held_out_max: int = 12,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> dict:
    """Training curves through soft execution of recursive ``fib`` for depths n = ``min_depth`` .. ``max_depth``.

    Why: ``fibonacci_gradients`` measures gradients at one point; this asks whether gradient descent through the
    unrolled recursion actually trains, and how that changes with depth. The compiled ``fib`` (alone, V =
    ``value_size``) gets one corrupted instruction field (``corrupt``: ``(line, field, value)`` as in
    ``repair_program``), by default the operand b of line 9: ``add x0, r1, x0`` -> ``add x0, r1, r1`` (2 fib(n-1):
    wrong from fib(2) on, control flow unchanged, so the machine steps are those of the original). That
    field's row of that line is softened to ``line_sharpness`` and trained with Adam (``lr``, ``steps`` full-batch
    updates) on the examples fib(k) mod V, k = 0 .. n, loss = mean -log P(result = fib(k) mod V), soft execution for
    (hard steps of fib(n)) + ``step_margin`` machine steps (``prune`` as in ``repair_program``). Two programs per depth,
    the row trained the same way in both:

    * ``exact``: the rest of the program one-hot, as compiled: the only uncertainty is the trained row.
    * ``softened``: the rest softened to ``sharpness`` (16: the setting of ``fibonacci_gradients``) and frozen: the
      probability that leaks at every step is out of reach of the trained row.

    Per run (a dict in ``runs``): ``loss``, ``p_correct`` (P(right answer to fib(n)), the deepest example) and
    ``hard_accuracy`` (of the argmax program, exactly one-hot, hard mode, on k = 0 .. n) after 0 .. ``steps`` updates,
    ``grad_norm`` (of the trained row, per update), ``updates_to_half`` (first point with ``p_correct`` >= 0.5, or
    None), ``p_correct_by_k`` at the end, the trained line as text, and ``hard_accuracy_held_out`` (the argmax program
    on k = 0 .. ``held_out_max``: whether the data of depth n pinned down the right program). No randomness: the
    examples are all k <= n and the start is the corrupted program, so a run is deterministic.
    """
    if not 2 <= min_depth <= max_depth:
        raise ValueError(
            f"need 2 <= min_depth <= max_depth (fib(0), fib(1) are the base case), got {min_depth}, {max_depth}"
        )
    if max_depth > held_out_max:
        raise ValueError(f"max_depth {max_depth} is above held_out_max {held_out_max}")
    if held_out_max >= value_size:
        raise ValueError(f"held_out_max {held_out_max} must be below value_size {value_size} (k is one value)")
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    source = stdlib_function_source("fib_recursive")
    lib = compile_library(source, value_size=value_size, memory_size=2, stack_depth=max_depth + 2)
    deep = compile_library(source, value_size=value_size, memory_size=2, stack_depth=held_out_max + 2)
    original = lib["fib_recursive"]
    line, field, value = corrupt
    corrupted = _corrupt(original, line, field, value)
    held_out = list(range(held_out_max + 1))
    expected = [_fib_mod(k, value_size) for k in held_out]
    hard_limit = 4 * max(deep.run_batch("fib_recursive", [(k,) for k in held_out]).steps) + 64  # a wrong program may loop
    runs = []
    depths = range(min_depth, max_depth + 1)
    with tqdm(total=2 * len(depths) * steps, desc="fib-training", unit="update", disable=not progress) as bar:
        for rest in (None, sharpness):
            for n in depths:
                runs.append(_fib_training_run(
                    lib, deep, corrupted, rest, depth=n, line=line, field=field, line_sharpness=line_sharpness,
                    steps=steps, lr=lr, prune=prune, step_margin=step_margin, held_out=held_out, hard_limit=hard_limit,
                    dtype=dtype, bar=bar,
                ))
    return {
        "settings": {
            "value_size": value_size, "corruption": {"line": line, "field": field, "value": value},
            "sharpness": sharpness, "line_sharpness": line_sharpness, "lr": lr, "steps": steps, "prune": prune,
            "step_margin": step_margin, "held_out_max": held_out_max, "dtype": str(dtype).removeprefix("torch."),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
        },
        "original_instruction": _line_text(original, line),
        "corrupted_instruction": _line_text(corrupted, line),
        "corrupted_hard_accuracy_held_out": _hard_accuracy(
            deep, corrupted, [(k,) for k in held_out], expected, hard_limit
        ),
        "runs": runs,
    }


def format_training_table(report: dict) -> str:
    """Markdown table of ``fibonacci_training_curves``: one row per (program, depth)."""
    held, line = report["settings"]["held_out_max"], report["settings"]["corruption"]["line"]
    lines = [
        f"| program | depth n | machine steps | loss start | loss end | P(correct) end | updates to P ≥ 0.5 |"
        f" hard acc. k ≤ n | hard acc. k ≤ {held} | line {line} after |",
        "|" + "|".join(" ---: " for _ in range(10)) + "|",
    ]
    for r in report["runs"]:
        reached = "never" if r["updates_to_half"] is None else str(r["updates_to_half"])
        lines.append(
            f"| {r['program']} | {r['depth']} | {r['hard_steps']} | {_fmt(r['loss'][0])} | {_fmt(r['loss'][-1])} |"
            f" {_fmt(r['p_correct'][-1])} | {reached} | {r['hard_accuracy'][-1]:.2f} |"
            f" {r['hard_accuracy_held_out']:.2f} |"
            f" `{r['instruction_after']}` |"
        )
    return "\n".join(lines)


def plot_fibonacci_training(report: dict, path: Union[str, Path]) -> Path:
    """PNG: the loss against the optimization step (log scale), one line per depth; exact (left), softened (right)."""
    from .reports import _pyplot, _save

    plt = _pyplot()
    programs = ("exact", "softened")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    depths = sorted({r["depth"] for r in report["runs"]})
    colors = plt.get_cmap("viridis")
    for ax, name in zip(axes, programs):
        for r in (r for r in report["runs"] if r["program"] == name):
            shade = colors(depths.index(r["depth"]) / max(1, len(depths) - 1))
            loss = [x if x > 0 and math.isfinite(x) else float("nan") for x in r["loss"]]
            ax.plot(range(len(loss)), loss, color=shade, label=f"n = {r['depth']} ({r['hard_steps']} steps)")
        ax.set_yscale("log")
        ax.set_xlabel("Adam update")
        ax.grid(True, which="both", alpha=0.3)
        rest = "one-hot" if name == "exact" else f"softened to {report['settings']['sharpness']:g}, frozen"
        ax.set_title(f"{name}: rest of fib {rest}", fontsize=10)
    axes[0].set_ylabel("loss: mean -log P(fib(k) mod V), k ≤ n")
    axes[1].legend(fontsize=8, title="depth n", title_fontsize=8)
    title = f"repairing `{report['corrupted_instruction']}` by gradient descent through soft execution"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(plt, fig, path)
