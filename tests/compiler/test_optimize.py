"""Pass 2b (optimize): local CSE / value numbering, copy propagation, folding, dead code; same results, fewer steps."""
import random

import pytest

from modeling_nclama.toolchain import stdlib
from modeling_nclama.toolchain.compiler import compile_allocated, compile_source, compile_to_ir, stdlib_source

from .reference import run
from .test_stdlib import CASES

V = 256


def ir(src, name=None):
    fns = compile_to_ir(src, value_size=V)
    return fns[0] if name is None else next(f for f in fns if f.name == name)


def ops(fn, kind):
    return [str(o) for o in fn.ops() if o.op == kind]


def both(src):
    return compile_source(src, value_size=V, optimize=False), compile_source(src, value_size=V)


# -- shape of the optimized IR ----------------------------------------------------------------------------------
def test_duplicate_loads_and_addresses_are_computed_once():
    fn = ir("def f(xs, i):\n    return xs[i] + xs[i] * xs[i]")
    assert len(ops(fn, "load")) == 1 and len(ops(fn, "add")) == 2  # the address and the final sum


def test_a_load_after_a_store_is_kept():
    # xs[j] may be xs[i]: the second load of xs[i] must read memory again
    fn = ir("def f(xs, i, j):\n    a = xs[i]\n    xs[j] = 5\n    return a + xs[i]")
    assert len(ops(fn, "load")) == 2
    unopt, opt = both("def f(xs, i, j):\n    a = xs[i]\n    xs[j] = 5\n    return a + xs[i]")
    for args in ([[1, 2, 3], 0, 0], [[1, 2, 3], 0, 1]):
        assert run(opt, "f", args).value == run(unopt, "f", args).value


def test_a_store_forwards_its_value_to_a_load_of_the_same_address():
    fn = ir("def f(xs, i, v):\n    xs[i] = v\n    return xs[i] + 1")
    assert ops(fn, "load") == [] and any(o.op == "inc" and str(o.a) == "%v.2" for o in fn.ops())


def test_a_call_invalidates_loads():
    src = "def f(xs, i):\n    a = xs[i]\n    g(xs)\n    return a + xs[i]\n\ndef g(ys):\n    ys[1] = 9\n    return 0"
    assert len(ops(ir(src), "load")) == 2
    unopt, opt = both(src)
    assert run(opt, "f", [[1, 2], 1]).value == run(unopt, "f", [[1, 2], 1]).value == 2 + 9


def test_nothing_is_remembered_across_a_label():
    src = "def f(xs, i, c):\n    a = xs[i]\n    if c:\n        xs[i] = 7\n    return a + xs[i]"
    assert len(ops(ir(src), "load")) == 2
    unopt, opt = both(src)
    assert run(opt, "f", [[1, 2], 0, 1]).value == run(unopt, "f", [[1, 2], 0, 1]).value == 1 + 7


def test_redefinition_forgets_expressions():
    src = "def f(a, b):\n    x = a + b\n    a = a * 2\n    y = a + b\n    return x * y"
    fn = ir(src)
    assert len(ops(fn, "add")) == 2
    unopt, opt = both(src)
    assert run(opt, "f", [3, 4]).value == run(unopt, "f", [3, 4]).value == 70


def test_copy_propagation_and_constant_folding():
    fn = ir("def f(a):\n    b = a\n    k = 3\n    m = k + 1\n    c = b + 0\n    return c * m + k")
    assert [str(o) for o in fn.ops()] == [
        "mov %a.0, x0", "mul %t.7, %a.0, #4", "add %t.8, %t.7, #3", "mov x0, %t.8", "ret"
    ]


def test_address_of_offset_zero_folds_into_the_load():
    fn = ir("def f(xs, j):\n    return xs[j - 1]")
    assert ops(fn, "load") == ["load %t.3, [%xs.0 + %j.1]"] and ops(fn, "add") == []


def test_insertion_sort_inner_loop_is_six_lines():
    (fn,) = [f for f in compile_allocated(stdlib_source(), value_size=V) if f.name == "insertion_sort"]
    back = [i for i, o in enumerate(fn.ops) if o.branch == "always" and o.target < i]  # inner loop closes first
    inner = min(back, key=lambda i: i - fn.ops[i].target)
    assert inner - fn.ops[inner].target + 1 == 6
    assert sum(o.op == "load" for o in fn.ops[fn.ops[inner].target : inner + 1]) == 1


def test_ir_has_no_dead_ops_left():
    fn = ir(stdlib_source(), "insertion_sort")
    written = {o.dst for o in fn.ops() if o.dst is not None}
    read = {s for o in fn.ops() for s in o.sources()}
    assert {r for r in written if r not in read and str(r)[0] == "%"} == set()


