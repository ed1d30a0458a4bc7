"""The compiled standard library, run by the machine, against the native Python functions of
``modeling_nclama.stdlib`` (hard mode: 1000 random inputs per function, one vectorized batch each; soft mode: a few
small inputs per function, same answers as hard mode)."""
import inspect
import math
import random

import pytest

from modeling_nclama import stdlib

pytestmark = pytest.mark.usefixtures("one_thread")

V = 256  # the value size of the session's `std` fixture

N = 1000
TAPE_FUNCTIONS = {"factorial_tape", "power_tape", "fib_tape"}


def digits(r, n):
    return [r.randrange(10) for _ in range(n)]


def value_of(tape):
    """A little-endian base-10 digit tape as a Python int."""
    return sum(d * 10**i for i, d in enumerate(tape))


def tape_of(n, width=0):
    out = [int(c) for c in reversed(str(n))] if n else []
    return out + [0] * max(0, width - len(out))


def list_len(r):
    """Mostly 0..16 items, some of 64."""
    return 64 if r.random() < 0.05 else r.randrange(17)


def long_sub_args(r):
    """long_sub needs a >= b and b no longer than a."""
    a, b = digits(r, r.randrange(1, 41)), digits(r, r.randrange(1, 41))
    if value_of(a) < value_of(b):
        a, b = b, a
    b_cut = b[: len(a)]  # a >= b, so any digits of b past len(a) are zeros: the value stays
    assert value_of(b_cut) == value_of(b)
    return [a, b_cut]


