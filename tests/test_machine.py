"""The differentiable computer end to end: soft execution equals hard execution exactly, adaptive recurrence,
errors, traces, and gradients (to input distributions and to the programs' own weights)."""
import math
import re

import pytest
import torch
import torch.nn.functional as F

from modeling_nclama import Library, MachineError, Trace, compile_library, standard_library
from modeling_nclama.machine import STATUS_NAMES

pytestmark = pytest.mark.usefixtures("one_thread")

V = 256

# A few small one-hot inputs per standard-library program (soft mode at V = 256 costs ~1 ms a step).
CASES = {
    "gcd": [(12, 18), (7, 0), (0, 5)],
    "factorial": [(5,), (0,), (7,)],
    "power": [(3, 5), (2, 9), (0, 0)],
    "fib": [(0,), (5,), (3,)],
    "isqrt": [(0,), (17,), (255,)],
    "insertion_sort": [([],), ([3, 1, 2],), ([5, 5, 1, 0],)],
    "reverse": [([],), ([1, 2, 3],), ([9],)],
    "sum_list": [([],), ([1, 2, 3],), ([200, 100],)],
    "max_list": [([],), ([4, 9, 2],), ([1],)],
    "count": [([1, 2, 1], 1), ([], 3), ([4], 4)],
    "index_of": [([1, 2, 3], 3), ([], 0), ([5, 6], 7)],
    "fib_recursive": [(0,), (5,), (3,)],
    "is_zero": [([1, 0, 0],), ([0, 3],), ([0],)],
    "zero_unsigned": [([1, 0],), ([1, 4],), ([0, 0, 0],)],
    "abs_cmp": [([0, 1, 2], [1, 2, 1]), ([0, 5], [1, 5, 0]), ([0], [0])],
    "abs_add": [([0, 9, 9], [1, 1]), ([0, 1, 2], [0, 3, 4, 5]), ([0, 0], [1, 0])],
    "abs_sub": [([0, 0, 1], [1, 1]), ([0, 3, 2, 1], [0, 1, 1]), ([0, 5], [0, 5])],
    "signed_add": [([0, 9, 9], 1, [1, 1], 0), ([0, 5], 0, [0, 5], 1), ([0, 1], 0, [0, 2], 0)],
    "long_add": [(99, 1), (-5, 5), ([1, 2], [0, 3, 4, 5])],
    "long_sub": [(10, 1), (5, 5), (-321, 11)],
    "long_mul": [(99, 99), (1, 0), (-12, 3)],
    "long_cmp": [(21, 12), (0, 0), ([1, 0], 0)],
    "long_gcd": [(12, 18), (0, 7), (-9, 6)],
    "halve": [([0, 3, 1],), ([0, 0],), ([0, 1, 1, 1],)],
    "sub_into": [([0, 3, 1], [0, 4]), ([0, 5], [0, 5]), ([0, 0, 0, 1], [0, 1])],
    "record_cmp": [([1, 0, 5, 1, 3], 1, 3), ([1, 0, 5, 0, 5], 1, 3), ([2, 1, 0, 1, 1, 0, 1], 1, 4)],
    "sort_numbers": [([5, -3, 1],), ([],), ([-12, 7],)],
    "permute_records": [([1, 0, 5, 1, 3, 0, 0], [5, 1, 3], 2), ([1], [], 2), ([1, 0, 1, 0, 2], [3, 1], 2)],
    "extreme_number": [([1, 0, 5, 1, 3], 2), ([1, 0, 5, 1, 3], 0), ([2, 1, 0, 1], 2)],
    "max_number": [([5, -3],), ([7],), ([-1, -2, 0],)],
    "min_number": [([5, -3],), ([7],), ([-1, -2, 0],)],
    "sum_numbers": [([5, -3, 12],), ([],), ([-99, 9],)],
    "add_record": [([0, 9, 0, 0], [1, 0, 5], 1), ([0, 0, 0], [1, 1, 1], 1), ([0, 1, 9, 9, 0], [2, 1, 9, 9], 1)],
    "mul_small": [([0, 9, 9], 7), ([], 3), ([0, 1, 2], 0)],
    "factorial_tape": [(0,), (3,), (5,)],
    "power_tape": [(2, 3), (3, 0), (10, 2)],
    "add_into": [([0, 9, 9], [0, 1, 0]), ([], []), ([0, 5], [0, 4])],
    "fib_tape": [(0,), (3,), (7,)],
    "sum_list_tape": [([],), ([12, 9, 250],), ([5],)],
}


