"""Pass 1 (parse): validation, signatures and type inference."""
import pytest

from modeling_nclama.toolchain.compiler import CompileError, stdlib_source
from modeling_nclama.toolchain.compiler.parse import INT, LIST, parse_source

V = 256


def sig(source, name=None):
    m = parse_source(source, value_size=V)
    fn = m.functions[0] if name is None else m.function(name)
    return fn.params, fn.returns


def test_stdlib_signatures():
    m = parse_source(stdlib_source(), value_size=V)
    by = {f.name: f for f in m.functions}
    assert by["gcd"].params == [("a", INT), ("b", INT)] and by["gcd"].returns == INT
    assert by["insertion_sort"].params == [("xs", LIST)] and by["insertion_sort"].returns == LIST
    # string annotations declare numbers: lists on the machine, typed as lists inside the function
    assert by["long_cmp"].params == [("a", "tape"), ("b", "tape")] and by["long_cmp"].returns == INT
    assert by["long_cmp"].local_types["a"] == LIST
    assert by["long_mul"].returns == "tape" and by["sort_numbers"].params == [("xs", "numbers")]
    assert by["sort_numbers"].returns == "numbers" and by["max_number"].returns == "tape"
    assert by["abs_add"].params == [("a", LIST), ("b", LIST)] and by["abs_add"].returns == LIST
    assert by["fib_tape"].params == [("n", INT)] and by["fib_tape"].returns == "tape"
    assert by["fib_tape"].local_types == {"n": INT, "a": LIST, "b": LIST, "_": INT}
    assert by["insertion_sort"].local_types == {"xs": LIST, "i": INT, "key": INT, "j": INT}
    assert [f.name for f in m.functions][:3] == ["gcd", "factorial", "power"]


def test_number_annotations_are_lists_that_must_be_used_as_lists():
    m = parse_source('def f(a: "tape", b) -> "numbers":\n    return a\n', value_size=V)
    (f,) = m.functions
    assert f.params == [("a", "tape"), ("b", INT)] and f.returns == "numbers"
    with pytest.raises(CompileError, match="type error"):
        parse_source('def f(a: "tape"):\n    return a + 1\n', value_size=V)
    with pytest.raises(CompileError, match="type annotation 'tapes'") as error:
        parse_source('def f(a: "tapes"):\n    return a\n', value_size=V)
    assert (error.value.line, error.value.col) == (1, 10)


def test_source_segment_is_the_function_text():
    src = '"""doc"""\n\ndef f(a):\n    return a + 1\n\n\ndef g(xs):\n    return len(xs)\n'
    m = parse_source(src, value_size=V)
    assert m.functions[0].source == "def f(a):\n    return a + 1"
    assert m.functions[1].source == "def g(xs):\n    return len(xs)"
    assert m.functions[1].lineno == 7


@pytest.mark.parametrize(
    "src, params, returns",
    [
        ("def f(a, b):\n    return a[0] + len(b)", [("a", LIST), ("b", LIST)], INT),
        ("def f(n):\n    xs = [0] * n\n    return xs", [("n", INT)], LIST),
        ("def f(a):\n    b = a\n    b[0] = 1\n    return 0", [("a", LIST)], INT),
        ("def f(a: list[int], n: int) -> list:\n    return a", [("a", LIST), ("n", INT)], LIST),
        ("def f(a, b):\n    return a if b else [1, 2]", [("a", LIST), ("b", INT)], LIST),
        ("def f(a):\n    for x in a:\n        pass\n    return x", [("a", LIST)], INT),
        ("def f(a):\n    return", [("a", INT)], INT),
    ],
)
def test_type_inference(src, params, returns):
    assert sig(src) == (params, returns)


def test_types_flow_through_calls_in_both_directions():
    src = "def g(x):\n    return h(x)\n\ndef h(y):\n    return y[0]\n\ndef k(z):\n    return m(z)[0]\n\ndef m(w):\n    return w\n"
    m = parse_source(src, value_size=V)
    assert m.function("g").params == [("x", LIST)]
    assert m.function("k").params == [("z", LIST)]
    assert m.function("m").params == [("w", LIST)] and m.function("m").returns == LIST


@pytest.mark.parametrize(
    "src, line, col, text",
    [
        ("def f(a: int):\n    return a[0]", 2, 12, "type error"),
        ("def f(a):\n    x = 1\n    x = [1]\n    return 0", 3, 9, "type error"),
        ("def f(xs):\n    return len(xs) + xs", 2, 22, "type error"),
        ("def f(xs):\n    if xs[0]:\n        return xs\n    return 0", 4, 12, "type error"),
        ("def f(xs):\n    xs[0] = 1\n    if xs:\n        return 1\n    return 0", 3, 8, "truth value"),
        ("def f(a):\n    return g(a)\n\ndef g(x, y):\n    return x", 2, 12, "takes 2 argument"),
        ("def f(a):\n    return g(a)", 2, 12, "unknown function 'g'"),
        ("def f(a):\n    return q", 2, 12, "undefined name 'q'"),
        ("def f(a):\n    f = 3\n    return f", 2, 5, "shadowing the function name 'f'"),
        ("def f(len):\n    return 1", 1, 7, "shadowing the builtin 'len'"),
        ("def f(a):\n    return 1\n\ndef f(b):\n    return 2", 4, 1, "defined twice"),
        ("def f(a):\n    return min(a)", 2, 12, "min() takes 2 or more"),
        ("def f(a):\n    break", 2, 5, "'break' outside a loop"),
        ("def f(xs, ys):\n    n = len(xs) + len(ys)\n    return xs == ys", 3, 12, "type error"),
        ("def f(xs):\n    n = len(xs)\n    return [xs]", 3, 13, "type error"),
        ("def f(a: str):\n    return 1", 1, 10, "type annotation"),
    ],
)
def test_errors(src, line, col, text):
    with pytest.raises(CompileError) as e:
        parse_source(src, value_size=V)
    assert (e.value.line, e.value.col) == (line, col), str(e.value)
    assert text in str(e.value)
    assert str(e.value).startswith(f"line {line}, column {col}: ")


def test_constant_must_fit():
    with pytest.raises(CompileError) as e:
        parse_source("def f(a):\n    return a + 256", value_size=V)
    assert (e.value.line, e.value.col) == (2, 16)
    assert "constant 256" in str(e.value) and "V = 256" in str(e.value)
    parse_source("def f(a):\n    return a + 255", value_size=V)


def test_syntax_error_position():
    with pytest.raises(CompileError) as e:
        parse_source("def f(a):\n    return (a +\n", value_size=V)
    assert "syntax error" in str(e.value) and e.value.line == 2
    with pytest.raises(CompileError):
        parse_source("x\x00", value_size=V)
    with pytest.raises(CompileError, match="no function"):
        parse_source('"""only a docstring"""', value_size=V)
