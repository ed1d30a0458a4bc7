"""Evaluation: the exact-match rule, the `evaluate` metric module (offline), evaluate_model on real and test-double
models, the results files, and `nclama eval`."""
import json
import re
import socket
from pathlib import Path

import pytest
import torch

from modeling_nclama.toolchain import evaluation, tasks
from modeling_nclama.toolchain.cli import main
from modeling_nclama.toolchain.evaluation import answer_text, evaluate_model, exact_match, format_table, write_results
from modeling_nclama.toolchain.tokenization import default_tokenizer

from test_tasks import reference
from modeling_nclama import standard_library

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
    from modeling_nclama.toolchain.checkpoints import init_model

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


def test_nclama_eval_chat(nclama_folder, tmp_path, capsys):
    """--chat asks in the tokenizer's chat template: the rows say so, and the adversarial set's files are apart."""
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "chat-model"
    shutil.copytree(nclama_folder, folder, ignore=shutil.ignore_patterns("eval_results.*", "adversarial_*"))
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}")
    tok.save_pretrained(folder)
    assert main(["eval", str(folder), "--tasks", "add", "--lengths", "1", "--n", "2", "--chat"]) == 0
    assert main(["eval", str(folder), "--tasks", "add", "--lengths", "1", "--n", "2", "--merge"]) == 0
    rows = json.loads((folder / "eval_results.json").read_text())["rows"]
    assert sorted(r.get("form", "plain") for r in rows) == ["chat", "plain"]  # both kept, side by side
    assert "| add | train, chat |" in (folder / "eval_results.md").read_text()
    assert main(["eval", str(folder), "--adversarial", "--n", "1", "--chat"]) == 0
    chat = json.loads((folder / "adversarial_chat_results.json").read_text())
    assert chat["form"] == "chat" and chat["n"] == 8 and not (folder / "adversarial_results.json").exists()
    assert not any("assistant:" in row["prompt"] for row in chat["rows"])  # the rows keep the plain prompts
    capsys.readouterr()
    assert main(["eval", str(nclama_folder), "--tasks", "add", "--lengths", "1", "--n", "1", "--chat",
                 "--output-dir", str(tmp_path / "none")]) == 2
    assert "has no chat template: chat-form prompts" in capsys.readouterr().err and not (tmp_path / "none").exists()


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
    from modeling_nclama.toolchain.evaluation import write_results

    write_results([{"task": "add", "length": 5, "exact_match": 0.5}, {"task": "add", "length": 9, "exact_match": 1.0}], tmp_path)
    write_results([{"task": "add", "split": "heldout", "length": 5, "exact_match": 0.25},
                   {"task": "add", "length": 9, "exact_match": 0.75}], tmp_path, merge=True)
    rows = json.loads((tmp_path / "eval_results.json").read_text())["rows"]
    assert [(r["length"], r.get("split", "train"), r["exact_match"]) for r in rows] == [(5, "train", 0.5), (5, "heldout", 0.25), (9, "train", 0.75)]


class ChatOracleLM(OracleLM):
    """The oracle, asked inside a ChatML template: it reads the question from the user's turn and answers right
    after the assistant's turn starts (no separator), then closes the turn."""

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, eos_token_id, **kwargs):
        assert kwargs["do_sample"] is False and not self.training
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            text = self.tokenizer.decode(ids[mask.bool()])
            assert text.endswith("<|im_end|>\n<|im_start|>assistant\n") and text.count("<|im_start|>assistant") == 1
            question = re.search(r"<\|im_start\|>user\n(.*)<\|im_end\|>\n<\|im_start\|>assistant\n$", text, re.S).group(1)
            self.prompts.append(question)
            new = self.tokenizer(_oracle(question) + "<|im_end|>", add_special_tokens=False)["input_ids"]
            rows.append(new[:max_new_tokens])
        width = max(map(len, rows))
        new = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new], dim=1)


