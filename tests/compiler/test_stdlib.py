"""Every stdlib function, compiled and run by the symbolic reference, equals the native Python function."""
import math
import random

import pytest

from modeling_nclama.toolchain import stdlib
from modeling_nclama.toolchain.compiler import compile_source, stdlib_source

from .reference import run

V = 256
N = 40


@pytest.fixture(scope="module")
def programs():
    return compile_source(stdlib_source(), value_size=V)


def digits(r, n):
    return [r.randrange(10) for _ in range(n)]


def tape_value(t):
    """The int of a signed tape [sign, digits least significant first]."""
    value = sum(d * 10**i for i, d in enumerate(t[1:]))
    return -value if t[0] else value


def tape(r, n):
    return [r.randrange(2)] + digits(r, n)


def numbers(r, count, width):
    """A packed numbers list of ``count`` random items of ``width`` digits (no -0)."""
    cells = [width]
    for _ in range(count):
        item = digits(r, width)
        cells += [r.randrange(2) if any(item) else 0] + item
    return cells


def permutation(r, xs):
    """A numbers list, a shuffled list of its record positions, and the record size."""
    size = xs[0] + 1
    order = [1 + k * size for k in range((len(xs) - 1) // size)]
    r.shuffle(order)
    return [xs, order, size]


def ordered_magnitudes(r, n):
    """Two tapes with |a| >= |b|."""
    a, b = tape(r, n), tape(r, r.randrange(1, n + 1))
    if abs(tape_value(a)) < abs(tape_value(b)):
        a, b = b, a
    return [a, b[: len(a)] if len(b) > len(a) else b]


CASES = {
    "gcd": lambda r: [r.randrange(V), r.randrange(V)],
    "factorial": lambda r: [r.randrange(30)],
    "power": lambda r: [r.randrange(V), r.randrange(40)],
    "fib": lambda r: [r.randrange(40)],
    "fib_recursive": lambda r: [r.randrange(14)],
    "isqrt": lambda r: [r.randrange(V)],
    "insertion_sort": lambda r: [[r.randrange(V) for _ in range(r.randrange(12))]],
    "reverse": lambda r: [[r.randrange(V) for _ in range(r.randrange(12))]],
    "sum_list": lambda r: [[r.randrange(20) for _ in range(r.randrange(12))]],
    "max_list": lambda r: [[r.randrange(V) for _ in range(r.randrange(12))]],
    "count": lambda r: [[r.randrange(4) for _ in range(r.randrange(12))], r.randrange(4)],
    "index_of": lambda r: [[r.randrange(6) for _ in range(r.randrange(10))], r.randrange(6)],
    "is_zero": lambda r: [tape(r, r.randrange(1, 4)) if r.random() < 0.5 else [r.randrange(2)] + [0] * r.randrange(1, 4)],
    "zero_unsigned": lambda r: [[1] + [0] * r.randrange(1, 4) if r.random() < 0.5 else tape(r, 3)],
    "abs_cmp": lambda r: [tape(r, r.randrange(1, 6)), tape(r, r.randrange(1, 6))],
    "abs_add": lambda r: [tape(r, r.randrange(1, 41)), tape(r, r.randrange(1, 41))],
    "abs_sub": lambda r: ordered_magnitudes(r, r.randrange(1, 30)),
    "signed_add": lambda r: [tape(r, r.randrange(1, 30)), r.randrange(2), tape(r, r.randrange(1, 30)), r.randrange(2)],
    "long_add": lambda r: [tape(r, r.randrange(1, 41)), tape(r, r.randrange(1, 41))],
    "long_sub": lambda r: [tape(r, r.randrange(1, 41)), tape(r, r.randrange(1, 41))],
    "long_mul": lambda r: [tape(r, r.randrange(1, 21)), tape(r, r.randrange(1, 21))],
    "long_cmp": lambda r: [tape(r, r.randrange(1, 6)), tape(r, r.randrange(1, 6))],
    "halve": lambda r: [tape(r, r.randrange(1, 12))],
    "sub_into": lambda r: ordered_magnitudes(r, r.randrange(1, 12)),
    "long_gcd": lambda r: [tape(r, r.randrange(1, 9)), tape(r, r.randrange(1, 9))],
    "record_cmp": lambda r: (lambda xs: [xs, 1 + 4 * r.randrange(4), 1 + 4 * r.randrange(4)])(numbers(r, 4, 3)),
    "sort_numbers": lambda r: [numbers(r, r.randrange(12), r.randrange(1, 5))],
    "permute_records": lambda r: permutation(r, numbers(r, r.randrange(10), r.randrange(1, 4))),
    "extreme_number": lambda r: [numbers(r, r.randrange(1, 12), r.randrange(1, 5)), r.choice([0, 2])],
    "max_number": lambda r: [numbers(r, r.randrange(1, 12), r.randrange(1, 5))],
    "min_number": lambda r: [numbers(r, r.randrange(1, 12), r.randrange(1, 5))],
    "sum_numbers": lambda r: [numbers(r, r.randrange(12), r.randrange(1, 5))],
    "add_record": lambda r: (lambda xs: [[0] * 8, xs, 1 + 4 * r.randrange(3)])(numbers(r, 3, 3)),
    "factorial_tape": lambda r: [r.randrange(26)],
    "power_tape": lambda r: [r.randrange(26), r.randrange(30)],
    "fib_tape": lambda r: [r.choice([0, 1, 2, 3, 10, 50, 100])],
    "mul_small": lambda r: [digits(r, r.randrange(8)), r.randrange(25)],
    "add_into": lambda r: (lambda n: [digits(r, n), digits(r, n)])(r.randrange(8)),
    "sum_list_tape": lambda r: [[r.randrange(V) for _ in range(r.randrange(12))]],
}


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
    a, b = [1] + [9] * 20, [0] + [9] * 20
    assert tape_value(run(programs, "long_mul", [a, b]).value) == -((10**20 - 1) ** 2)
    a, b = [0] + [9] * 40, [0] + [9] * 40
    assert tape_value(run(programs, "long_add", [a, b]).value) == 2 * (10**40 - 1)
    a, b = [0, 6, 0, 4, 4], [0, 3, 7, 2, 1, 8]  # 4406 - 81273
    assert tape_value(run(programs, "long_sub", [a, b]).value) == -76867
    assert tape_value(run(programs, "sum_list_tape", [[255] * 30 + [7]]).value) == 255 * 30 + 7


def test_step_counts_are_small(programs):
    assert run(programs, "gcd", [144, 89]).steps < 60
    assert run(programs, "insertion_sort", [[5, 3, 9, 1]]).steps < 80