def entry_for(lib, name, batch_size=1):
    entry = torch.zeros(batch_size, len(lib))
    entry[:, lib.machine.index[name]] = 1.0
    return entry


def run_both(lib, name, batch, **soft_kwargs):
    """Hard run (raw HardRun) and soft run of the same batch."""
    program = lib[name]
    args, memory = lib.encode(program, batch)
    index = torch.full((len(batch),), lib.machine.index[name], dtype=torch.long)
    hard = lib.machine.run_hard(index, args, memory, max_steps=lib.max_steps)
    x, mem = lib.encode_soft(program, batch)
    soft = lib.run_soft(entry_for(lib, name, len(batch)), x, mem, **soft_kwargs)
    return hard, soft


# ---------------------------------------------------------------------- soft == hard, exactly
def test_cases_cover_every_program(std):
    assert set(CASES) == set(std.names)


@pytest.mark.parametrize("name", sorted(CASES))
def test_soft_execution_is_exactly_one_hot_at_the_hard_state(std, name):
    batch = CASES[name]
    hard, soft = run_both(std, name, batch)
    assert [STATUS_NAMES[s] for s in hard.status.tolist()] == ["ok"] * len(batch)
    # Every register and every memory cell: one-hot at the hard value, to 1e-6.
    assert (soft.cells - F.one_hot(hard.cells.long(), V).float()).abs().max().item() < 1e-6
    assert (soft.memory - F.one_hot(hard.memory.long(), V).float()).abs().max().item() < 1e-6
    assert torch.allclose(soft.halted, torch.ones(len(batch)), atol=1e-6)
    assert soft.fault.abs().max().item() < 1e-6
    assert soft.steps.tolist() == [float(s) for s in hard.steps.tolist()]  # expected steps == hard steps
    # The decoded result distributions are one-hot at the hard answers (the result's cells, for a list).
    program = std[name]
    R = std.machine.num_registers
    hard_values = []
    for b in range(len(batch)):
        value = hard.cells[b, R].item()
        if program.returns != "int":
            value = hard.memory[b, value + 1 : value + 1 + hard.memory[b, value].item()].tolist()
        hard_values.append(value)
    for got, value in zip(std.decode_soft(program, soft), hard_values):
        target = F.one_hot(torch.tensor(value if isinstance(value, list) else [value], dtype=torch.long), V).float()
        if program.returns == "int":
            target = target[0]
        assert got.shape == target.shape
        assert got.numel() == 0 or (got - target).abs().max().item() < 1e-6


@pytest.mark.parametrize("name,args", [("gcd", (12, 18)), ("fib", (3,)), ("insertion_sort", ([3, 1, 2],)),
                                       ("factorial_tape", (3,))])
def test_soft_and_hard_traces_agree_row_by_row(std, name, args):
    hard_value, hard_trace = std.run(name, *args, trace=True)
    soft_value, soft_trace = std.run(name, *args, mode="soft", trace=True)
    assert soft_value == hard_value
    assert (hard_trace.mode, soft_trace.mode) == ("hard", "soft")
    assert len(soft_trace.steps) == len(hard_trace.steps) == std.run_batch(name, [args]).steps[0]
    for h, s in zip(hard_trace.steps, soft_trace.steps):
        assert (s.step, s.program, s.line, s.instruction) == (h.step, h.program, h.line, h.instruction)
        assert h.probability == 1.0 and s.probability == pytest.approx(1.0, abs=1e-6)
        assert {k: v for k, (v, _) in s.registers.items()} == h.registers
        assert all(p == pytest.approx(1.0, abs=1e-6) for _, p in s.registers.values())
        assert s.memory == h.memory


