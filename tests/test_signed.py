"""Numbers as users write them: the standard library's signed programs on Python ints of any sign and length,
against Python's own arithmetic, at V = 256 and V = 1024 (hard mode, hypothesis-drawn values, one batch per draw),
soft mode equal to hard mode on small calls, step budgets, and the boundary (kinds, encoding, call_problem)."""
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeling_nclama import Library, MachineError, compile_library, standard_library
from modeling_nclama.toolchain.compiler import CompileError
from modeling_nclama.toolchain.assembly import parse_assembly

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def libs(std):
    return {256: std, 1024: standard_library(1024)}


SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def ints(max_digits):
    """Signed ints of up to max_digits digits, with the edges drawn often."""
    bound = 10**max_digits - 1
    return st.one_of(st.integers(-bound, bound), st.sampled_from([0, 1, -1, 9, -9, 10, -10, bound, -bound]))


def minus_zero(width):
    return [1] + [0] * width  # "-0", given as its cells


def batch_of(strategy, size=24):
    return st.lists(strategy, min_size=1, max_size=size)


def cmp(a, b):
    return 2 if a > b else 0 if a < b else 1


@pytest.mark.parametrize("V", [256, 1024])
@SETTINGS
@given(pairs=batch_of(st.tuples(ints(30), ints(30))))
def test_add_sub_cmp_like_python(libs, V, pairs):
    lib = libs[V]
    pairs = pairs + [(a, -a) for a, _ in pairs[:4]] + [(a, a) for a, _ in pairs[:2]]  # equal magnitudes
    for name, op in [("long_add", lambda a, b: a + b), ("long_sub", lambda a, b: a - b), ("long_cmp", cmp)]:
        result = lib.run_batch(name, pairs)
        assert result.status == ["ok"] * len(pairs)
        assert result.values == [op(a, b) for a, b in pairs], name


@pytest.mark.parametrize("V", [256, 1024])
@SETTINGS
@given(pairs=batch_of(st.tuples(ints(15), ints(15))))
def test_mul_like_python(libs, V, pairs):
    assert libs[V].run_batch("long_mul", pairs).values == [a * b for a, b in pairs]


@pytest.mark.parametrize("V", [256, 1024])
@SETTINGS
@given(pairs=batch_of(st.tuples(ints(12), ints(12)), size=12), factor=st.integers(1, 999))
def test_gcd_like_python(libs, V, pairs, factor):
    pairs = pairs + [(a * factor, b * factor) for a, b in pairs[:3]]  # a common factor
    result = libs[V].run_batch("long_gcd", pairs)
    assert result.values == [math.gcd(a, b) for a, b in pairs]


@pytest.mark.parametrize("V", [256, 1024])
def test_minus_zero_and_zero(libs, V):
    lib = libs[V]
    for width in (1, 3):
        mz = minus_zero(width)
        assert lib.run("long_cmp", mz, 0) == 1 and lib.run("long_cmp", 0, mz) == 1
        assert lib.run("long_cmp", mz, -1) == 2 and lib.run("long_cmp", mz, 1) == 0
        assert lib.run("long_add", mz, mz) == 0 and lib.run("long_sub", mz, 7) == -7
        assert lib.run("long_mul", mz, -5) == 0 and lib.run("long_gcd", mz, -12) == 12
    # results never write "-0": the sign cell of a zero result is 0
    for name, args in [("long_add", (-5, 5)), ("long_sub", (-5, -5)), ("long_mul", (-5, 0)), ("long_add", ([1, 0], [1, 0]))]:
        run, _ = lib._run_hard(name, [args], False, 10_000)
        pointer = run.cells[0, lib.machine.num_registers].item()
        assert run.memory[0, pointer + 1].item() == 0, (name, args)
    assert lib.run("long_gcd", 0, 0) == 0 and lib.run("long_gcd", 0, -35) == 35
    assert lib.run("long_sub", 4406, 81273) == -76867


def numbers(max_digits, max_items):
    return st.lists(ints(max_digits), min_size=0, max_size=max_items)


@pytest.mark.parametrize("V,digits,items", [(256, 4, 12), (1024, 3, 64)])
@SETTINGS
@given(data=st.data())
def test_lists_of_numbers_like_python(libs, V, digits, items, data):
    lib = libs[V]
    lists = data.draw(st.lists(numbers(digits, items), min_size=1, max_size=6))
    lists += [[], [7], [-7], [0], [5, -5, 0], [-3, -3, 3]]
    batch = [(xs,) for xs in lists]
    assert lib.run_batch("sort_numbers", batch).values == [sorted(xs) for xs in lists]
    assert lib.run_batch("sum_numbers", batch).values == [sum(xs) for xs in lists]
    for name, fn in [("max_number", max), ("min_number", min)]:
        result = lib.run_batch(name, batch)
        assert result.values == [fn(xs) if xs else None for xs in lists]
        assert result.status == ["ok" if xs else "bad_result" for xs in lists]


