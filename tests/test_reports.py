"""Reports: tables and plots read from evaluation results and training logs."""
import json

import pytest

from modeling_nclama.toolchain import reports


def write_results(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval_results.json").write_text(json.dumps({"rows": rows}))
    return folder


def test_accuracy_table_and_plot(tmp_path):
    a = write_results(tmp_path / "a", [{"task": "add", "length": 5, "exact_match": 1.0}, {"task": "add", "length": 40, "exact_match": 0.99}])
    b = write_results(tmp_path / "b", [{"task": "add", "length": 5, "exact_match": 0.8}])
    results = {"nclama": reports.load_results(a), "llama": reports.load_results(b / "eval_results.json")}
    table = reports.accuracy_table(results).splitlines()
    assert table[0] == "| task | length | in training range | nclama | llama |"
    assert table[2] == "| add | 5 | yes | 1.000 | 0.800 |" and table[3] == "| add | 40 | no | 0.990 | - |"
    png = reports.plot_accuracy_by_length(results, tmp_path / "fig" / "lengths.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a run trained on other lengths than tasks.TRAINING_RANGES says so
    assert reports.accuracy_table(results, {"add": (1, 3)}).splitlines()[2] == "| add | 5 | no | 1.000 | 0.800 |"


def test_report_cli_reads_trained_lengths(tmp_path, capsys):
    from modeling_nclama.toolchain.cli import main

    a = write_results(tmp_path / "a", [{"task": "sort", "length": 8, "exact_match": 1.0}, {"task": "sort", "length": 16, "exact_match": 0.5}])
    assert main(["report", "lengths", f"m={a}", "--out", str(tmp_path / "p.png"), "--trained", "sort=2-8"]) == 0
    assert capsys.readouterr().out.splitlines()[2:4] == ["| sort | 8 | yes | 1.000 |", "| sort | 16 | no | 0.500 |"]
    with pytest.raises(SystemExit, match="TASK=LOW-HIGH"):
        main(["report", "lengths", f"m={a}", "--out", str(tmp_path / "p.png"), "--trained", "sort=8-2"])


def test_probe_history_table_and_plot(tmp_path):
    history = [{"loss": 2.0, "step": 5}, {"probe/gate": 0.5, "probe/call_accuracy": 0.75, "probe/add/gate": 0.5, "probe/add/call_accuracy": 1.0, "step": 10},
               {"probe/gate": 0.0, "probe/call_accuracy": 0.25, "step": 0}]
    (tmp_path / "train_log.json").write_text(json.dumps({"log_history": history}))
    probes = reports.probe_history(tmp_path)
    assert [p["step"] for p in probes] == [0, 10]
    assert reports.probe_table(probes).splitlines()[2:] == ["| 0 | 0.000 | 0.25 |", "| 10 | 0.500 | 0.75 |"]
    assert reports.plot_what_learns_what(probes, tmp_path / "w.png").stat().st_size > 1000


def test_bad_inputs_name_the_file(tmp_path):
    (tmp_path / "eval_results.json").write_text("{}")
    with pytest.raises(ValueError, match="not an evaluation result"):
        reports.load_results(tmp_path)
    (tmp_path / "train_log.json").write_text(json.dumps({"log_history": [{"loss": 1.0, "step": 1}]}))
    with pytest.raises(ValueError, match="logged no probes"):
        reports.probe_history(tmp_path / "train_log.json")


def test_report_command(tmp_path, capsys):
    from modeling_nclama.toolchain.cli import main

    write_results(tmp_path / "m", [{"task": "sub", "length": 3, "exact_match": 0.5}])
    assert main(["report", "lengths", f"mine={tmp_path / 'm'}", "--out", str(tmp_path / "l.png")]) == 0
    assert "| sub | 3 | yes | 0.500 |" in capsys.readouterr().out and (tmp_path / "l.png").is_file()
    with pytest.raises(SystemExit, match="expected LABEL=DIR"):
        main(["report", "lengths", str(tmp_path / "m"), "--out", str(tmp_path / "x.png")])


def test_results_are_read_per_template_split(tmp_path):
    write_results(tmp_path, [{"task": "add", "length": 5, "exact_match": 1.0}, {"task": "add", "split": "heldout", "length": 5, "exact_match": 0.5}])
    assert [r["exact_match"] for r in reports.load_results(tmp_path)] == [1.0]
    assert [r["exact_match"] for r in reports.load_results(tmp_path, "heldout")] == [0.5]