def test_soft_batch_mixing_programs_by_entry_distribution(std):
    """``entry`` is a distribution over programs: a one-hot row per example runs a different program each."""
    prog = std["gcd"]
    x, mem = std.encode_soft(prog, [(12, 18), (12, 18)])
    entry = torch.zeros(2, len(std))
    entry[0, std.machine.index["gcd"]] = 1.0
    entry[1, std.machine.index["power"]] = 1.0  # power(12, 18) mod 256 on the same arguments
    run = std.run_soft(entry, x, mem)
    assert run.cells[0, std.machine.num_registers].argmax().item() == 6
    assert run.cells[1, std.machine.num_registers].argmax().item() == pow(12, 18, V)
    assert run.steps.tolist() == [float(std.run_batch("gcd", [(12, 18)]).steps[0]),
                                  float(std.run_batch("power", [(12, 18)]).steps[0])]


def test_soft_superposition_of_inputs_gives_the_mixture_of_answers(user_lib):
    """On a 50/50 input, add's result is the 50/50 mixture of the two hard answers."""
    a = 0.5 * F.one_hot(torch.tensor(3), V).float() + 0.5 * F.one_hot(torch.tensor(10), V).float()
    x, mem = user_lib.encode_soft(user_lib["add"], [(a, 4)])
    run = user_lib.run_soft(entry_for(user_lib, "add"), x, mem)
    result = user_lib.decode_soft(user_lib["add"], run)[0]
    assert result[7].item() == pytest.approx(0.5, abs=1e-6) and result[14].item() == pytest.approx(0.5, abs=1e-6)
    assert result.sum().item() == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------------- adaptive recurrence
def test_steps_differ_per_example_and_equal_the_trace_length(std):
    batch = [(12, 18), (7, 0), (0, 5), (233, 144), (255, 1)]
    result = std.run_batch("gcd", batch)
    assert result.values == [math.gcd(a, b) for a, b in batch]
    assert len(set(result.steps)) >= 4  # adaptive: each machine reports its own steps
    for args, steps in zip(batch, result.steps):
        _, trace = std.run("gcd", *args, trace=True)
        assert len(trace.steps) == steps
        assert trace.steps[-1].instruction == "ret"  # the last step is the one that halted


def test_batch_stops_when_all_machines_halted(std):
    batch = [(12, 18), (7, 0), (233, 144)]
    program = std["gcd"]
    args, memory = std.encode(program, batch)
    entry = torch.full((3,), std.machine.index["gcd"], dtype=torch.long)
    run = std.machine.run_hard(entry, args, memory, max_steps=10_000, trace=True)
    steps = run.steps.tolist()
    assert run.trace_lines.shape[0] == max(steps) < 10_000  # the batch stopped with its slowest machine
    for b, s in enumerate(steps):  # a machine that halted rests on the halt line for the rest of the batch
        assert (run.trace_lines[s:, b] == std.machine.halt_line).all()
        assert (run.trace_lines[:s, b] != std.machine.halt_line).all()


def test_soft_steps_are_per_example_and_soft_stops_when_all_halted(std):
    batch = [(12, 18), (7, 0)]
    hard, soft = run_both(std, "gcd", batch, trace=True)
    assert soft.steps.tolist() == [float(s) for s in hard.steps.tolist()]
    assert soft.trace_pc.shape[0] == max(hard.steps.tolist())


# ---------------------------------------------------------------------- errors
def test_endless_loop_hits_max_steps(faulty_lib):
    with pytest.raises(MachineError, match="max_steps"):
        faulty_lib.run("spin", 3, max_steps=100)
    result = faulty_lib.run_batch("spin", [(3,), (255,)], max_steps=100)
    assert result.status == ["max_steps", "ok"]
    assert result.values == [None, 255]  # never a silent wrong answer
    assert result.steps[0] == 100


def test_endless_loop_in_soft_mode_is_an_error(faulty_lib):
    with pytest.raises(MachineError, match="did not halt within 50 steps"):
        faulty_lib.run("spin", 3, mode="soft", max_steps=50)