# -- semantics: stdlib, and random programs with aliasing --------------------------------------------------------
@pytest.fixture(scope="module")
def stdlib_pair():
    return compile_source(stdlib_source(), value_size=V, optimize=False), compile_source(stdlib_source(), value_size=V)


@pytest.mark.parametrize("name", sorted(CASES))
def test_stdlib_equals_native_and_never_takes_more_steps(stdlib_pair, name):
    unopt, opt = stdlib_pair
    r = random.Random("opt-" + name)
    native = getattr(stdlib, name)
    for _ in range(60 if name not in ("fib_tape", "factorial_tape", "power_tape", "long_mul") else 8):
        args = CASES[name](r)
        expected = native(*[list(a) if isinstance(a, list) else a for a in args])
        before, after = run(unopt, name, args), run(opt, name, args)
        assert after.value == (expected if isinstance(expected, list) else expected % V), (name, args)
        assert after.memory == before.memory, (name, args)
        assert after.steps <= before.steps, (name, args)


def test_executed_steps_drop():
    unopt, opt = both(stdlib_source())
    r = random.Random(0)
    for n, at_most in ((16, 0.75), (64, 0.7)):
        xs = [r.randrange(V) for _ in range(n)]
        before, after = run(unopt, "insertion_sort", [xs]), run(opt, "insertion_sort", [xs])
        assert after.value == sorted(xs)
        assert after.steps <= at_most * before.steps, (n, before.steps, after.steps)
    a, b = [r.randrange(10) for _ in range(40)], [r.randrange(10) for _ in range(40)]
    # long_add's loop has no local redundancy (its len(a) / len(b) loads are loop-invariant, not repeated in a block)
    assert run(opt, "long_add", [a, b]).steps <= run(unopt, "long_add", [a, b]).steps
    xs = [r.randrange(V) for _ in range(40)]
    assert run(opt, "reverse", [xs]).steps < run(unopt, "reverse", [xs]).steps  # out[n - i - 1]: address folded
    a, b = [r.randrange(10) for _ in range(20)], [r.randrange(10) for _ in range(20)]
    assert run(opt, "long_mul", [a, b]).steps < 0.92 * run(unopt, "long_mul", [a, b]).steps  # out[i + j] once


HELPER = "def g(zs, k):\n    zs[k] = zs[k] + 1\n    return zs[0]\n"


def random_statement(r, depth=0):
    v = lambda: r.choice("abc")  # noqa: E731
    lst = lambda: r.choice(["xs", "ys"])  # noqa: E731
    idx = lambda: r.choice(["i", "j", "2", "i - 1", "j + 1", "i + j - 1"])  # noqa: E731  (i, j in 1..3, length 6)
    kind = r.randrange(9 if depth == 0 else 7)
    if kind == 0:
        return f"{v()} = {lst()}[{idx()}] + {v()}"
    if kind == 1:
        return f"{lst()}[{idx()}] = {v()} % 7"
    if kind == 2:
        return f"{r.choice('ij')} = ({r.choice('ij')} + {v()}) % 3 + 1"
    if kind == 3:
        return "ys = xs" if r.random() < 0.5 else "xs = ys"
    if kind == 4:
        return f"{v()} = {v()} {r.choice(['+', '*', '-', '//'])} {r.choice(['a', 'b', 'c', '0', '1', '3'])}"
    if kind == 5:
        return f"{v()} = g({lst()}, {idx()}) + {v()}"
    if kind == 6:
        return f"{lst()}[{idx()}] += {lst()}[{idx()}]"
    if kind == 7:
        body = "\n        ".join(random_statement(r, 1) for _ in range(r.randrange(1, 3)))
        return f"if {v()} > {v()}:\n        {body}"
    body = "\n        ".join(random_statement(r, 1) for _ in range(r.randrange(1, 3)))
    return f"for _ in range(2):\n        {body}"


def test_random_programs_with_aliasing_keep_their_results():
    r = random.Random(1234)
    for trial in range(120):
        lines = [random_statement(r) for _ in range(r.randrange(3, 10))]
        src = "def f(xs, ys, a, b):\n    c = 0\n    i = 1\n    j = 2\n    " + "\n    ".join(lines)
        src += "\n    return a + b * 3 + c * 5 + xs[1] + ys[2]\n\n" + HELPER
        unopt, opt = both(src)
        for _ in range(3):
            args = [[r.randrange(7) for _ in range(6)], [r.randrange(7) for _ in range(6)], r.randrange(9), r.randrange(9)]
            before, after = run(unopt, "f", args), run(opt, "f", args)
            assert (after.value, after.memory) == (before.value, before.memory), src
            assert after.steps <= before.steps, src
