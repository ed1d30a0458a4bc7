"""Every unsupported construct is a CompileError naming it, at the right line and column."""
import pytest

from modeling_nclama.toolchain.compiler import CompileError, compile_source

V = 256

CASES = [
    # (source, line, col, construct named in the message)
    ("def f(a):\n    g = lambda x: x\n    return 0", 2, 9, "lambda"),
    ("def f(a):\n    return 'hi'", 2, 12, "string constant"),
    ("def f(a):\n    return 1.5", 2, 12, "float constant 1.5"),
    ("def f(a):\n    return None", 2, 12, "None"),
    ("class A:\n    pass", 1, 1, "class definition"),
    ("import os\n\ndef f(a):\n    return a", 1, 1, "import"),
    ("from math import gcd\n\ndef f(a):\n    return a", 1, 1, "import"),
    ("X = 3\n\ndef f(a):\n    return a", 1, 1, "global variable"),
    ("def f(a):\n    global X\n    return a", 2, 5, "global statement"),
    ("def f(a):\n    def g(b):\n        return b\n    return a", 2, 5, "nested function definition"),
    ("def f(a):\n    return g(b=a)\n\ndef g(b):\n    return b", 2, 14, "keyword argument b"),
    ("def f(a=1):\n    return a", 1, 9, "default argument value"),
    ("def f(*args):\n    return 0", 1, 8, "*args parameter"),
    ("def f(**kw):\n    return 0", 1, 9, "**kwargs parameter"),
    ("def f(a, *, b):\n    return 0", 1, 13, "keyword-only parameter"),
    ("def f(xs):\n    return xs[1:2]", 2, 15, "slicing"),
    ("def f(xs):\n    xs.append(1)\n    return xs", 2, 5, "method call xs.append()"),
    ("def f(a):\n    with a:\n        pass\n    return 0", 2, 5, "with statement"),
    ("def f(a):\n    try:\n        pass\n    except E:\n        pass\n    return 0", 2, 5, "try statement"),
    ("def f(xs):\n    return len(x for x in xs)", 2, 15, "generator expression"),
    ("def f(xs):\n    return [x for x in xs]", 2, 12, "list comprehension"),
    ("def f(a):\n    print(a)\n    return a", 2, 5, "unknown function 'print'"),
    ("def f(a):\n    return abs(a)", 2, 12, "unknown function 'abs'"),
    ("def f(a):\n    return a ** 2", 2, 12, "operator **"),
    ("def f(a):\n    return a / 2", 2, 12, "operator /"),
    ("def f(a):\n    return a & 2", 2, 12, "operator &"),
    ("def f(a, xs):\n    return a in xs", 2, 12, "operator in"),
    ("def f(a):\n    return a is a", 2, 12, "operator is"),
    ("def f(a):\n    return -a", 2, 12, "unary minus"),
    ("def f(a):\n    return a + -3", 2, 16, "negative constant -3"),
    ("def f(a):\n    return (a, a)", 2, 12, "tuple"),
    ("def f(a):\n    return {1: a}", 2, 12, "dict"),
    ("def f(a):\n    return {a}", 2, 12, "set"),
    ("def f(a):\n    return f'{a}'", 2, 12, "f-string"),
    ("def f(a):\n    yield a", 2, 5, "expression statement"),
    ("def f(a):\n    return (b := a)", 2, 13, "assignment expression"),
    ("@dec\ndef f(a):\n    return a", 1, 2, "decorator"),
    ("async def f(a):\n    return a", 1, 1, "async function"),
    ("def f(a):\n    assert a\n    return a", 2, 5, "assert statement"),
    ("def f(a):\n    raise a", 2, 5, "raise statement"),
    ("def f(a):\n    del a\n    return 0", 2, 5, "del statement"),
    ("def f(a):\n    x = y = a\n    return x", 2, 5, "chained assignment"),
    ("def f(a):\n    a.b = 1\n    return a", 2, 5, "assignment to attribute access"),
    ("def f(a):\n    while a:\n        a -= 1\n    else:\n        a = 2\n    return a", 5, 9, "while-else"),
    ("def f(a):\n    for i, j in g():\n        pass\n    return a", 2, 9, "for loop target tuple"),
    ("def f(a):\n    for c in 'abc':\n        pass\n    return a", 2, 14, "for loop over string constant"),
    ("def f(a):\n    for i in range(a, 0, a):\n        pass\n    return a", 2, 26, "range step that is not an int constant"),
    ("def f(a):\n    for i in range(a, -2, -1):\n        pass\n    return a", 2, 23, "range stop -2"),
    ("def f(a):\n    for i in range(0, -1):\n        pass\n    return a", 2, 23, "range stop -1"),
    ("def f(a):\n    for i in range(a, 0, 0):\n        pass\n    return a", 2, 26, "step must not be zero"),
    ("def f(a):\n    return range(a)", 2, 12, "range() outside a for loop"),
    ("def f(a):\n    return len", 2, 12, "builtin 'len' used as a value"),
    ("def f(a):\n    return f", 2, 12, "function 'f' used as a value"),
    ("def f(a):\n    return a(1)", 2, 12, "call of the variable 'a'"),
    ("def f(a):\n    return g(*a)\n\ndef g(x):\n    return x", 2, 14, "starred argument"),
    ("def f(a):\n    match a:\n        case 1:\n            pass\n    return a", 2, 5, "match statement"),
    ("def f(a):\n    a\n    return a", 2, 5, "expression statement"),
    ("def f(a):\n    return a @ a", 2, 12, "operator @"),
    ("def f(a):\n    return ~a", 2, 12, "operator ~"),
    ("def f(a):\n    return a + 1000", 2, 16, "constant 1000 does not fit"),
    ("def f(a):\n    return True + 300", 2, 19, "constant 300"),
]


@pytest.mark.parametrize("src, line, col, construct", CASES, ids=[c[3] for c in CASES])
def test_unsupported_construct(src, line, col, construct):
    with pytest.raises(CompileError) as e:
        compile_source(src, value_size=V)
    err = e.value
    assert construct in str(err), str(err)
    assert (err.line, err.col) == (line, col), str(err)
    assert str(err).startswith(f"line {line}, column {col}: ")
    assert isinstance(err, ValueError)


def test_too_many_parameters():
    src = "def f(a, b, c, d, e):\n    return a"
    with pytest.raises(CompileError, match="more than num_args = 4") as e:
        compile_source(src, value_size=V)
    assert e.value.line == 1
    compile_source(src, value_size=V, num_args=5)


def test_syntax_error_is_a_compile_error():
    with pytest.raises(CompileError) as e:
        compile_source("def f(a)\n    return a", value_size=V)
    assert e.value.line == 1 and "syntax error" in str(e.value)


def test_deep_nesting_is_a_compile_error_or_compiles():
    deep = "def f(a):\n    return " + "(" * 300 + "a" + ")" * 300
    try:
        compile_source(deep, value_size=V)
    except CompileError:
        pass
    chain = "def f(a):\n    return a" + " + a" * 3000
    try:
        compile_source(chain, value_size=V)
    except CompileError as e:
        assert "nested too deeply" in str(e) or "syntax error" in str(e)
