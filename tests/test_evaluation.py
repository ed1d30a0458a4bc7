"""Evaluation: the exact-match rule, the `evaluate` metric module (offline), evaluate_model on real and test-double
models, the results files, and `nclama eval`."""
import json
import re
import socket
from pathlib import Path

import pytest
import torch

from modeling_nclama import evaluation, tasks
from modeling_nclama.cli import main
from modeling_nclama.evaluation import answer_text, evaluate_model, exact_match, format_table, write_results
from modeling_nclama.tokenization import default_tokenizer

from test_tasks import reference

pytestmark = pytest.mark.usefixtures("one_thread")

METRIC = Path(__file__).resolve().parents[1] / "hub_assets" / "metrics" / "nclama_exact_match"

CASES = [  # prediction, reference, right?
    ("85679", "85679", True),
    (" 85679", "85679", True),
    ("85679\nWhat is 1 plus 2? 3", "85679", True),
    ("  [1, 3, 5, 9]  \n\n", "[1, 3, 5, 9]", True),
    ("no<|end_of_text|>yes", "no", True),
    ("9</s>", "9", True),
    ("\n85679", "85679", False),  # the answer ends at the first newline: here it is empty
    ("8567", "85679", False),
    ("85679 ", "85679\n", True),
    ("[1,3,5,9]", "[1, 3, 5, 9]", False),
    ("Yes", "yes", False),
    ("", "0", False),
]


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def test_answer_text():
    assert answer_text(" 1 3 5 9\nsort: 2 1 -> 1 2") == "1 3 5 9"
    assert answer_text("[0.1 0.2]<|eot_id|>") == "[0.1 0.2]"


def test_exact_match_rule():
    predictions, references, right = zip(*CASES)
    assert exact_match(predictions, references) == sum(right) / len(CASES)
    for prediction, ref, is_right in CASES:
        assert exact_match([prediction], [ref]) == float(is_right), (prediction, ref)
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        exact_match(["1", "2"], ["1"])


def test_the_evaluate_metric_loads_offline_and_agrees(monkeypatch):
    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)

    def no_network(*args):
        raise OSError("the network was used")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    metric = evaluate.load(str(METRIC))
    predictions, references, _ = zip(*CASES)
    result = metric.compute(predictions=list(predictions), references=list(references))
    assert result == {"exact_match": exact_match(predictions, references)}
    assert result["exact_match"] == pytest.approx(7 / 12)
    for prediction, ref, _ in CASES:
        expected = {"exact_match": exact_match([prediction], [ref])}
        assert metric.compute(predictions=[prediction], references=[ref]) == expected
    assert (METRIC / "README.md").is_file()
    source = (METRIC / "nclama_exact_match.py").read_text()
    assert "modeling_nclama" not in re.sub(r'""".*?"""', "", source, flags=re.S)  # self-contained


class OracleLM(torch.nn.Module):
    """A test double of a causal LM: generate() reads each prompt's text and writes the answer that the test's own
    reference (test_tasks.reference, which parses the prompt through its template) computes. ``wrong`` answers
    "no" to everything instead."""

    def __init__(self, tokenizer, wrong: bool = False):
        super().__init__()
        self.tokenizer, self.wrong, self.prompts = tokenizer, wrong, []

    @property
    def device(self):
        return torch.device("cpu")

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, eos_token_id, **kwargs):
        assert kwargs["do_sample"] is False and not self.training
        assert (attention_mask[:, -1] == 1).all()  # left padding: every prompt ends at the last column
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            prompt = self.tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
            self.prompts.append(prompt)
            separator = "" if prompt.endswith(("=", "\n")) else " "
            answer = "no" if self.wrong else _oracle(prompt)
            new = self.tokenizer(separator + answer + "\nmore", add_special_tokens=False)["input_ids"]
            rows.append((new + [eos_token_id])[:max_new_tokens])
        width = max(map(len, rows))
        new = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new], dim=1)


def _oracle(prompt):
    match = re.fullmatch(r"insertion_sort:\nkey: \[(.*)\]\npred:\n", prompt)
    if match:
        return "[" + " ".join(sorted(match.group(1).split(" "), key=float)) + "]"
    return reference(prompt)[1]


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_a_model_that_answers_right_scores_one(tok, split):
    model = OracleLM(tok)
    chosen = ["add", "sort", "less_than", "fib"] + ([tasks.CLRS_TASK] if split == "train" else [])
    rows = evaluate_model(model, tok, tasks=chosen, lengths=[4, 8], n_per_length=5, seed=1, split=split,
                          batch_size=3, progress=False)
    assert [(r["task"], r["length"]) for r in rows] == [(t, n) for t in chosen for n in (4, 8)]
    assert all(r["exact_match"] == 1.0 and r["n"] == 5 and r["split"] == split for r in rows)
    expected = [p for t in chosen for n in (4, 8)
                for p in tasks.make_dataset([t], 5, seed=1, split=split, lengths=[n])["prompt"]]
    assert model.prompts == expected