def test_chat_form_evaluation_asks_in_the_template():
    from test_chat import chatml_tokenizer

    chat_tok = chatml_tokenizer()
    model = ChatOracleLM(chat_tok)
    rows = evaluate_model(model, chat_tok, tasks=["add", "less_than", "sort"], lengths=[3], n_per_length=4, seed=1,
                          split="heldout", batch_size=3, progress=False, chat=True)
    assert all(r["exact_match"] == 1.0 and r["form"] == "chat" and r["split"] == "heldout" for r in rows)
    assert model.prompts == [p for t in ("add", "less_than", "sort")
                             for p in tasks.make_dataset([t], 4, seed=1, split="heldout", lengths=[3])["prompt"]]
    plain = [{"task": "add", "length": 3, "split": "heldout", "n": 4, "exact_match": 0.5}]
    assert format_table(plain + rows[:1]).splitlines()[2:] == ["| add | heldout | 50.0% |", "| add | heldout, chat | 100.0% |"]
    assert answer_text("85679<|im_end|>") == "85679"


def test_chat_rows_merge_beside_plain_ones(tmp_path):
    write_results([{"task": "add", "length": 5, "split": "train", "exact_match": 0.5}], tmp_path)
    write_results([{"task": "add", "length": 5, "split": "train", "form": "chat", "exact_match": 1.0}], tmp_path, merge=True)
    write_results([{"task": "add", "length": 5, "split": "train", "form": "chat", "exact_match": 0.75}], tmp_path, merge=True)
    rows = json.loads((tmp_path / "eval_results.json").read_text())["rows"]
    assert [(r.get("form", "plain"), r["exact_match"]) for r in rows] == [("plain", 0.5), ("chat", 0.75)]


# ---------------------------------------------------------------------------------------------------- adversarial
from modeling_nclama.toolchain.adversarial import adversarial_rows  # noqa: E402
from modeling_nclama.toolchain.evaluation import evaluate_adversarial, format_adversarial, write_adversarial_results  # noqa: E402


class TraceStub(torch.nn.Module):
    """A test double of an NCLlama: generate_with_trace writes the scripted text of each prompt, with one trace row
    per generated token whose gate and calls the script gives (the last gate repeats)."""

    def __init__(self, tokenizer, script):
        super().__init__()
        self.tokenizer, self.script, self.calls = tokenizer, script, []

    @property
    def device(self):
        return torch.device("cpu")

    def generate_with_trace(self, input_ids, max_new_tokens, eos_token_id, **kwargs):
        assert input_ids.shape[0] == 1 and kwargs["do_sample"] is False and not self.training
        assert kwargs["stopping_criteria"] is not None
        prompt = self.tokenizer.decode(input_ids[0], skip_special_tokens=True)
        self.calls.append((prompt, max_new_tokens))
        text, gates, calls, reason = self.script[prompt]
        new = (self.tokenizer(text, add_special_tokens=False)["input_ids"] + [eos_token_id])[:max_new_tokens]
        trace = []
        for i, token in enumerate(new):
            gate = gates[min(i, len(gates) - 1)]
            ok = [(p, q) for p, q, *status in calls if not status]
            row = {"position": input_ids.shape[1] + i, "token": token, "gate": gate,
                   "library_weight": gate * sum(q for _, q in ok),
                   "calls": [{"program": p, "probability": q, "status": status[0] if status else "ok",
                              "result": None if status else 1} for p, q, *status in calls]}
            if reason:
                row["no_call_reason"] = reason
            trace.append(row)
        return torch.cat([input_ids, torch.tensor([new])], dim=1), trace


ADDER = [("long_add", 0.2), ("long_sub", 0.8)]
FAILED = [("max_number", 0.98, "bad_result")]


