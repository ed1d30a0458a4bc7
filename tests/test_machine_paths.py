"""Every path of hard execution (``machine.HARD_PATHS``: the batched torch loop, the plain per-machine loop, the
loop compiled by numba) gives the same cells, memory, step counts and statuses: on every standard-library program,
on programs the compiler's fuzzer makes (which loop, fault and overflow), and at the edges of the machine (the step
budget, the call stack, memory). The compiled loop computes the primitives instead of looking them up: checked on
every pair of values."""
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.test_fuzz import mutated
from modeling_nclama import compile_library, machine_loop, standard_library
from modeling_nclama.machine import HARD_PATHS, PLAIN_LOOP_MAX_BATCH, STATUS_NAMES, Machine
from modeling_nclama.ops import PRIMITIVES, hard_table
from modeling_nclama.toolchain.compiler import CompileError
from test_stdlib import CASES

pytestmark = pytest.mark.usefixtures("one_thread")

numba = pytest.importorskip("numba")  # the `fast` extra; `make test` installs it


def run_every_path(machine: Machine, entry, args, memory, max_steps: int) -> dict:
    return {path: machine.run_hard(entry, args, memory, max_steps=max_steps, path=path) for path in HARD_PATHS}


def assert_same(runs: dict, context) -> None:
    reference = runs["batched"]
    for path, run in runs.items():
        for field in ("cells", "memory", "steps", "status"):
            got, want = getattr(run, field).long(), getattr(reference, field).long()
            assert torch.equal(got, want), (context, path, field)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_path_runs_every_standard_program_alike(std, name):
    r = random.Random(f"paths-{name}")
    batch = [CASES[name](r) for _ in range(24 if name != "long_gcd" else 8)]
    program = std[name]
    args, memory = std.encode(program, batch)
    entry = torch.full((len(batch),), std.machine.index[name])
    runs = run_every_path(std.machine, entry, args, memory, max_steps=1_000_000)
    assert_same(runs, name)
    assert set(runs["compiled"].status.tolist()) == {0}  # all ran to the end: the comparison covers whole runs
    short = run_every_path(std.machine, entry, args, memory, max_steps=int(runs["batched"].steps.min()))
    assert_same(short, (name, "cut short"))  # a budget that stops some machines mid-run


def test_the_paths_agree_at_the_shipped_value_size():
    """V = 1024, the shipped library's: the compiled loop's arithmetic against tables of a million entries each."""
    lib = standard_library(1024)
    r = random.Random(1024)
    calls = [("insertion_sort", [[r.randrange(1024) for _ in range(64)]]), ("long_add", [r.randrange(10**40), -r.randrange(10**40)]),
             ("gcd", [987, 610]), ("fib_tape", [60]), ("long_mul", [r.randrange(10**30), r.randrange(10**30)]),
             ("sort_numbers", [[r.randrange(-10**6, 10**6) for _ in range(40)]])]
    for name, example in calls:
        args, memory = lib.encode(lib[name], [example])
        entry = torch.full((1,), lib.machine.index[name])
        assert_same(run_every_path(lib.machine, entry, args, memory, max_steps=200_000), name)
    assert lib.run("long_add", 10**40 - 1, 1) == 10**40  # the default path answers through Library.run too


@pytest.mark.parametrize("value_size", [7, 256, 1024])
def test_the_compiled_arithmetic_equals_every_table_entry(value_size):
    """``machine_loop.computed`` on every pair (a, b) in [0, V)^2, for every primitive and the address op, equals
    the lookup table the batched path reads (``ops.hard_table``, built from ``ops.apply_int``)."""
    computed = machine_loop.compiled().computed
    V = value_size
    names = list(PRIMITIVES)
    tables = torch.cat([hard_table(names, V), (torch.arange(V)[:, None] + torch.arange(V)[None, :]).clamp(max=V).reshape(1, -1)])
    for op in range(len(names) + 1):
        assert (every_pair(computed, op, V) == tables[op].numpy()).all(), names[op] if op < len(names) else "address"


@numba.njit
def every_pair(computed, op, V):
    fields = np.zeros(machine_loop.WIDTH, np.int64)
    fields[9] = op
    out = np.zeros(V * V, np.int64)
    for a in range(V):
        for b in range(V):
            out[a * V + b] = computed(fields, None, 0, np.int32(a), np.int32(b), V)  # cells are int32
    return out


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@SETTINGS
@given(mutated(), st.integers(0, 2**32))
def test_the_paths_agree_on_fuzzed_programs(source, seed):
    """Programs the compiler's fuzzer makes from mutated sources: whatever they do (halt, loop past the budget,
    overflow the stack, fault on memory), every path does it at the same step with the same cells."""
    try:
        lib = compile_library(source, 64, memory_size=40, stack_depth=4)
    except (CompileError, ValueError):
        return
    r = random.Random(seed)
    for program in lib.programs:
        batch = []
        for _ in range(6):
            batch.append([r.randrange(64) if kind == "int" else [r.randrange(64) for _ in range(r.randrange(5))]
                          for _, kind in program.params])
        try:
            args, memory = lib.encode(program, batch)
        except (TypeError, ValueError):
            continue
        entry = torch.full((len(batch),), lib.machine.index[program.name])
        runs = run_every_path(lib.machine, entry, args, memory, max_steps=300)
        assert_same(runs, (source, program.name))


