"""The compiled standard library, run by the machine, against the native Python functions of
``modeling_nclama.toolchain.stdlib`` (hard mode: 1000 random inputs per function, one vectorized batch each; soft mode: a few
small inputs per function, same answers as hard mode), and the numbers programs against Python's own arithmetic."""
import inspect
import math
import random

import pytest

from modeling_nclama import Library, MachineError, standard_library
from modeling_nclama.toolchain import stdlib

pytestmark = pytest.mark.usefixtures("one_thread")

V = 256  # the value size of the session's `std` fixture

N = 1000


def digits(r, n):
    return [r.randrange(10) for _ in range(n)]


def signed(r, max_digits):
    """A random int of 1..max_digits digits, negative a third of the time."""
    value = r.randrange(10 ** r.randrange(1, max_digits + 1))
    return -value if r.random() < 1 / 3 else value


def tape(r, n):
    """A raw tape [sign, n digits] for the helpers that take one as a plain list."""
    return [r.randrange(2)] + digits(r, n)


def packed(r, count, width):
    return Library.to_cells("numbers", [signed(r, width) for _ in range(count)])


def list_len(r):
    """Mostly 0..16 items, some of 64."""
    return 64 if r.random() < 0.05 else r.randrange(17)


def ordered_magnitudes(r, n):
    """Two raw tapes with |a| >= |b|."""
    a, b = tape(r, n), tape(r, r.randrange(1, n + 1))
    if abs(Library.from_cells("tape", a)) < abs(Library.from_cells("tape", b)):
        a, b = b, a
    return [a, b[: len(a)] if len(b) > len(a) else b]