def _rows():
    return [  # prompt, answer, case, computable, task
        {"prompt": "4406-81273=", "answer": "-76867", "case": "negative_results", "computable": True, "task": "sub"},
        {"prompt": "What is -5 plus 12?", "answer": "7", "case": "negative_operands", "computable": True, "task": "add"},
        {"prompt": "What is -6 plus 12?", "answer": "6", "case": "negative_operands", "computable": True, "task": "add"},
        {"prompt": "What is -7 plus 12?", "answer": "5", "case": "negative_operands", "computable": True, "task": "add",
         "wording": "heldout"},
        {"prompt": "sorted([])=", "answer": "[]", "case": "empty_lists", "computable": True, "task": "sort"},
        {"prompt": "max([])=", "answer": None, "case": "empty_lists", "computable": False, "task": "max"},
        {"prompt": "min([])=", "answer": None, "case": "empty_lists", "computable": False, "task": "min"},
        {"prompt": "What is the largest number in []?", "answer": None, "case": "empty_lists", "computable": False,
         "task": "max"},
        {"prompt": "The meeting is at 10 in room 204.", "answer": None, "case": "nothing_to_compute",
         "computable": False, "task": None},
        {"prompt": "In 1969, 3 astronauts flew to the moon.", "answer": None, "case": "nothing_to_compute",
         "computable": False, "task": None},
    ]


SCRIPT = {  # prompt: generated text, gates per token, calls at every token, no_call_reason
    "4406-81273=": ("-76867\n", [0.9], ADDER, None),                   # right, gate open
    "What is -5 plus 12?": (" 17\n", [0.1, 0.7], ADDER, None),          # wrong, gate open at its second token
    "What is -6 plus 12?": (" 18\n", [0.95], [], "no library program takes these operands"),  # wrong, no call
    "What is -7 plus 12?": (" 4\nmore", [0.49], ADDER, None),           # wrong, gate below 0.5
    "sorted([])=": ("[]\n", [0.0], [], None),                           # right, gate closed
    "max([])=": ("0\n", [0.8], [("max_number", 0.9)], None),            # an answer to nothing, gate open
    "min([])=": ("\n", [0.99], [("min_number", 0.9)], None),            # no answer: right to write nothing
    "What is the largest number in []?": (" 0\n", [0.99], FAILED, "the library could not answer"),  # the LM's
    "The meeting is at 10 in room 204.": (" 214\n", [0.2], ADDER, None),  # an answer, gate closed
    "In 1969, 3 astronauts flew to the moon.": (" They landed.\n", [0.6], ADDER, None),  # words, gate open
}


