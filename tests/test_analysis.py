"""The differentiability experiments: gradients through recursive fib, and repair of a corrupted program."""
import math

import pytest

from modeling_nclama.analysis import (
    fibonacci_gradients,
    format_repair_report,
    format_table,
    plot_fibonacci_gradients,
    repair_program,
    stdlib_function_source,
)


@pytest.fixture(scope="module")
def fib_rows():
    return fibonacci_gradients(max_depth=4, value_size=32, sharpness=16.0)


def test_stdlib_function_source():
    src = stdlib_function_source("fib")
    assert src.startswith("def fib(n):") and "fib(n - 1) + fib(n - 2)" in src
    with pytest.raises(KeyError):
        stdlib_function_source("no_such_function")


def test_fibonacci_gradients_finite_nonzero_and_steps_grow(fib_rows):
    assert [r["depth"] for r in fib_rows] == [1, 2, 3, 4]
    for r in fib_rows:
        for key in ("grad_input", "grad_input_raw", "grad_program", "exact_grad_input", "loss", "p_correct"):
            assert math.isfinite(r[key]), (key, r)
        assert r["grad_input"] > 0 and r["grad_program"] > 0 and r["exact_grad_input"] > 0
        assert r["exact_p_correct"] == pytest.approx(1.0, abs=1e-9)  # exact program: soft equals hard
        assert r["saved_mb"] > 0 and r["time_s"] > 0
    hard = [r["hard_steps"] for r in fib_rows]
    soft = [r["steps"] for r in fib_rows]
    assert hard == [4, 17, 30, 56]
    assert all(a < b for a, b in zip(hard, hard[1:]))
    assert all(a < b for a, b in zip(soft, soft[1:]))
    # depth hurts: the softened program loses the answer, the exact program's input sensitivity explodes
    assert fib_rows[0]["p_correct"] > 0.99 and fib_rows[-1]["p_correct"] < 0.5
    exact = [r["exact_grad_input"] for r in fib_rows]
    assert all(a < b for a, b in zip(exact, exact[1:])) and exact[-1] > 1e6


def test_format_table(fib_rows):
    table = format_table(fib_rows).splitlines()
    assert table[0].startswith("| depth n | hard steps |") and len(table) == 2 + len(fib_rows)
    assert all(line.count("|") == table[0].count("|") for line in table)


def test_plot_is_png(fib_rows, tmp_path):
    path = plot_fibonacci_gradients(fib_rows, tmp_path / "sub" / "fib.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_repair_sum_list():
    report = repair_program()  # defaults: sum_list, line 6 add -> sub, train the corrupted field's row
    assert report["original_instruction"].endswith("add x1, x1, r0")
    assert report["corrupted_instruction"].endswith("sub x1, x1, r0")
    assert report["accuracy_before"]["train"] < 0.5 and report["accuracy_before"]["test"] < 0.5
    assert report["accuracy_after"] == {"train": 1.0, "test": 1.0}
    assert report["num_test"] == 200
    assert report["repaired_instruction"].endswith("add x1, x1, r0") and report["repaired_equals_original"]
    assert report["loss_curve"][-1] < report["loss_curve"][0]
    assert report["updates"] == len(report["loss_curve"]) < 150
    assert "held-out 1.000" in format_repair_report(report)


def test_repair_rejects_bad_arguments():
    with pytest.raises(ValueError):
        repair_program(train_rows="everything")
    with pytest.raises(ValueError):
        repair_program(name="reverse")  # returns a list