def permutation_args(r):
    """A numbers list and a permutation of its record positions."""
    xs = packed(r, r.randrange(0, 10), r.randrange(1, 4))
    size = xs[0] + 1
    order = [1 + k * size for k in range((len(xs) - 1) // size)]
    r.shuffle(order)
    return [xs, order, size]


CASES = {
    "gcd": lambda r: [r.randrange(V), r.randrange(V)],
    # ring: compared mod V. n = V - 1 is left out: the loop bound n + 1 wraps to 0 (range(2, 0) is empty).
    "factorial": lambda r: [r.randrange(V - 1) if r.random() < 0.3 else r.randrange(12)],
    "power": lambda r: [r.randrange(V), r.randrange(V)],  # ring: compared mod V
    "fib": lambda r: [r.randrange(V)],  # ring: compared mod V
    "fib_recursive": lambda r: [r.randrange(14)],  # exponential time; fib(13) = 233 < V
    "isqrt": lambda r: [r.randrange(V)],
    "insertion_sort": lambda r: [[r.randrange(V) for _ in range(list_len(r))]],
    "reverse": lambda r: [[r.randrange(V) for _ in range(list_len(r))]],
    "sum_list": lambda r: [[r.randrange(V) for _ in range(list_len(r))]],  # ring: compared mod V
    "max_list": lambda r: [[r.randrange(V) for _ in range(list_len(r))]],
    "count": lambda r: [[r.randrange(4) for _ in range(list_len(r))], r.randrange(5)],
    "index_of": lambda r: [[r.randrange(8) for _ in range(list_len(r))], r.randrange(9)],
    "is_zero": lambda r: [tape(r, r.randrange(1, 4)) if r.random() < 0.5 else [r.randrange(2)] + [0] * r.randrange(1, 4)],
    "zero_unsigned": lambda r: [[1] + [0] * r.randrange(1, 4) if r.random() < 0.5 else tape(r, 3)],
    "abs_cmp": lambda r: (lambda a: [a, list(a) if r.random() < 0.2 else tape(r, r.randrange(1, 8))])(tape(r, r.randrange(1, 8))),
    "abs_add": lambda r: [tape(r, r.randrange(1, 41)), tape(r, r.randrange(1, 41))],
    "abs_sub": lambda r: ordered_magnitudes(r, r.randrange(1, 30)),
    "signed_add": lambda r: [tape(r, r.randrange(1, 30)), r.randrange(2), tape(r, r.randrange(1, 30)), r.randrange(2)],
    "long_add": lambda r: [signed(r, 40), signed(r, 40)],
    "long_sub": lambda r: (lambda a: [a, a if r.random() < 0.1 else signed(r, 40)])(signed(r, 40)),
    "long_mul": lambda r: [signed(r, 20), signed(r, 20)],
    "long_cmp": lambda r: (lambda a: [a, a if r.random() < 0.2 else -a if r.random() < 0.2 else signed(r, 40)])(signed(r, 40)),
    "long_gcd": lambda r: [signed(r, 12), signed(r, 12)],
    "halve": lambda r: [tape(r, r.randrange(1, 12))],
    "sub_into": lambda r: ordered_magnitudes(r, r.randrange(1, 12)),
    "record_cmp": lambda r: (lambda xs: [xs, 1 + (xs[0] + 1) * r.randrange(4), 1 + (xs[0] + 1) * r.randrange(4)])(packed(r, 4, 3)),
    "sort_numbers": lambda r: [[signed(r, 6) for _ in range(r.randrange(13))]],  # in, out and order fit in 255 cells
    "permute_records": lambda r: permutation_args(r),
    "extreme_number": lambda r: [packed(r, r.randrange(1, 12), r.randrange(1, 5)), r.choice([0, 2])],
    "max_number": lambda r: [[signed(r, 6) for _ in range(1 + list_len(r) // 2)]],
    "min_number": lambda r: [[signed(r, 6) for _ in range(1 + list_len(r) // 2)]],
    "sum_numbers": lambda r: [[signed(r, 6) for _ in range(r.randrange(30))]],  # at most 211 cells
    "add_record": lambda r: (lambda xs: [[0] * 8, xs, 1 + (xs[0] + 1) * r.randrange(3)])(packed(r, 3, 3)),
    "mul_small": lambda r: [digits(r, r.randrange(0, 17)), r.randrange(V // 10)],
    "factorial_tape": lambda r: [r.randrange(26)],  # 10 * n <= V
    "power_tape": lambda r: [r.randrange(26), r.randrange(21)],  # 10 * a <= V
    "add_into": lambda r: (lambda n: [digits(r, n), digits(r, n)])(r.randrange(0, 17)),
    "fib_tape": lambda r: [r.randrange(61)],
    "sum_list_tape": lambda r: [[r.randrange(V) for _ in range(list_len(r))]],
}
RING = {"factorial", "power", "sum_list", "fib"}


def native_functions():
    return sorted(
        name for name, fn in vars(stdlib).items() if inspect.isfunction(fn) and fn.__module__ == stdlib.__name__
    )


def call_native(std, name, args):
    """The native function on what the machine holds (numbers as their cells), its result read back likewise."""
    program = std[name]
    cells = [list(Library.to_cells(kind, a)) if isinstance(Library.to_cells(kind, a), list) else a
             for (_, kind), a in zip(program.params, args)]  # natives mutate lists: each call gets copies
    result = getattr(stdlib, name)(*cells)
    return Library.from_cells(program.returns, result) if program.returns != "int" else result


def test_every_function_is_compiled_and_covered(std):
    assert sorted(std.names) == native_functions()
    assert set(CASES) == set(std.names)


@pytest.mark.parametrize("name", sorted(CASES))
def test_hard_mode_matches_native_on_1000_inputs(std, name):
    r = random.Random(f"hard-{name}")
    batch = [CASES[name](r) for _ in range(N if name != "long_gcd" else 200)]
    result = std.run_batch(name, batch, max_steps=1_000_000)
    assert result.status == ["ok"] * len(batch)
    assert all(s > 0 for s in result.steps)
    for args, got in zip(batch, result.values):
        expected = call_native(std, name, args)
        if name in RING:
            expected %= V
        assert got == expected, (name, args, got, expected)


# ---------------------------------------------------------------------- numbers against Python's own arithmetic
def test_signed_arithmetic_against_python(std):
    r = random.Random("signed")
    pairs = [(signed(r, 40), signed(r, 40)) for _ in range(300)]
    pairs += [(10**40 - 1, 1), (-(10**40 - 1), 10**40 - 1), (0, 0), (0, -5), (4406, 81273), (-7, -2), (5, -5)]
    for name, op in [("long_add", lambda a, b: a + b), ("long_sub", lambda a, b: a - b),
                     ("long_cmp", lambda a, b: 2 if a > b else 0 if a < b else 1)]:
        result = std.run_batch(name, pairs)
        assert result.status == ["ok"] * len(pairs)
        assert result.values == [op(a, b) for a, b in pairs], name
    products = [(a % 10**20 * (1 if a >= 0 else -1), b % 10**20) for a, b in pairs]
    assert std.run_batch("long_mul", products).values == [a * b for a, b in products]
    assert std.run("long_sub", 4406, 81273) == -76867


def test_minus_zero_is_zero(std):
    minus_zero = [1, 0, 0]  # a tape may be given as its cells
    assert std.run("long_cmp", minus_zero, 0) == 1
    assert std.run("long_add", minus_zero, 0) == 0
    assert std.run_batch("long_add", [[minus_zero, [1, 0]]]).values == [0]
    assert std.run("long_mul", -5, 0) == 0 and std.run("long_sub", 5, 5) == 0


def test_gcd_of_numbers_of_any_length(std):
    r = random.Random("gcd")
    pairs = [(signed(r, 12), signed(r, 12)) for _ in range(100)]
    common = [(g * r.randrange(1, 10**6), g * r.randrange(1, 10**6)) for g in (r.randrange(1, 10**6) for _ in range(50))]
    pairs += common + [(0, 0), (0, 12), (2000, 3000), (-12, 18), (2**30, 2**20 * 3)]
    result = std.run_batch("long_gcd", pairs, max_steps=1_000_000)
    assert result.values == [math.gcd(a, b) for a, b in pairs]


def test_lists_of_numbers_against_python(std):
    r = random.Random("numbers")
    lists = [[signed(r, 6) for _ in range(r.randrange(0, 13))] for _ in range(200)]  # in, out and order fit V = 256
    lists += [[], [55], [-3, 1200, 5], [0, 0, -0], [-999999, 999999]]
    assert std.run_batch("sort_numbers", [(xs,) for xs in lists], max_steps=10**6).values == [sorted(xs) for xs in lists]
    assert std.run_batch("sum_numbers", [(xs,) for xs in lists]).values == [sum(xs) for xs in lists]
    nonempty = [xs for xs in lists if xs]
    assert std.run_batch("max_number", [(xs,) for xs in nonempty]).values == [max(xs) for xs in nonempty]
    assert std.run_batch("min_number", [(xs,) for xs in nonempty]).values == [min(xs) for xs in nonempty]


def test_an_empty_list_has_no_maximum(std):
    result = std.run_batch("max_number", [([],)])
    assert result.values == [None] and result.status == ["bad_result"]
    with pytest.raises(MachineError, match="min_number returned no valid tape"):
        std.run("min_number", [])


def test_call_problem_names_what_does_not_fit(std):
    assert std.call_problem("long_add", [5, -7]) is None
    assert std.call_problem("long_mul", [int("7" * 130), int("9" * 130)]) == \
        "arguments of long_mul need 265 memory cells, memory_size is 255"
    assert std.call_problem("gcd", [2000, 3]) == "argument a of gcd: 2000 is outside [0, 256)"
    assert std.call_problem("insertion_sort", [[5, 1200]]) == "argument xs of insertion_sort: 1200 is outside [0, 256)"
    assert std.call_problem("long_add", [5]) == "long_add takes 2 arguments (a: tape, b: tape), got 1"
    assert std.call_problem("sort_numbers", [5]) == "argument xs of sort_numbers must be a list of ints"
    with pytest.raises(ValueError, match="265 memory cells"):
        std.run("long_mul", int("7" * 130), int("9" * 130))


def test_factorial_tape_against_math_factorial(std):
    ns = list(range(26))
    result = std.run_batch("factorial_tape", [(n,) for n in ns])
    assert result.values == [math.factorial(n) for n in ns]
    assert std.run("factorial_tape", 25) == math.factorial(25)


def python_fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def test_fib_against_python_fib(std):
    ns = [0, 1, 2, 3, 10, 30, 50, 77, 100]
    result = std.run_batch("fib_tape", [(n,) for n in ns])
    assert result.status == ["ok"] * len(ns)
    assert result.values == [python_fib(n) for n in ns]
    assert result.values[-1] == 354224848179261915075
    iterative = std.run_batch("fib", [(30,)])  # milliseconds, where the recursive one takes 2.7 million steps
    assert iterative.values == [832040 % V] and iterative.steps[0] < 300


def test_power_tape_against_big_ints(std):
    cases = [(2, 20), (25, 20), (7, 13), (10, 5), (0, 0), (0, 3), (1, 9)]
    assert std.run_batch("power_tape", cases).values == [a**n for a, n in cases]


def test_sum_list_tape_small_cases_at_v256(std):
    cases = [[], [0], [7], [5, 5], [255] * 64, [255] * 128, [9, 99, 1], [100, 0, 0]]
    result = std.run_batch("sum_list_tape", [(xs,) for xs in cases])
    assert result.status == ["ok"] * len(cases)
    assert result.values == [sum(xs) for xs in cases]


@pytest.fixture(scope="module")
def std1024():
    """The standard library at V = 1024, the value size of the shipped model (every number below 1000 is one value)."""
    from modeling_nclama import Library

    return standard_library(value_size=1024)


def test_sum_list_tape_at_v1024_against_python_sum(std1024):
    r = random.Random("sum_list_tape-1024")
    lists = [[r.randrange(1000) for _ in range(64 if r.random() < 0.1 else r.randrange(65))] for _ in range(N)]
    lists += [[999] * 64, [], [0] * 64, [1000, 1023]]
    result = std1024.run_batch("sum_list_tape", [(xs,) for xs in lists])
    assert result.status == ["ok"] * len(lists)
    assert result.values == [sum(xs) for xs in lists]


def test_the_shipped_value_size_takes_numbers_of_the_evaluation_lengths(std1024):
    """At V = 1024: 40 x 40-digit products, 64-item sorts of 6-digit numbers, 100-digit gcds."""
    r = random.Random("1024")
    xs = [signed(r, 6) for _ in range(64)]
    a, b = int("7" * 40), -int("9" * 40)
    assert std1024.run("long_mul", a, b) == a * b
    assert std1024.run("sort_numbers", xs, max_steps=10**6) == sorted(xs)
    assert std1024.run("sum_numbers", xs) == sum(xs)
    x, y = 3**200 % 10**100, 2**300 % 10**100
    assert std1024.run("long_gcd", x * 6, y * 6, max_steps=10**7) == math.gcd(x * 6, y * 6)


# ---------------------------------------------------------------------- soft mode agrees with hard mode
SOFT_CASES = {
    "gcd": [(12, 18), (7, 0)],
    "factorial": [(5,), (0,)],
    "power": [(3, 5), (2, 9)],
    "fib": [(5,), (1,)],
    "fib_recursive": [(5,), (1,)],
    "isqrt": [(17,), (0,)],
    "insertion_sort": [([3, 1, 2],), ([],)],
    "reverse": [([1, 2, 3],), ([],)],
    "sum_list": [([200, 100, 7],), ([],)],
    "max_list": [([4, 9, 2],), ([],)],
    "count": [([1, 2, 1], 1), ([], 3)],
    "index_of": [([1, 2, 3], 3), ([5, 6], 7)],
    "is_zero": [([1, 0, 0],), ([0, 3],)],
    "zero_unsigned": [([1, 0],), ([1, 4],)],
    "abs_cmp": [([0, 1, 2], [1, 2, 1]), ([0, 5], [1, 5, 0])],
    "abs_add": [([0, 9, 9], [1, 1]), ([0, 1, 2], [0, 3, 4, 5])],
    "abs_sub": [([0, 0, 1], [1, 1]), ([0, 3, 2, 1], [0, 1, 1])],
    "signed_add": [([0, 9, 9], 1, [1, 1], 0), ([0, 5], 0, [0, 5], 1)],
    "long_add": [(99, -1), (-21, 543)],
    "long_sub": [(10, 1), (4, 17)],
    "long_mul": [(-99, 99), (12, 3)],
    "long_cmp": [(-21, 12), (5, 5)],
    "long_gcd": [(12, 18), (0, 7)],
    "halve": [([0, 3, 1],)],
    "sub_into": [([0, 3, 1], [0, 4])],
    "record_cmp": [([1, 0, 5, 1, 3], 1, 3)],
    "sort_numbers": [([5, -3, 1],), ([],)],
    "permute_records": [([1, 0, 5, 1, 3, 0, 0], [5, 1, 3], 2)],
    "extreme_number": [([1, 0, 5, 1, 3], 2)],
    "max_number": [([5, -3],)],
    "min_number": [([5, -3],)],
    "sum_numbers": [([5, -3, 12],), ([],)],
    "add_record": [([0, 9, 0, 0], [1, 0, 5], 1)],
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
        expected = call_native(std, name, args)
        assert soft == hard == (expected % V if name in RING else expected), (name, args)