def test_adversarial_counts_exactly(tok):
    model = TraceStub(tok, SCRIPT)
    model.train()
    result = evaluate_adversarial(model, tok, _rows(), progress=False)
    assert model.training  # restored
    assert result["traced"] and result["n"] == 10
    assert result["cases"] == {
        "negative_results": {"n": 1, "computable": 1, "exact": 1, "exact_match": 1.0, "answered": 0,
                             "gate_open": 1, "wrong_with_gate_open": 0},
        "negative_operands": {"n": 3, "computable": 3, "exact": 0, "exact_match": 0.0, "answered": 0,
                              "gate_open": 1, "wrong_with_gate_open": 1},
        "empty_lists": {"n": 4, "computable": 1, "exact": 1, "exact_match": 1.0, "answered": 2,
                        "gate_open": 2, "wrong_with_gate_open": 1},
        "nothing_to_compute": {"n": 2, "computable": 0, "exact": 0, "exact_match": None, "answered": 2,
                               "gate_open": 1, "wrong_with_gate_open": 1},
    }
    assert result["computable_exact_match"] == 2 / 5 and result["wrong_with_gate_open"] == 3
    assert (result["training_wordings_exact_match"], result["training_wordings_computable"]) == (2 / 4, 4)
    rows = {row["prompt"]: row for row in result["rows"]}
    assert [row["prompt"] for row in result["rows"]] == [row["prompt"] for row in _rows()]
    assert rows["What is -5 plus 12?"] == {
        "prompt": "What is -5 plus 12?", "case": "negative_operands", "task": "add", "computable": True,
        "wording": None, "expected": "7", "generated": "17", "exact": False, "gate_open": True, "wrong_with_gate_open": True,
        "max_gate": 0.7, "programs": ["long_sub"] * len(tok(" 17\n", add_special_tokens=False)["input_ids"]),
        "no_call_reason": None}  # the top call at every token from the second on (" 17\n" and EOS)
    assert rows["What is -6 plus 12?"]["no_call_reason"] == "no library program takes these operands"
    assert not rows["What is -6 plus 12?"]["gate_open"] and rows["What is -7 plus 12?"]["generated"] == "4"
    assert rows["max([])="]["exact"] is None and rows["max([])="]["wrong_with_gate_open"]
    assert rows["min([])="]["generated"] == "" and not rows["min([])="]["wrong_with_gate_open"]
    assert rows["In 1969, 3 astronauts flew to the moon."]["wrong_with_gate_open"]
    # the gate open, but the call failed: the language model's answer, said so, is not the library's
    failed = rows["What is the largest number in []?"]
    assert failed["generated"] == "0" and failed["max_gate"] == 0.99 and not failed["gate_open"]
    assert failed["no_call_reason"] == "the library could not answer"
    # the budget: what the right answer needs (separator, answer, stop, +1), 16 tokens where there is nothing
    budgets = dict(model.calls)
    assert budgets["max([])="] == evaluation.NOTHING_BUDGET
    assert budgets["4406-81273="] == len(tok("-76867", add_special_tokens=False)["input_ids"]) + 2
    short = TraceStub(tok, SCRIPT)
    assert evaluate_adversarial(short, tok, _rows()[:2], max_new_tokens=3, progress=False)["n"] == 2
    assert [budget for _, budget in short.calls] == [3, 3]  # max_new_tokens overrides the budget
    with pytest.raises(ValueError, match="no adversarial rows"):
        evaluate_adversarial(model, tok, [], progress=False)


def test_adversarial_files(tok, tmp_path):
    result = evaluate_adversarial(TraceStub(tok, SCRIPT), tok, _rows(), progress=False)
    json_path, md_path = write_adversarial_results(result, tmp_path / "out")
    assert (json_path.name, md_path.name) == ("adversarial_results.json", "adversarial_results.md")
    assert json.loads(json_path.read_text()) == result
    md = md_path.read_text()
    assert md == format_adversarial(result) + "\n"
    assert "| negative_operands | 3 | 3 | 0.0% | 0 | 1 | 1 |" in md
    assert "| nothing_to_compute | 2 | 0 |  | 2 | 1 | 1 |" in md
    assert "| all | 10 | 5 | 40.0% | 4 | 5 | 3 |" in md
    assert "## empty_lists" in md and "| max([])= |  | 0 |  | yes | 0.80 | max_number |" in md


class ScriptLM(torch.nn.Module):
    """A plain causal LM double (no trace): generate() writes each prompt's scripted answer, in batches."""

    def __init__(self, tokenizer, answers):
        super().__init__()
        self.tokenizer, self.answers, self.batches = tokenizer, answers, []

    @property
    def device(self):
        return torch.device("cpu")

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, eos_token_id, **kwargs):
        self.batches.append(len(input_ids))
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            prompt = self.tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
            rows.append((self.tokenizer(self.answers[prompt] + "\n", add_special_tokens=False)["input_ids"]
                         + [eos_token_id])[:max_new_tokens])
        width = max(map(len, rows))
        return torch.cat([input_ids, torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows])], dim=1)


def test_adversarial_on_a_model_without_trace(tok):
    rows = adversarial_rows(n_per_case=3)
    answers = {row["prompt"]: (" " + row["answer"] if row["computable"] else " 12") for row in rows}
    model = ScriptLM(tok, answers)
    result = evaluate_adversarial(model, tok, rows, progress=False, batch_size=5)
    assert not result["traced"] and model.batches == [5, 5, 5, 5, 4]
    assert result["computable_exact_match"] == 1.0 and result["wrong_with_gate_open"] == 0
    assert result["cases"]["nothing_to_compute"] == {"n": 3, "computable": 0, "exact": 0, "exact_match": None,
                                                     "answered": 3, "gate_open": 0, "wrong_with_gate_open": 0}
    assert all(row["max_gate"] is None and row["programs"] == [] for row in result["rows"])
    assert "(the model has no trace: no gate was read)" in format_adversarial(result)