RAW_WRAPPERS = """


def sort_raw(xs: list) -> list:
    return sort_numbers(xs)


def sum_raw(xs: list) -> list:
    return sum_numbers(xs)


def max_raw(xs: list) -> list:
    return max_number(xs)


def min_raw(xs: list) -> list:
    return min_number(xs)
"""


def test_lists_with_minus_zero():
    """A numbers list holding "-0" (given as cells, through wrappers that take and return plain lists)."""
    from modeling_nclama.toolchain.compiler import stdlib_source

    lib = compile_library(stdlib_source() + RAW_WRAPPERS, value_size=256)
    packed = [2, 1, 0, 0, 0, 5, 0, 0, 0, 0, 1, 0, 0]  # [-0, 5, 0, -0] with two digits per item
    assert lib.run("sort_raw", packed) == [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0]  # zeros written with sign 0
    assert lib.run("sum_raw", packed)[0] == 0 and Library.from_cells("tape", lib.run("sum_raw", packed)) == 5
    assert lib.run("max_raw", packed) == [0, 5, 0]
    assert lib.run("min_raw", packed) == [0, 0, 0] and lib.run("min_raw", [1, 1, 0]) == [0, 0]
    assert lib.run("max_raw", [1, 1, 0]) == [0, 0] and lib.run("sum_raw", [1, 1, 0, 1, 0])[0] == 0
    assert lib.run("sort_raw", [3, 1, 0, 0, 0, 1, 0, 0, 1]) == [3, 1, 0, 0, 1, 0, 0, 0, 0]  # [-0, -100]


def test_empty_lists(libs):
    lib = libs[1024]
    assert lib.run("sort_numbers", []) == [] and lib.run("sum_numbers", []) == 0
    result = lib.run_batch("max_number", [([],), ([3, -4],)])
    assert result.values == [None, 3] and result.status == ["bad_result", "ok"]
    with pytest.raises(MachineError, match="max_number returned no valid tape"):
        lib.run("max_number", [])


def test_tape_results_of_the_ring_free_programs(libs):
    lib = libs[1024]
    assert lib.run("factorial_tape", 30) == math.factorial(30) and lib.run("power_tape", 99, 20) == 99**20
    assert lib.run("fib_tape", 120) == 5358359254990966640871840 and lib.run("sum_list_tape", [999] * 64) == 999 * 64
    assert lib.run("fib", 30) == 832040 % 1024 and lib.run("fib_recursive", 12) == 144


# ---------------------------------------------------------------------- step budgets (V = 1024, batch of 8)
def test_step_budgets(libs):
    import random

    lib, r = libs[1024], random.Random("steps")
    lists = [([r.randrange(-999, 1000) for _ in range(64)],) for _ in range(8)]
    steps = {name: max(lib.run_batch(name, lists).steps) for name in ("sort_numbers", "sum_numbers", "max_number", "min_number")}
    assert steps["sort_numbers"] < 13_000 and steps["sum_numbers"] < 5_000, steps
    assert steps["max_number"] < 2_000 and steps["min_number"] < 2_000, steps
    twelve = [(r.randrange(10**11, 10**12), -r.randrange(10**11, 10**12)) for _ in range(8)]
    three = [(r.randrange(100, 1000), r.randrange(100, 1000)) for _ in range(8)]
    gcd12, gcd3 = lib.run_batch("long_gcd", twelve), lib.run_batch("long_gcd", three)
    assert gcd12.values == [math.gcd(a, b) for a, b in twelve] and max(gcd12.steps) < 25_000
    assert gcd3.values == [math.gcd(a, b) for a, b in three] and max(gcd3.steps) < 2_500
    assert max(lib.run_batch("fib", [(30,), (1000 % 1024,)]).steps) < 6_000


# ---------------------------------------------------------------------- soft mode agrees with hard mode
@pytest.mark.parametrize("name,args", [
    ("long_add", (-21, 543)), ("long_sub", (4, 17)), ("long_mul", (-12, 3)), ("long_cmp", (-5, 3)),
    ("long_cmp", ([1, 0], 0)), ("long_gcd", (-12, 18)), ("sort_numbers", ([5, -3, 0],)), ("sum_numbers", ([5, -13],)),
    ("max_number", ([-5, -3],)), ("min_number", ([2, -3],)), ("fib_tape", (9,)),
])
def test_soft_equals_hard(libs, name, args):
    lib = libs[256]
    assert lib.run(name, *args, mode="soft") == lib.run(name, *args)


def test_soft_mode_reports_a_bad_result(libs):
    with pytest.raises(MachineError, match="not a valid tape"):
        libs[256].run("max_number", [], mode="soft")


