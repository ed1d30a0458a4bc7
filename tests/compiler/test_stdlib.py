"""Every stdlib function, compiled and run by the symbolic reference, equals the native Python function."""
import math
import random

import pytest

from modeling_nclama import stdlib
from modeling_nclama.compiler import compile_source, stdlib_source

from .reference import run

V = 256
N = 40


@pytest.fixture(scope="module")
def programs():
    return compile_source(stdlib_source(), value_size=V)


def digits(r, n):
    return [r.randrange(10) for _ in range(n)]


def tape_value(t):
    return sum(d * 10**i for i, d in enumerate(t))


CASES = {
    "gcd": lambda r: [r.randrange(V), r.randrange(V)],
    "factorial": lambda r: [r.randrange(30)],
    "power": lambda r: [r.randrange(V), r.randrange(40)],
    "fib": lambda r: [r.randrange(14)],
    "isqrt": lambda r: [r.randrange(V)],
    "insertion_sort": lambda r: [[r.randrange(V) for _ in range(r.randrange(12))]],
    "reverse": lambda r: [[r.randrange(V) for _ in range(r.randrange(12))]],
    "sum_list": lambda r: [[r.randrange(20) for _ in range(r.randrange(12))]],
    "max_list": lambda r: [[r.randrange(V) for _ in range(r.randrange(12))]],
    "count": lambda r: [[r.randrange(4) for _ in range(r.randrange(12))], r.randrange(4)],
    "index_of": lambda r: [[r.randrange(6) for _ in range(r.randrange(10))], r.randrange(6)],
    "long_add": lambda r: [digits(r, r.randrange(1, 41)), digits(r, r.randrange(1, 41))],
    "long_mul": lambda r: [digits(r, r.randrange(1, 21)), digits(r, r.randrange(1, 21))],
    "long_cmp": lambda r: [digits(r, r.randrange(0, 6)), digits(r, r.randrange(0, 6))],
    "factorial_tape": lambda r: [r.randrange(26)],
    "power_tape": lambda r: [r.randrange(26), r.randrange(30)],
    "fib_tape": lambda r: [r.choice([0, 1, 2, 3, 10, 50, 100])],
    "mul_small": lambda r: [digits(r, r.randrange(8)), r.randrange(25)],
    "add_into": lambda r: (lambda n: [digits(r, n), digits(r, n)])(r.randrange(8)),
    "sum_list_tape": lambda r: [[r.randrange(V) for _ in range(r.randrange(12))]],
}


def long_sub_args(r):
    a, b = digits(r, r.randrange(1, 30)), digits(r, r.randrange(1, 30))
    if tape_value(a) < tape_value(b):
        a, b = b, a
    if len(b) > len(a):  # keep b no longer than a, with the same value
        b = b[: len(a)]
    return [a, b]


CASES["long_sub"] = long_sub_args


def test_every_stdlib_function_is_covered(programs):
    assert {p.name for p in programs} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_stdlib_matches_native(programs, name):
    r = random.Random(name)
    native = getattr(stdlib, name)
    for _ in range(N if name not in ("fib_tape", "factorial_tape", "power_tape") else 6):
        args = CASES[name](r)
        expected = native(*[list(a) if isinstance(a, list) else a for a in args])
        got = run(programs, name, args).value
        if isinstance(expected, list):
            assert got == expected, (name, args)
        else:
            assert got == expected % V, (name, args)  # ring functions (factorial, power, fib) are exact mod V


def test_tape_results_are_the_true_numbers(programs):
    assert tape_value(run(programs, "fib_tape", [100]).value) == 354224848179261915075
    assert tape_value(run(programs, "factorial_tape", [25]).value) == math.factorial(25)
    assert tape_value(run(programs, "power_tape", [7, 40]).value) == 7**40
    a, b = [9] * 20, [9] * 20
    assert tape_value(run(programs, "long_mul", [a, b]).value) == (10**20 - 1) ** 2
    a, b = [9] * 40, [9] * 40
    assert tape_value(run(programs, "long_add", [a, b]).value) == 2 * (10**40 - 1)
    assert tape_value(run(programs, "sum_list_tape", [[255] * 30 + [7]]).value) == 255 * 30 + 7


def test_step_counts_are_small(programs):
    assert run(programs, "gcd", [144, 89]).steps < 60
    assert run(programs, "insertion_sort", [[5, 3, 9, 1]]).steps < 80
