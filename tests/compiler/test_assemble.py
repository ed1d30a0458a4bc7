"""Pass 4 (assemble) and the public entry point: programs, library-wide layout, round trips."""
import pytest
import torch

from modeling_nclama import program as P
from modeling_nclama.toolchain.assembly import parse_assembly
from modeling_nclama.toolchain.compiler import CompileError, compile_allocated, compile_source, stdlib_source

V = 256


@pytest.fixture(scope="module")
def stdlib_programs():
    return compile_source(stdlib_source(), value_size=V)


def test_programs_in_source_order_with_signatures(stdlib_programs):
    names = [p.name for p in stdlib_programs]
    assert names[:4] == ["gcd", "factorial", "power", "fib"]
    sort = next(p for p in stdlib_programs if p.name == "insertion_sort")
    assert sort.params == [("xs", "list")] and sort.returns == "list"
    assert sort.source.startswith("def insertion_sort(xs):") and sort.source.rstrip().endswith("return xs")
    assert sort.value_size == V and sort.num_args == 4


def test_library_registers_default_to_the_maximum(stdlib_programs):
    need = {f.name: f.num_registers for f in compile_allocated(stdlib_source(), value_size=V)}
    assert {p.num_registers for p in stdlib_programs} == {max(need.values())}
    for p in stdlib_programs:
        assert p.meta["registers"] == need[p.name]
        assert p.meta["lines"] == p.num_lines


def test_weights_are_one_hot_with_the_sharpness():
    (p,) = compile_source("def f(a, b):\n    return a + b * 3", value_size=64, sharpness=7.5)
    R, X, K = p.num_registers, p.num_args, p.num_consts
    assert p.weights["a"].shape == (p.num_lines, R + X + K)
    assert p.weights["dst"].shape == (p.num_lines, R + X + 1)
    assert p.weights["consts"].shape == (K, 64)
    for w in p.weights.values():
        if w.numel():
            assert set(w.unique().tolist()) <= {0.0, -7.5}
            assert torch.all((w == 0.0).sum(-1) == 1)
    assert p.consts() == [3]
    assert p.assembly().splitlines()[1:] == [".consts 3", "   0  mul x1, x1, #3", "   1  add x0, x0, x1", "   2  ret"]


def test_given_num_registers():
    src = "def f(a):\n    return g(a) + a\n\ndef g(a):\n    return a"
    progs = compile_source(src, value_size=V, num_registers=6)
    assert all(p.num_registers == 6 for p in progs)
    with pytest.raises(CompileError, match="'f' needs 1 registers, but num_registers = 0") as e:
        compile_source(src, value_size=V, num_registers=0)
    assert e.value.line == 1


def test_num_args():
    progs = compile_source("def f(a, b):\n    return a", value_size=V, num_args=2)
    assert progs[0].num_args == 2
    with pytest.raises(CompileError, match="more than num_args = 1"):
        compile_source("def f(a, b):\n    return a", value_size=V, num_args=1)


def test_callees_by_first_appearance():
    src = "def f(a):\n    return h(a) + g(a) + h(a)\n\ndef g(a):\n    return a\n\ndef h(a):\n    return a"
    f = compile_source(src, value_size=V)[0]
    assert f.callees == ["h", "g"]
    calls = [i.callee for i in f.instructions() if i.op == "call"]
    assert calls == [0, 1, 0]


def test_round_trip_of_every_stdlib_program(stdlib_programs):
    for p in stdlib_programs:
        text = P.format_assembly(p)
        q = parse_assembly(text, num_registers=p.num_registers, num_args=p.num_args, value_size=V)
        assert q.name == p.name and q.params == p.params and q.returns == p.returns
        assert q.callees == p.callees
        assert set(q.weights) == set(p.weights)
        for k in p.weights:
            assert torch.equal(q.weights[k], p.weights[k]), (p.name, k)


def test_small_value_size_rejects_big_constants():
    with pytest.raises(CompileError, match="constant 10 does not fit"):
        compile_source(stdlib_source(), value_size=8)
