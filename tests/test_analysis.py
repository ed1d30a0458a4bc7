"""The differentiability experiments: gradients through recursive fib, repair of a corrupted program, and training
curves through recursive fib at increasing depth."""
import json
import math

import pytest

from modeling_nclama.toolchain.analysis import (
    fibonacci_gradients,
    fibonacci_training_curves,
    format_repair_report,
    format_table,
    format_training_table,
    plot_fibonacci_gradients,
    repair_program,
    stdlib_function_source,
)
from modeling_nclama.toolchain.cli import main


@pytest.fixture(scope="module")
def fib_rows():
    return fibonacci_gradients(max_depth=4, value_size=32, sharpness=16.0)


def test_stdlib_function_source():
    src = stdlib_function_source("fib_recursive")
    assert src.startswith("def fib_recursive(n):") and "fib_recursive(n - 1) + fib_recursive(n - 2)" in src
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


@pytest.fixture(scope="module")
def fib_training():
    return fibonacci_training_curves(max_depth=3, steps=8, progress=False)


def test_fib_training_repairs_at_depth_2_and_depth_costs(fib_training):
    assert fib_training["original_instruction"].endswith("add x0, r1, x0")
    assert fib_training["corrupted_instruction"].endswith("add x0, r1, r1")
    assert fib_training["corrupted_hard_accuracy_held_out"] < 0.5  # 2 fib(n-1) is right only for n < 2
    runs = {(r["program"], r["depth"]): r for r in fib_training["runs"]}
    assert sorted(runs) == [("exact", 2), ("exact", 3), ("softened", 2), ("softened", 3)]
    for r in runs.values():
        assert len(r["loss"]) == len(r["p_correct"]) == len(r["hard_accuracy"]) == 9 and len(r["grad_norm"]) == 8
        assert all(math.isfinite(x) for x in r["loss"] + r["grad_norm"])
        assert r["hard_accuracy"][0] < 1.0  # the corrupted start is wrong on the training examples
    assert [runs["exact", n]["hard_steps"] for n in (2, 3)] == [17, 30]
    for program in ("exact", "softened"):
        shallow, deep = runs[program, 2], runs[program, 3]
        assert shallow["loss"][-1] < shallow["loss"][0] / 10 and shallow["p_correct"][-1] > 0.9
        assert shallow["hard_accuracy"][-1] == 1.0 and shallow["updates_to_half"] is not None
        assert deep["loss"][0] > shallow["loss"][0] and deep["p_correct"][-1] < shallow["p_correct"][-1]
    # the frozen softened rest leaks: less probability on the answer than the exact rest after the same updates
    assert runs["softened", 3]["p_correct"][-1] < runs["exact", 3]["p_correct"][-1]


def test_format_training_table(fib_training):
    table = format_training_table(fib_training).splitlines()
    assert table[0].startswith("| program | depth n | machine steps |") and len(table) == 2 + 4
    assert all(line.count("|") == table[0].count("|") for line in table)


def test_cli_fib_training_writes_json_and_png(tmp_path, capsys):
    assert main(["analyze", "fib-training", "--max-depth", "2", "--steps", "3", "--out", str(tmp_path)]) == 0
    assert "| exact | 2 | 17 |" in capsys.readouterr().out
    report = json.loads((tmp_path / "fib_training.json").read_text())
    assert [(r["program"], r["depth"], len(r["loss"])) for r in report["runs"]] == [("exact", 2, 4), ("softened", 2, 4)]
    assert report["settings"]["steps"] == 3
    assert report["settings"]["corruption"] == {"line": 9, "field": "b", "value": 1}
    data = (tmp_path / "fib_training.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_cli_fib_training_rejects_bad_arguments(tmp_path, capsys):
    assert main(["analyze", "fib-training", "--max-depth", "1", "--out", str(tmp_path)]) == 2
    assert "min_depth <= max_depth" in capsys.readouterr().err
    assert main(["analyze", "fib-training", "--max-depth", "13", "--out", str(tmp_path)]) == 2
    assert "above held_out_max 12" in capsys.readouterr().err
    assert main(["analyze", "fib", "--steps", "3", "--out", str(tmp_path)]) == 2
    assert "--steps is for 'analyze fib-training'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["analyze", "fib-training", "--steps", "0"])
    assert "must be positive" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written on a bad request


def test_cli_analysis_writes_into_out_unless_asked_to_update_the_shipped_figure(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # both defaults are relative to where the command runs
    assert main(["analyze", "fib", "--max-depth", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "figures").iterdir()) == ["fib_gradients.json", "fib_gradients.png"]
    assert not (tmp_path / "hub_assets").exists()
    assert main(["analyze", "fib", "--max-depth", "1", "--update-shipped"]) == 0
    assert sorted(p.name for p in (tmp_path / "hub_assets" / "figures").iterdir()) == ["fib_gradients.json", "fib_gradients.png"]
    with pytest.raises(SystemExit):
        main(["analyze", "fib", "--out", "elsewhere", "--update-shipped"])
    assert "not allowed with argument" in capsys.readouterr().err