def test_max_steps_is_exact(std):
    steps = std.run_batch("gcd", [(12, 18)]).steps[0]
    assert std.run("gcd", 12, 18, max_steps=steps) == 6
    with pytest.raises(MachineError, match="max_steps"):
        std.run("gcd", 12, 18, max_steps=steps - 1)


def test_bug_max_steps_zero_or_negative_is_refused(std):
    """``max_steps or self.max_steps`` in Library.run/run_batch/run_soft treats 0 as 'unset' (runs 200000 steps)
    and accepts negative values."""
    with pytest.raises((ValueError, MachineError)):
        std.run("gcd", 12, 18, max_steps=0)
    with pytest.raises(ValueError, match="max_steps"):
        std.run("gcd", 12, 18, max_steps=-5)


def test_unbounded_recursion_overflows_the_stack(faulty_lib, std):
    assert faulty_lib.machine.stack_depth >= 32 and std.machine.stack_depth >= 32
    with pytest.raises(MachineError, match=r"overflowed the call stack \(depth 32\)"):
        faulty_lib.run("forever", 3)
    result = faulty_lib.run_batch("forever", [(3,), (0,)])
    assert result.status == ["stack_overflow", "stack_overflow"] and result.values == [None, None]
    # A recursion 40 deep in the standard library, next to one that fits: per-example status.
    result = std.run_batch("fib_recursive", [(40,), (10,)])
    assert result.status == ["stack_overflow", "ok"] and result.values == [None, 55]


def test_stack_depth_32_holds_32_nested_calls():
    lib = compile_library(
        "def depth(n):\n    if n == 0:\n        return 0\n    return depth(n - 1) + 1\n", value_size=V
    )
    assert lib.machine.stack_depth == 32
    assert lib.run("depth", 32) == 32
    with pytest.raises(MachineError, match="stack"):
        lib.run("depth", 33)
    shallow = compile_library(
        "def depth(n):\n    if n == 0:\n        return 0\n    return depth(n - 1) + 1\n", value_size=V, stack_depth=4
    )
    assert shallow.run("depth", 4) == 4
    assert shallow.run_batch("depth", [(5,), (3,)]).status == ["stack_overflow", "ok"]


def test_bug_soft_unbounded_recursion_reports_stack_overflow(faulty_lib):
    """Hard mode halts a machine at a stack overflow; soft mode keeps running it (machine.run_soft only adds the
    overflowing mass to ``fault``) and Library.run checks ``halted`` before ``fault``, so the error says
    'did not halt' (after max_steps soft steps: 200000 by default) instead of naming the stack overflow."""
    with pytest.raises(MachineError, match="stack|overflow"):
        faulty_lib.run("forever", 3, mode="soft", max_steps=300)


def test_inputs_too_large_for_memory_are_refused(std):
    assert std.machine.memory_size == V - 1  # the heap pointer must be able to point one past the last cell
    assert std.run("insertion_sort", list(range(253)))[:3] == [0, 1, 2]  # heap pointer + length + 253 items: fits
    with pytest.raises(ValueError, match="memory"):
        std.run("insertion_sort", list(range(254)))
    small = standard_library(V, memory_size=32)
    with pytest.raises(ValueError, match="memory_size is 32"):
        small.run("reverse", list(range(40)))


def test_writing_beyond_memory_is_a_memory_fault():
    lib = compile_library("def spill(n):\n    xs = [1] * n\n    return xs\n", value_size=V, memory_size=64)
    with pytest.raises(MachineError, match="memory"):
        lib.run("spill", 70)
    result = lib.run_batch("spill", [(70,), (3,)])
    assert result.status == ["memory_fault", "ok"]
    assert result.values == [None, [1, 1, 1]]
    small = standard_library(V, memory_size=32)
    result = small.run_batch("reverse", [(list(range(20)),), ([1, 2],)])  # the output list does not fit
    assert result.status == ["memory_fault", "ok"] and result.values == [None, [2, 1]]