def test_a_wrong_model_scores_what_its_answers_are_worth(tok):
    rows = evaluate_model(OracleLM(tok, wrong=True), tok, tasks=["less_than", "add"], lengths=[3], n_per_length=40,
                          seed=2, progress=False)
    answers = tasks.make_dataset(["less_than"], 40, seed=2, lengths=[3])["answer"]
    assert rows[0]["exact_match"] == answers.count("no") / 40 and 0 < rows[0]["exact_match"] < 1
    assert rows[1]["exact_match"] == 0.0


def test_a_random_llama_gets_a_row_per_task_and_length(tok, make_llama):
    model = make_llama(tok)
    model.train()
    rows = evaluate_model(model, tok, tasks=["add", "max"], lengths=[2, 3], n_per_length=3, batch_size=2,
                          progress=False)
    assert [(r["task"], r["length"], r["n"]) for r in rows] == [("add", 2, 3), ("add", 3, 3), ("max", 2, 3),
                                                                ("max", 3, 3)]
    assert all(0.0 <= r["exact_match"] <= 1.0 for r in rows)
    assert model.training  # restored
    default = evaluate_model(model, tok, tasks=["factorial"], n_per_length=1, max_new_tokens=2, progress=False)
    assert [r["length"] for r in default] == list(tasks.EVAL_LENGTHS["factorial"])


def test_bad_requests(tok):
    model = OracleLM(tok)
    with pytest.raises(ValueError, match="unknown task 'divide'"):
        evaluate_model(model, tok, tasks=["divide"], lengths=[1], n_per_length=1)
    with pytest.raises(ValueError, match="length 0 is not valid for add"):
        evaluate_model(model, tok, tasks=["add"], lengths=[0], n_per_length=1)
    with pytest.raises(ValueError, match="n_per_length must be a positive int"):
        evaluate_model(model, tok, tasks=["add"], lengths=[1], n_per_length=0)


def test_write_results(tmp_path):
    rows = [{"task": "add", "length": 5, "split": "train", "n": 4, "exact_match": 0.75},
            {"task": "add", "length": 40, "split": "train", "n": 4, "exact_match": 0.0},
            {"task": "sort", "length": 5, "split": "train", "n": 4, "exact_match": 1.0}]
    json_path, md_path = write_results(rows, tmp_path / "out")
    assert json.loads(json_path.read_text()) == {"rows": rows}
    assert json_path.name == evaluation.RESULTS_JSON == "eval_results.json"
    assert md_path.read_text().splitlines() == [
        "| task | split | length 5 | length 40 |",
        "|---|---|---:|---:|",
        "| add | train | 75.0% | 0.0% |",
        "| sort | train | 100.0% |  |",
    ]
    assert format_table(rows) + "\n" == md_path.read_text()


@pytest.fixture(scope="module")
def nclama_folder(tmp_path_factory):
    from modeling_nclama.checkpoints import init_model

    folder = tmp_path_factory.mktemp("nclama") / "tiny"
    init_model("tiny", folder)
    return folder


def test_nclama_eval_command(nclama_folder, capsys):
    assert main(["eval", str(nclama_folder), "--tasks", "add", "--lengths", "1", "--n", "2", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "| task | split | length 1 |" in out and re.search(r"\| add \| train \| \d+\.\d% \|", out)
    rows = json.loads((nclama_folder / "eval_results.json").read_text())["rows"]
    assert [(r["task"], r["length"], r["n"], r["split"]) for r in rows] == [("add", 1, 2, "train")]
    assert 0.0 <= rows[0]["exact_match"] <= 1.0
    assert (nclama_folder / "eval_results.md").read_text().strip() in out


def test_nclama_eval_writes_where_asked(nclama_folder, tmp_path, capsys):
    assert main(["eval", str(nclama_folder), "--tasks", "fib", "--lengths", "0", "1", "--n", "1",
                 "--split", "heldout", "--output-dir", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "eval_results.json").read_text())["rows"]
    assert [(r["task"], r["length"], r["split"]) for r in rows] == [("fib", 0, "heldout"), ("fib", 1, "heldout")]


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "add", "divide"], "unknown task 'divide'"),
    (["--lengths", "0"], "length 0 is not valid for add"),
    (["--tasks", "clrs_insertion_sort", "--split", "heldout"], "no held-out templates"),
])
def test_nclama_eval_errors_name_the_problem(argv, message, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "no-model"), *argv]) == 2  # checked before any model loads
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [(["--n", "0"], "must be positive, got 0"),
                                           (["--batch-size", "-2"], "must be positive, got -2"),
                                           (["--split", "test"], "invalid choice: 'test'")])
def test_nclama_eval_argument_errors(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(tmp_path), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_results_merge_by_task_split_and_length(tmp_path):
    from modeling_nclama.evaluation import write_results

    write_results([{"task": "add", "length": 5, "exact_match": 0.5}, {"task": "add", "length": 9, "exact_match": 1.0}], tmp_path)
    write_results([{"task": "add", "split": "heldout", "length": 5, "exact_match": 0.25},
                   {"task": "add", "length": 9, "exact_match": 0.75}], tmp_path, merge=True)
    rows = json.loads((tmp_path / "eval_results.json").read_text())["rows"]
    assert [(r["length"], r.get("split", "train"), r["exact_match"]) for r in rows] == [(5, "train", 0.5), (5, "heldout", 0.25), (9, "train", 0.75)]