def test_nclama_eval_adversarial_on_a_tiny_nclama(nclama_folder, tmp_path, capsys):
    assert main(["eval", str(nclama_folder), "--adversarial", "--n", "1", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| case | n | computable | exact match |" in out and "| two_questions | 1 | 1 |" in out
    result = json.loads((tmp_path / "adversarial_results.json").read_text())
    assert result["traced"] and result["n"] == 8
    assert {case: c["n"] for case, c in result["cases"].items()} == {case: 1 for case in
                                                                     ("negative_operands", "negative_results",
                                                                      "large_list_items", "one_item_lists",
                                                                      "empty_lists", "answer_ends",
                                                                      "nothing_to_compute", "two_questions")}
    first = adversarial_rows(n_per_case=1)
    assert [r["prompt"] for r in result["rows"]] == [r["prompt"] for r in first]
    assert all(isinstance(r["max_gate"], float) for r in result["rows"] if r["generated"] or r["max_gate"] is not None)
    counted = sum(r["wrong_with_gate_open"] for r in result["rows"])
    assert result["wrong_with_gate_open"] == counted
    assert (tmp_path / "adversarial_results.md").read_text().startswith("| case | n |")


def test_nclama_eval_adversarial_file_errors(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "no-model"), "--adversarial", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    small = tmp_path / "small.jsonl"
    small.write_text('{"prompt": "1+1="}\n')
    assert main(["eval", str(tmp_path / "no-model"), "--adversarial", str(small)]) == 2  # before any model loads
    assert "a row needs answer, case, computable" in capsys.readouterr().err


def test_against_the_base_on_prose(tmp_path, make_llama, capsys):
    """A conversion with the gate closed is its base on prose (every continuation identical, the same perplexity);
    a model that differs is found, prompt by prompt."""
    from modeling_nclama.toolchain.evaluation import evaluate_against_base, load_prose
    from modeling_nclama.modeling_nclama import NCLlamaForCausalLM
    from modeling_nclama.toolchain.tokenization import default_tokenizer, reader_tokens

    tok = default_tokenizer()
    llama = make_llama(tok)
    llama.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    model = NCLlamaForCausalLM.from_llama(tmp_path / "base", standard_library(64), reader_tokens=reader_tokens(tok),
                                          nc_programs=["long_add"])
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    prose = load_prose()
    assert len(prose["prompts"]) + len(prose["chat"]) >= 50
    assert not any(ch.isdigit() for ch in prose["passage"] + "".join(prose["prompts"] + prose["chat"]))
    small = {**prose, "prompts": prose["prompts"][:5]}
    result = evaluate_against_base(model, llama, tok, prose=small, max_new_tokens=4, batch_size=3, progress=False)
    assert (result["prompts"], result["identical"], result["differing"]) == (5, 5, [])  # no chat template here
    assert result["perplexity"]["ratio"] == pytest.approx(1.0, abs=1e-6) and result["perplexity"]["base"] > 1.0
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(-3.0)  # another network
    result = evaluate_against_base(model, llama, tok, prose=small, max_new_tokens=4, progress=False)
    assert result["identical"] < 5 and result["differing"][0]["prompt"] in small["prompts"]
    assert result["perplexity"]["ratio"] != pytest.approx(1.0, abs=1e-4)
    assert main(["eval", str(tmp_path / "model"), "--against-base", str(tmp_path / "base"), "--output-dir",
                 str(tmp_path / "out")]) == 0
    written = json.loads((tmp_path / "out" / "base_results.json").read_text())
    assert written["prompts"] == len(prose["prompts"]) == written["identical"]
    n = len(prose["prompts"])
    assert f"identical to the base's: {n} of {n}" in capsys.readouterr().out