def test_bug_heap_overflow_is_not_a_silent_wrong_answer(faulty_lib):
    """With memory_size == value_size (the default) addresses wrap modulo V: machine.run_hard checks memory only
    when ``M < V`` and computes addresses with the wrapping ``add``; the compiler's bump allocation
    (compiler/lower.py ``allocate``) wraps the heap pointer too. So two lists of 150 items overwrite each other and
    the heap pointer, and the machine returns a wrong list with status 'ok'."""
    expected = [1] * 150  # the native Python answer
    result = faulty_lib.run_batch("two_lists", [(150,), (3,)])
    assert result.values[1] == [1, 1, 1]
    assert result.status[0] == "memory_fault" or result.values[0] == expected, result.values[0][:10]


def test_bug_run_batch_output_overflow_is_a_per_example_status(std):
    """reverse of 200 items needs 402 cells: Library.decode raises MachineError('invalid list pointer') for the
    whole batch, so the other examples' answers are lost; it should report 'memory_fault' for that example."""
    result = std.run_batch("reverse", [(list(range(200)),), ([1, 2],)])
    assert result.status == ["memory_fault", "ok"]
    assert result.values == [None, [2, 1]]


def test_bug_soft_fault_is_a_probability():
    """machine.run_soft accumulates ``fault += p * mass beyond memory`` at every step and the machine keeps running
    after a fault, so ``fault`` counts faulting steps: 8.0 for spill(70) at memory_size 64 (Library.run then
    reports 'probability 8.00')."""
    lib = compile_library("def spill(n):\n    xs = [1] * n\n    return xs\n", value_size=V, memory_size=64)
    x, mem = lib.encode_soft(lib["spill"], [(70,)])
    run = lib.run_soft(entry_for(lib, "spill"), x, mem, max_steps=400)
    assert 0.99 <= run.fault[0].item() <= 1.0 + 1e-6


def test_arguments_are_checked_and_named(std):
    with pytest.raises(ValueError, match=r"argument a of gcd: 256 is outside \[0, 256\)"):
        std.run("gcd", 256, 3)
    with pytest.raises(ValueError, match="argument b of gcd: -1"):
        std.run("gcd", 3, -1)
    with pytest.raises(ValueError, match="argument xs of reverse: 300"):
        std.run("reverse", [1, 300])
    with pytest.raises(TypeError, match=r"gcd takes 2 arguments \(a: int, b: int\), got 1"):
        std.run("gcd", 1)
    with pytest.raises(TypeError, match="takes 2 arguments"):
        std.run_batch("gcd", [(1, 2), (1, 2, 3)])
    with pytest.raises(TypeError, match="argument a of gcd must be an int"):
        std.run("gcd", [1], 2)
    with pytest.raises(TypeError, match="argument a of gcd must be an int"):
        std.run("gcd", 3.0, 2)
    with pytest.raises(TypeError, match="argument xs of reverse must be a list"):
        std.run("reverse", 3)
    with pytest.raises(TypeError, match="argument v of count must be an int"):
        std.run("count", [1], [1])
    with pytest.raises(ValueError, match="mode"):
        std.run("gcd", 1, 2, mode="fuzzy")
    with pytest.raises(KeyError, match="no program 'nope'"):
        std.run("nope", 1)
    with pytest.raises(ValueError, match="argument a of gcd"):  # soft mode checks the same way
        std.run("gcd", 256, 3, mode="soft")


def test_bug_list_items_must_be_ints(std):
    """Library._check_value only range-checks list items: reverse([1.5, 2]) silently runs on 1 (torch.tensor
    truncates the float), and reverse(['a']) fails with a bare '<=' TypeError that names no argument."""
    with pytest.raises(TypeError, match="argument xs of reverse"):
        std.run("reverse", [1.5, 2])
    with pytest.raises(TypeError, match="argument xs of reverse"):
        std.run("reverse", ["a"])