# ---------------------------------------------------------------------- the boundary
def test_kinds_in_signatures_and_assembly(libs):
    lib = libs[256]
    assert lib["long_add"].params == [("a", "tape"), ("b", "tape")] and lib["long_add"].returns == "tape"
    assert lib["long_cmp"].returns == "int" and lib["sort_numbers"].params == [("xs", "numbers")]
    assert lib["sort_numbers"].returns == "numbers" and lib["max_number"].returns == "tape"
    assert lib["insertion_sort"].params == [("xs", "list")] and lib["factorial_tape"].returns == "tape"
    for name in ("long_add", "sort_numbers", "max_number", "long_cmp"):
        program = lib[name]
        assert program.assembly().splitlines()[0] == {
            "long_add": "def long_add(a: tape, b: tape) -> tape",
            "sort_numbers": "def sort_numbers(xs: numbers) -> numbers",
            "max_number": "def max_number(xs: numbers) -> tape",
            "long_cmp": "def long_cmp(a: tape, b: tape) -> int",
        }[name]
        back = parse_assembly(program.assembly(), num_registers=program.num_registers, num_args=program.num_args,
                              value_size=256)
        assert back.params == program.params and back.returns == program.returns
        assert back.assembly() == program.assembly()


def test_saved_library_keeps_the_kinds(libs, tmp_path):
    lib = libs[256]
    small = Library([lib[n] for n in ("abs_cmp", "abs_add", "abs_sub", "is_zero", "zero_unsigned", "signed_add",
                                      "long_add", "long_sub")])
    small.save(tmp_path)
    loaded = Library.load(tmp_path)
    assert loaded["long_sub"].params == [("a", "tape"), ("b", "tape")] and loaded["long_sub"].returns == "tape"
    assert loaded.run("long_sub", 4406, 81273) == -76867


def test_bad_annotation_is_a_compile_error():
    with pytest.raises(CompileError, match="type annotation 'digits'") as error:
        compile_library('def f(a, b: "digits"):\n    return a\n')
    assert (error.value.line, error.value.col) == (1, 13)  # 1-based, where the string starts
    with pytest.raises(CompileError, match="type error"):
        compile_library('def f(a: "tape") -> "tape":\n    return a[0] + 1\n')
    lib = compile_library('def f(a: "tape") -> int:\n    return len(a) - 1\n\n\ndef g(xs: "numbers") -> int:\n    return xs[0]\n')
    assert lib.run("f", -12345) == 5 and lib.run("f", 0) == 1  # digits on the machine
    assert lib.run("g", [5, -123]) == 3  # the width of the widest item


def test_encoding_of_numbers(libs):
    assert Library.to_cells("tape", -120) == [1, 0, 2, 1] and Library.to_cells("tape", 0) == [0, 0]
    assert Library.to_cells("numbers", [5, -12]) == [2, 0, 5, 0, 1, 2, 1] and Library.to_cells("numbers", []) == [1]
    assert Library.from_cells("tape", [1, 0, 2, 1, 0]) == -120 and Library.from_cells("tape", [1, 0]) == 0
    assert Library.from_cells("tape", [0]) is None and Library.from_cells("tape", [2, 1]) is None
    assert Library.from_cells("tape", [0, 10]) is None
    assert Library.from_cells("numbers", [2, 0, 5, 0, 1, 2, 1]) == [5, -12] and Library.from_cells("numbers", [1]) == []


def test_call_problem(libs):
    lib = libs[256]
    assert lib.call_problem("long_add", [5, -7]) is None and lib.call_problem("sort_numbers", [[3, -1]]) is None
    assert lib.call_problem("long_mul", [int("7" * 130), int("9" * 130)]) == \
        "arguments of long_mul need 265 memory cells, memory_size is 255"
    assert lib.call_problem("long_mul", [int("7" * 128), int("9" * 128)]) == \
        "arguments of long_mul need 261 memory cells, memory_size is 255"
    assert lib.call_problem("gcd", [2000, 3]) == "argument a of gcd: 2000 is outside [0, 256)"
    assert lib.call_problem("gcd", [-1, 3]) == "argument a of gcd: -1 is outside [0, 256)"
    assert lib.call_problem("insertion_sort", [[5, 1200]]) == "argument xs of insertion_sort: 1200 is outside [0, 256)"
    assert lib.call_problem("long_add", [5]) == "long_add takes 2 arguments (a: tape, b: tape), got 1"
    assert lib.call_problem("long_add", [5, "7"]) == "argument b of long_add must be an int (a number of any length)"
    assert lib.call_problem("sort_numbers", [5]) == "argument xs of sort_numbers must be a list of ints"
    assert lib.call_problem("gcd", [1.5, 2]) == "argument a of gcd must be an int"
    assert lib.call_problem("nope", []) == "no program 'nope'"
    with pytest.raises(ValueError, match="265 memory cells"):
        lib.run_calls([("long_mul", (int("7" * 130), int("9" * 130)))])
    with pytest.raises(TypeError, match="must be a list of ints"):
        lib.run_batch("sort_numbers", [(5,)])