CASES = {
    "gcd": lambda r: [r.randrange(V), r.randrange(V)],
    # ring: compared mod V. n = V - 1 is left out: the loop bound n + 1 wraps to 0 (range(2, 0) is empty).
    "factorial": lambda r: [r.randrange(V - 1) if r.random() < 0.3 else r.randrange(12)],
    "power": lambda r: [r.randrange(V), r.randrange(V)],  # ring: compared mod V
    "fib": lambda r: [r.randrange(14)],  # exponential time; fib(13) = 233 < V
    "isqrt": lambda r: [r.randrange(V)],
    "insertion_sort": lambda r: [[r.randrange(V) for _ in range(list_len(r))]],
    "reverse": lambda r: [[r.randrange(V) for _ in range(list_len(r))]],
    "sum_list": lambda r: [[r.randrange(V) for _ in range(list_len(r))]],  # ring: compared mod V
    "max_list": lambda r: [[r.randrange(V) for _ in range(list_len(r))]],
    "count": lambda r: [[r.randrange(4) for _ in range(list_len(r))], r.randrange(5)],
    "index_of": lambda r: [[r.randrange(8) for _ in range(list_len(r))], r.randrange(9)],
    "long_add": lambda r: [digits(r, r.randrange(0, 41)), digits(r, r.randrange(0, 41))],
    "long_sub": long_sub_args,
    "long_mul": lambda r: [digits(r, r.randrange(0, 21)), digits(r, r.randrange(0, 21))],
    "long_cmp": lambda r: (lambda a: [a, list(a) if r.random() < 0.2 else digits(r, r.randrange(0, 41))])(
        digits(r, r.randrange(0, 41))
    ),
    "mul_small": lambda r: [digits(r, r.randrange(0, 17)), r.randrange(V // 10)],
    "factorial_tape": lambda r: [r.randrange(26)],  # 10 * n <= V
    "power_tape": lambda r: [r.randrange(26), r.randrange(21)],  # 10 * a <= V
    "add_into": lambda r: (lambda n: [digits(r, n), digits(r, n)])(r.randrange(0, 17)),
    "fib_tape": lambda r: [r.randrange(61)],
    "sum_list_tape": lambda r: [[r.randrange(V) for _ in range(list_len(r))]],
}
RING = {"factorial", "power", "sum_list"}


def native_functions():
    return sorted(
        name for name, fn in vars(stdlib).items() if inspect.isfunction(fn) and fn.__module__ == stdlib.__name__
    )


def call_native(name, args):
    return getattr(stdlib, name)(*[list(a) if isinstance(a, list) else a for a in args])  # natives mutate lists


def test_every_function_is_compiled_and_covered(std):
    assert sorted(std.names) == native_functions()
    assert set(CASES) == set(std.names)


@pytest.mark.parametrize("name", sorted(CASES))
def test_hard_mode_matches_native_on_1000_inputs(std, name):
    r = random.Random(f"hard-{name}")
    batch = [CASES[name](r) for _ in range(N)]
    result = std.run_batch(name, batch)
    assert result.status == ["ok"] * N
    assert len(result.values) == len(result.steps) == N
    assert all(s > 0 for s in result.steps)
    for args, got in zip(batch, result.values):
        expected = call_native(name, args)
        if name in RING:
            expected %= V
        assert got == expected, (name, args, got, expected)


# ---------------------------------------------------------------------- long arithmetic against Python big ints
def test_long_add_sub_cmp_against_big_ints(std):
    r = random.Random("long")
    pairs = []
    for _ in range(300):
        a = r.randrange(10 ** r.randrange(1, 41))
        b = r.randrange(10 ** r.randrange(1, 41))
        pairs.append((max(a, b), min(a, b)))
    pairs += [(10**40 - 1, 1), (10**40 - 1, 10**40 - 1), (0, 0), (10**39, 10**39 - 1)]
    tapes = [(tape_of(a), tape_of(b)) for a, b in pairs]

    added = std.run_batch("long_add", tapes)
    assert added.status == ["ok"] * len(pairs)
    for (a, b), (ta, tb), got in zip(pairs, tapes, added.values):
        assert value_of(got) == a + b
        assert len(got) == max(len(ta), len(tb)) + 1 and all(0 <= d < 10 for d in got)

    subtracted = std.run_batch("long_sub", tapes)
    for (a, b), (ta, _), got in zip(pairs, tapes, subtracted.values):
        assert value_of(got) == a - b and len(got) == len(ta)

    swapped = tapes + [(tb, ta) for ta, tb in tapes]
    compared = std.run_batch("long_cmp", swapped)
    for (ta, tb), got in zip(swapped, compared.values):
        a, b = value_of(ta), value_of(tb)
        assert got == (2 if a > b else 0 if a < b else 1)


def test_long_mul_20_by_20_digits_against_big_ints(std):
    r = random.Random("long_mul")
    pairs = [(r.randrange(10 ** r.randrange(1, 21)), r.randrange(10 ** r.randrange(1, 21))) for _ in range(200)]
    pairs += [(10**20 - 1, 10**20 - 1), (12345678901234567890, 98765432109876543210 % 10**20), (0, 10**19)]
    tapes = [(tape_of(a, 1), tape_of(b, 1)) for a, b in pairs]
    result = std.run_batch("long_mul", tapes)
    assert result.status == ["ok"] * len(pairs)
    for (a, b), (ta, tb), got in zip(pairs, tapes, result.values):
        assert value_of(got) == a * b, (a, b)
        assert len(got) == len(ta) + len(tb)
    assert result.values[len(pairs) - 3] == tape_of((10**20 - 1) ** 2, 40)


def test_factorial_tape_against_math_factorial(std):
    ns = list(range(26))
    result = std.run_batch("factorial_tape", [(n,) for n in ns])
    for n, got in zip(ns, result.values):
        assert value_of(got) == math.factorial(n)
        assert len(got) == 2 * n + 2
    assert result.values[12] == tape_of(479001600, 26)  # 12!
    assert std.run("factorial_tape", 25) == tape_of(math.factorial(25), 52)


def python_fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def test_fib_tape_against_python_fib(std):
    ns = [0, 1, 2, 3, 10, 30, 50, 77, 100]
    result = std.run_batch("fib_tape", [(n,) for n in ns])
    assert result.status == ["ok"] * len(ns)
    for n, got in zip(ns, result.values):
        assert value_of(got) == python_fib(n), n
        assert len(got) == n // 4 + 2
    assert result.values[ns.index(30)] == [0, 4, 0, 2, 3, 8, 0, 0, 0]  # 832040
    assert value_of(result.values[-1]) == 354224848179261915075


def test_power_tape_against_big_ints(std):
    cases = [(2, 20), (25, 20), (7, 13), (10, 5), (0, 0), (0, 3), (1, 9)]
    result = std.run_batch("power_tape", cases)
    for (a, n), got in zip(cases, result.values):
        assert value_of(got) == a**n
        assert len(got) == 2 * n + 2


def test_sum_list_tape_small_cases_at_v256(std):
    cases = [[], [0], [7], [5, 5], [255] * 64, [255] * 128, [9, 99, 1], [100, 0, 0]]
    result = std.run_batch("sum_list_tape", [(xs,) for xs in cases])
    assert result.status == ["ok"] * len(cases)
    for xs, got in zip(cases, result.values):
        assert value_of(got) == sum(xs) and all(0 <= d < 10 for d in got), xs
    assert result.values[:4] == [[0], [0], [7, 0], [0, 1]]  # digits(len) + digits(max) digits, at least one
    assert result.values[4] == tape_of(255 * 64, 5)  # digits(64) + digits(255) = 5 digits


@pytest.fixture(scope="module")
def std1024():
    """The standard library at V = 1024, the value size of the shipped model (every number below 1000 is one value)."""
    from modeling_nclama import Library

    return Library.standard(value_size=1024)


def test_sum_list_tape_at_v1024_against_python_sum(std1024):
    r = random.Random("sum_list_tape-1024")
    lists = [[r.randrange(1000) for _ in range(64 if r.random() < 0.1 else r.randrange(65))] for _ in range(N)]
    lists += [[999] * 64, [], [0] * 64, [1000, 1023]]
    result = std1024.run_batch("sum_list_tape", [(xs,) for xs in lists])
    assert result.status == ["ok"] * len(lists)
    for xs, got in zip(lists, result.values):
        assert value_of(got) == sum(xs) and all(0 <= d < 10 for d in got), xs
    assert result.values[N] == [6, 3, 9, 3, 6]  # 999 * 64 = 63936


# ---------------------------------------------------------------------- soft mode agrees with hard mode
SOFT_CASES = {
    "gcd": [(12, 18), (7, 0)],
    "factorial": [(5,), (0,)],
    "power": [(3, 5), (2, 9)],
    "fib": [(5,), (1,)],
    "isqrt": [(17,), (0,)],
    "insertion_sort": [([3, 1, 2],), ([],)],
    "reverse": [([1, 2, 3],), ([],)],
    "sum_list": [([200, 100, 7],), ([],)],
    "max_list": [([4, 9, 2],), ([],)],
    "count": [([1, 2, 1], 1), ([], 3)],
    "index_of": [([1, 2, 3], 3), ([5, 6], 7)],
    "long_add": [([9, 9], [1]), ([1, 2], [3, 4, 5])],
    "long_sub": [([0, 1], [1]), ([3, 2, 1], [1, 1])],
    "long_mul": [([9, 9], [9, 9]), ([2, 1], [3])],
    "long_cmp": [([1, 2], [2, 1]), ([5], [5, 0])],
    "mul_small": [([9, 9], 7), ([1, 2], 0)],
    "factorial_tape": [(4,)],
    "power_tape": [(3, 2)],
    "add_into": [([9, 9], [1, 0]), ([5], [4])],
    "fib_tape": [(5,)],
    "sum_list_tape": [([12, 9, 250],), ([],)],
}


def test_soft_cases_cover_the_library(std):
    assert set(SOFT_CASES) == set(std.names)


@pytest.mark.parametrize("name", sorted(SOFT_CASES))
def test_soft_mode_gives_the_hard_answer(std, name):
    for args in SOFT_CASES[name]:
        hard = std.run(name, *args)
        soft = std.run(name, *args, mode="soft")
        expected = call_native(name, args)
        assert soft == hard == (expected % V if name in RING else expected), (name, args)