# ---------------------------------------------------------------------- traces
def test_hard_trace_format_has_one_row_per_step(std):
    value, trace = std.run("gcd", 12, 18, trace=True)
    assert value == 6 and isinstance(trace, Trace) and trace.mode == "hard"
    text = trace.format().splitlines()
    assert "line" in text[0] and "instruction" in text[0] and "registers" in text[0]
    rows = text[2:]
    assert len(rows) == len(trace.steps) == std.run_batch("gcd", [(12, 18)]).steps[0] == 14
    first = rows[0].split()
    assert first[:3] == ["0", "gcd", "0"]
    assert "mod x2, x0, x1" in rows[1] and "x0=12" in rows[1] and "x1=18" in rows[1] and "x2=12" in rows[1]
    assert rows[-1].split()[3] == "ret" and "x0=6" in rows[-1]
    assert [int(r.split()[0]) for r in rows] == list(range(14))
    # max_rows truncates with a note
    short = trace.format(max_rows=3).splitlines()
    assert len(short) == 2 + 3 + 1 and short[-1] == "... 11 more steps"
    # every step carries the registers by name and the memory up to the heap pointer
    assert set(trace.steps[0].registers) == {f"r{i}" for i in range(std.machine.num_registers)} | {
        f"x{i}" for i in range(std.machine.num_args)}
    assert trace.steps[0].memory == [1]


def test_hard_trace_of_a_list_program_shows_memory(std):
    value, trace = std.run("reverse", [4, 5], trace=True)
    assert value == [5, 4]
    assert trace.steps[0].memory[:4] == [4, 2, 4, 5]  # heap pointer, then the input list
    assert trace.steps[-1].memory == [7, 2, 4, 5, 2, 5, 4]  # ... and the output list


def test_soft_trace_carries_probabilities(std):
    value, trace = std.run("gcd", 12, 18, mode="soft", trace=True)
    assert value == 6 and trace.mode == "soft"
    row = trace.format().splitlines()[2]
    assert re.search(r"gcd \(1\.00\)", row) and "x0=12(1.00)" in row
    assert all(isinstance(p, float) for _, p in trace.steps[0].registers.values())


def test_soft_trace_of_a_softened_program_is_uncertain(std):
    softened = std.with_programs([std["gcd"].soften(4.0)])
    x, mem = softened.encode_soft(softened["gcd"], [(12, 18)])
    run = softened.run_soft(entry_for(softened, "gcd"), x, mem, max_steps=6, trace=True)
    trace = softened._soft_trace(run, 0)
    assert trace.steps and trace.steps[0].probability == pytest.approx(1.0)  # the pc starts on the entry line
    assert 0.0 < trace.steps[-1].probability < 0.99  # mass spreads over lines
    assert any(p < 0.99 for _, p in trace.steps[-1].registers.values())
    assert re.search(r"\(0\.\d\d\)", trace.format())


# ---------------------------------------------------------------------- differentiability
def _log_prob_of(lib, name, args, answer, max_steps=None):
    program = lib[name]
    x, mem = lib.encode_soft(program, [args])
    run = lib.run_soft(entry_for(lib, name), x, mem, max_steps=max_steps)
    dist = lib.decode_soft(program, run)[0]
    return torch.log(dist[answer].clamp_min(1e-30))


