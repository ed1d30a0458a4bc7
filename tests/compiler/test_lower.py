"""Pass 2 (lower): the IR's control flow, memory layout and calling convention."""
from modeling_nclama.toolchain.compiler import compile_to_ir, format_ir
from modeling_nclama.toolchain.compiler.lower import Const, Label, Op, XReg

V = 256


def ir(src, name=None):
    fns = compile_to_ir(src, value_size=V, optimize=False)  # this pass alone (test_optimize checks the next one)
    return fns[0] if name is None else next(f for f in fns if f.name == name)


def lines(fn):
    return [str(e).strip() for e in fn.body]


def test_simple_function_ir():
    fn = ir("def f(a, b):\n    return a + b")
    assert lines(fn) == ["mov %a.0, x0", "mov %b.1, x1", "add %t.2, %a.0, %b.1", "mov x0, %t.2", "ret"]
    assert format_ir(fn).splitlines()[0] == "def f(a: int, b: int) -> int"


def test_implicit_return_zero():
    fn = ir("def f(a):\n    a = a + 1")
    assert lines(fn)[-2:] == ["mov x0, #0", "ret"]


def test_while_uses_one_fused_compare_per_test():
    fn = ir("def f(n):\n    i = 0\n    while i < n:\n        i += 1\n    return i")
    ops = [e for e in fn.body if isinstance(e, Op)]
    tests = [o for o in ops if o.op == "lt"]
    assert len(tests) == 1 and tests[0].dst is None and tests[0].branch == "zero"
    assert isinstance(fn.body[fn.body.index(tests[0]) - 1], Label)  # the loop head


def test_index_constants_fold_into_the_offset():
    fn = ir("def f(xs, j):\n    return xs[j - 1] + xs[j] + xs[3] + xs[j + 2]")
    loads = [o for o in fn.ops() if o.op == "load"]
    assert [o.b for o in loads] == [Const(0), Const(1), Const(4), Const(3)]
    assert str(loads[2].a) == "%xs.0"  # xs[3]: no add at all
    adds = [o for o in fn.ops() if o.op == "add" and str(o.a) == "%xs.0"]
    assert len(adds) == 3


def test_store_to_item():
    fn = ir("def f(xs, i, v):\n    xs[i] = v\n    return xs")
    ls = lines(fn)
    assert "add %t.3, %xs.0, %i.1" in ls and "store [%t.3 + #1], %v.2" in ls


def test_zero_list_needs_no_fill_loop_but_other_values_do():
    zero = ir("def f(n):\n    return [0] * n")
    assert [o.op for o in zero.ops()] == ["mov", "load", "store", "add", "inc", "store", "store", "mov", "ret"]
    seven = ir("def f(n):\n    return [7] * n")
    ops = seven.ops()
    fill = [o for o in ops if o.op == "store" and o.c == Const(7)]
    assert len(fill) == 1 and str(fill[0].b).startswith("%k")  # store [p + k], #7
    assert any(o.op == "dec" and o.branch == "nonzero" for o in ops)


def test_list_literal_skips_zero_items():
    fn = ir("def f(a):\n    return [a, 0, 5]")
    stores = [str(o) for o in fn.ops() if o.op == "store"]
    assert stores == ["store [%p.1 + #3], #0", "store [#0 + #0], %t.2", "store [%p.1 + #0], #3",
                      "store [%p.1 + #1], %a.0", "store [%p.1 + #3], #5"]
    assert "add %t.2, %p.1, #4" in lines(fn)


def test_and_or_conditions_short_circuit_without_values():
    fn = ir("def f(a, b, c):\n    if a < b and b < c or a == 0:\n        return 1\n    return 0")
    cmp = [o for o in fn.ops() if o.op in ("lt", "eq")]
    assert len(cmp) == 3 and all(o.dst is None and o.branch != "never" for o in cmp)
    assert not any(o.op in ("and", "or") for o in fn.ops())


def test_and_value_is_the_last_evaluated_operand():
    fn = ir("def f(a, b):\n    return a and b")
    ls = lines(fn)
    assert any(l.startswith("mov %t.2, %a.0  jz") for l in ls)
    assert "mov %t.2, %b.1" in ls


def test_call_convention():
    fn = ir("def f(a):\n    return g(a, 3) + 1\n\ndef g(x, y):\n    return x")
    assert lines(fn)[1:] == ["mov x0, %a.0", "mov x1, #3", "call g/2", "mov %t.1, x0", "inc %t.2, %t.1",
                             "mov x0, %t.2", "ret"]


def test_range_down_to_minus_one_ends_on_wrap():
    fn = ir("def f(n):\n    s = 0\n    for i in range(n - 1, -1, -1):\n        s += i\n    return s")
    assert any(o.op == "inc" and o.dst is None and o.branch == "zero" for o in fn.ops())


def test_every_path_ends_with_ret():
    fn = ir("def f(a):\n    if a:\n        return 1\n    else:\n        return 2")
    assert fn.ops()[-1].op == "ret"
    assert all(isinstance(o.dst, (XReg, type(None))) or True for o in fn.ops())