@pytest.mark.parametrize("name", ["insertion_sort", "long_add", "fib_recursive", "sort_numbers", "gcd"])
def test_the_compiled_trace_is_the_batched_trace(std, name):
    """One machine traced by the compiled loop: the same line, registers and memory at every step."""
    example = CASES[name](random.Random(f"trace-{name}"))
    args, memory = std.encode(std[name], [example])
    entry = torch.full((1,), std.machine.index[name])
    runs = {path: std.machine.run_hard(entry, args, memory, max_steps=100_000, trace=True, path=path)
            for path in ("batched", "compiled")}
    assert_same(runs, name)
    steps = int(runs["batched"].steps[0])
    for field in ("trace_lines", "trace_cells", "trace_memory"):
        want, got = getattr(runs["batched"], field)[:steps].long(), getattr(runs["compiled"], field).long()
        assert torch.equal(got, want), field
    value, trace = std.run(name, *example, trace=True)  # Library.run's trace comes from the compiled loop now
    assert len(trace.steps) == steps and value is not None


def test_faults_stop_every_path_at_the_same_step():
    lib = compile_library("def f(n):\n    return f(n + 1)\n\ndef g(xs, i):\n    return xs[i]\n\n"
                          "def h(n):\n    while n == n:\n        n = n + 1\n    return n\n", 64, memory_size=16, stack_depth=5)
    for name, example, status in (("f", [0], "stack_overflow"), ("g", [[1, 2], 30], "memory_fault"), ("h", [1], "max_steps")):
        args, memory = lib.encode(lib[name], [example])
        entry = torch.full((1,), lib.machine.index[name])
        runs = run_every_path(lib.machine, entry, args, memory, max_steps=500)
        assert_same(runs, name)
        assert STATUS_NAMES[runs["plain"].status.item()] == status


def test_the_default_path_follows_the_batch_and_what_is_installed(monkeypatch):
    assert Machine.hard_path(1, trace=True) == "compiled"  # it traces one machine
    assert Machine.hard_path(2, trace=True) == "batched"
    assert Machine.hard_path(1) == Machine.hard_path(4096) == "compiled"
    monkeypatch.setattr(machine_loop, "_COMPILED", False)  # as where numba is missing (a Hub user's environment)
    assert machine_loop.compiled() is None
    assert Machine.hard_path(PLAIN_LOOP_MAX_BATCH) == "plain"
    assert Machine.hard_path(PLAIN_LOOP_MAX_BATCH + 1) == "batched"
    lib = standard_library(256)
    assert lib.run("insertion_sort", [3, 1, 2]) == [1, 2, 3]  # answered by the plain loop
    assert Machine.hard_path(1, trace=True) == "batched"
    with pytest.raises(ValueError, match="the plain path records no trace"):
        lib.machine.run_hard(torch.zeros(1, dtype=torch.long), torch.zeros(1, lib.machine.num_args, dtype=torch.long),
                             torch.zeros(1, lib.machine.memory_size, dtype=torch.long), max_steps=5, trace=True, path="plain")


def test_the_machine_bench_checks_every_path_against_python():
    from modeling_nclama.toolchain.bench import bench_machine, format_machine_tables

    report = bench_machine(batch=8, value_size=256, examples=2, fib_depths=(2,))
    assert [r["workload"] for r in report["single"]] == [r["workload"] for r in report["batch"]]
    assert len(report["single"]) == 5 and all(r["steps"] > 0 and r["compiled_us"] > 0 for r in report["single"])
    assert {r["default_path"] for r in report["batch"]} == {"compiled"}
    table = format_machine_tables(report)
    assert "| insertion_sort, 64 items |" in table and "compiled / Python" in table


def test_each_compiled_variant_is_cached_as_itself(tmp_path):
    """numba's cache names files after a function: the traced and untraced variants of the loop must not load each
    other's code in a later process (a trace would then record nothing)."""
    import os
    import subprocess
    import sys

    script = ("from modeling_nclama import standard_library\n"
              "lib = standard_library(64)\n"
              "value, trace = lib.run('insertion_sort', [3, 1, 2], trace=True)\n"
              "print(value, trace.steps[0].program, trace.steps[-1].instruction, len(trace.steps))\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    outs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300).stdout
            for _ in range(2)]  # the first compiles and writes the cache, the second loads it
    assert outs[0] == outs[1] and outs[0].startswith("[1, 2, 3] insertion_sort ret")
    assert any(tmp_path.rglob("*run_machine_traced*")) and any(tmp_path.rglob("*run_machine_untraced*"))