def test_gradients_reach_inputs_and_program_weights_of_a_softened_program(std):
    program = std["gcd"].soften(4.0)
    for w in program.weights.values():
        w.requires_grad_(True)
    lib = std.with_programs([program])
    assert lib["gcd"] is program
    a = F.one_hot(torch.tensor(12), V).float().requires_grad_(True)
    b = F.one_hot(torch.tensor(18), V).float().requires_grad_(True)
    log_p = _log_prob_of(lib, "gcd", (a, b), 6, max_steps=16)
    assert torch.isfinite(log_p) and log_p.item() < 0.0  # softened: the answer is likely but not certain
    log_p.backward()
    for g in (a.grad, b.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    grads = {k: w.grad for k, w in program.weights.items() if w.numel()}
    for field in ("op", "a", "b", "branch", "target"):
        assert grads[field] is not None, field
        assert torch.isfinite(grads[field]).all(), field
        assert grads[field].abs().sum() > 0, field


def test_gradient_descent_on_program_weights_raises_the_answers_probability(user_lib):
    """One step against the gradient of a softened program makes the right answer more likely."""
    program = user_lib["add"].soften(4.0)
    for w in program.weights.values():
        w.requires_grad_(True)
    lib = user_lib.with_programs([program])
    before = _log_prob_of(lib, "add", (3, 4), 7, max_steps=8)
    before.backward()
    with torch.no_grad():
        for w in program.weights.values():
            if w.grad is not None:
                w += 0.5 * w.grad
    after = _log_prob_of(lib, "add", (3, 4), 7, max_steps=8)
    assert after.item() > before.item()


@pytest.mark.parametrize("name,args,answer", [("add", (3, 4), 7), ("gcd", (12, 18), 6)])
def test_exact_program_still_passes_gradients_to_inputs(std, user_lib, name, args, answer):
    lib = user_lib if name in user_lib else std
    inputs = [F.one_hot(torch.tensor(v), V).float().requires_grad_(True) for v in args]
    log_p = _log_prob_of(lib, name, tuple(inputs), answer)
    assert log_p.item() == pytest.approx(0.0, abs=1e-6)  # exact program, one-hot inputs: certain
    log_p.backward()
    for x, v in zip(inputs, args):
        assert torch.isfinite(x.grad).all()
        assert x.grad.abs().sum() > 0
        assert x.grad[v] != 0  # the log-prob depends on the probability of the actual input value


def test_gradient_through_a_list_input(std):
    """A list may be given as its items' distributions [n, V]: the gradient of the sorted output reaches them."""
    items_in = F.one_hot(torch.tensor([3, 1, 2]), V).float().requires_grad_(True)
    x, mem = std.encode_soft(std["insertion_sort"], [(items_in,)])
    run = std.run_soft(entry_for(std, "insertion_sort"), x, mem)
    items = std.decode_soft(std["insertion_sort"], run)[0]
    assert items.argmax(-1).tolist() == [1, 2, 3]
    assert (items - F.one_hot(torch.tensor([1, 2, 3]), V).float()).abs().max().item() < 1e-6
    torch.log(items[2, 3]).backward()
    assert torch.isfinite(items_in.grad).all() and items_in.grad[0].abs().sum() > 0


def test_bug_encode_soft_accepts_distributions_as_list_items(std):
    """Library.encode_soft's docstring says list items may be distributions (tensors of shape [V]), but
    ``_hard_view`` only converts a tensor that is the whole argument: a Python list holding a tensor item reaches
    ``_check_value`` and fails with 'Boolean value of Tensor with more than one value is ambiguous'."""
    item = F.one_hot(torch.tensor(3), V).float().requires_grad_(True)
    x, mem = std.encode_soft(std["insertion_sort"], [([item, 1, 2],)])
    run = std.run_soft(entry_for(std, "insertion_sort"), x, mem)
    items = std.decode_soft(std["insertion_sort"], run)[0]
    assert items.argmax(-1).tolist() == [1, 2, 3]
    torch.log(items[2, 3]).backward()
    assert torch.isfinite(item.grad).all() and item.grad.abs().sum() > 0


def test_halt_instruction_in_both_modes(std):
    """Compiled code ends with ``ret``; a hand-written program may ``halt`` (x0 is still the result)."""
    from modeling_nclama.toolchain.assembly import parse_assembly

    text = "def bump(a: int) -> int\n.consts 3\n   0  add x0, x0, #3\n   1  halt\n   2  inc x0, x0\n   3  ret"
    m = std.machine
    program = parse_assembly(text, num_registers=m.num_registers, num_args=m.num_args, value_size=V)
    assert program.assembly() == text
    lib = Library([program])
    result = lib.run_batch("bump", [(4,), (254,)])
    assert result.values == [7, 1] and result.steps == [2, 2] and result.status == ["ok", "ok"]
    assert lib.run("bump", 4, mode="soft") == 7
    hard, soft = run_both(lib, "bump", [(4,), (254,)])
    assert soft.steps.tolist() == [2.0, 2.0]
    assert (soft.cells - F.one_hot(hard.cells.long(), V).float()).abs().max().item() < 1e-6
