"""Fuzz: any text given to compile_source either compiles or raises CompileError (never anything else, never hangs)."""
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeling_nclama import program as P
from modeling_nclama.toolchain.assembly import parse_assembly
from modeling_nclama.toolchain.compiler import CompileError, compile_source, stdlib_source

V = 256
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

TOKENS = [
    "def", "f", "g", "(", ")", ":", "\n", "    ", "return", "a", "b", "xs", ",", "=", "+", "-", "*", "//", "%", "<",
    ">", "==", "!=", "and", "or", "not", "if", "elif", "else", "while", "for", "in", "range", "len", "[", "]", "0",
    "1", "255", "256", "-1", "break", "continue", "pass", "True", "lambda", "x", "min", "max", "+=", "'s'", "1.5",
    "class", "import", "global", "yield", "*", "**", "is", "None", "@", ".", "append", "#", '"""', "async", "with",
]
VALID = [
    "def f(a, b):\n    return a + b\n",
    "def f(xs):\n    s = 0\n    for x in xs:\n        s += x\n    return s\n",
    "def f(n):\n    i = 0\n    while i < n and i != 7:\n        i += 1\n    return i\n",
    "def f(n):\n    if n < 2:\n        return n\n    return f(n - 1) + f(n - 2)\n",
    "def f(xs, n):\n    ys = [0] * n\n    for i in range(n - 1, -1, -1):\n        ys[i] = xs[i]\n    return ys\n",
    stdlib_source(),
]


def check(source):
    try:
        programs = compile_source(source, value_size=V)
    except CompileError as e:
        assert e.line >= 1 and e.col >= 1
        return
    for p in programs:
        assert p.num_lines >= 1
        parse_assembly(P.format_assembly(p), num_registers=p.num_registers, num_args=p.num_args, value_size=V)


@SETTINGS
@given(st.lists(st.sampled_from(TOKENS), max_size=60))
def test_token_soup(tokens):
    check(" ".join(tokens))
    check("def f(a):\n    " + " ".join(tokens))


@SETTINGS
@given(st.text(max_size=200))
def test_random_text(text):
    check(text)


@st.composite
def mutated(draw):
    src = draw(st.sampled_from(VALID))
    r = random.Random(draw(st.integers(0, 2**32)))
    for _ in range(draw(st.integers(1, 4))):
        kind = r.randrange(5)
        if not src:
            break
        i = r.randrange(len(src))
        if kind == 0:
            src = src[:i] + src[i + r.randrange(1, 8):]
        elif kind == 1:
            src = src[:i] + r.choice(TOKENS) + src[i:]
        elif kind == 2:
            lines = src.split("\n")
            j = r.randrange(len(lines))
            lines.insert(j, lines[r.randrange(len(lines))])
            src = "\n".join(lines)
        elif kind == 3:
            lines = src.split("\n")
            a, b = r.randrange(len(lines)), r.randrange(len(lines))
            lines[a], lines[b] = lines[b], lines[a]
            src = "\n".join(lines)
        else:
            src = src.replace(r.choice(["a", "xs", "n", "i", "+", "<", "0", "1", "return", "    "]),
                              r.choice(TOKENS), 1)
    return src


@SETTINGS
@given(mutated())
def test_mutated_programs(src):
    check(src)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.integers(1, 120), st.sampled_from(["if a:", "while a:", "for i in range(a):", "if a < 3 and a:"]))
def test_deep_statement_nesting(depth, header):
    lines = ["def f(a):"]
    for d in range(depth):
        lines.append("    " * (d + 1) + header)
    lines.append("    " * (depth + 1) + "a = a - 1")
    lines.append("    return a")
    check("\n".join(lines))


@settings(max_examples=20, deadline=None, derandomize=True)
@given(st.integers(1, 3000), st.sampled_from(["(", "not ", "-", "[", "f("]))
def test_deep_expression_nesting(depth, opener):
    closer = {"(": ")", "not ": "", "-": "", "[": "]", "f(": ")"}[opener]
    check("def f(a):\n    return " + opener * depth + "a" + closer * depth)
