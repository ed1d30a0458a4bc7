"""The adversarial evaluation set: its cases, its answers (recomputed by test_tasks.reference, which parses a prompt
through its template), determinism, and that the committed configuration/adversarial.jsonl is the generator's."""
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from modeling_nclama.toolchain import adversarial, tasks
from modeling_nclama.toolchain.adversarial import CASES, adversarial_rows, load_adversarial, write_adversarial

from test_tasks import parse, reference

COMMITTED = Path(__file__).resolve().parents[1] / "configuration" / "adversarial.jsonl"


@pytest.fixture(scope="module")
def rows():
    return adversarial_rows()


def by_case(rows, case):
    return [row for row in rows if row["case"] == case]


def last_question(prompt):
    """(what comes before, (task, answer)) of the longest end of ``prompt`` that a template writes."""
    starts = [0] + [m.end() for m in re.finditer(" ", prompt)]
    for start in starts:
        try:
            return prompt[:start], reference(prompt[start:])
        except AssertionError:
            continue
    raise AssertionError(f"no template writes the end of {prompt!r}")


def numbers(prompt):
    return [int(x) for x in re.findall(r"(?<![\d.])-?\d+", prompt)]


def test_the_committed_file_is_the_generators(tmp_path):
    regenerated = write_adversarial(tmp_path / "adversarial.jsonl")
    assert COMMITTED.read_bytes() == regenerated.read_bytes(), \
        "regenerate it: python -c 'from modeling_nclama.toolchain.adversarial import write_adversarial; write_adversarial()'"
    assert load_adversarial() == load_adversarial(COMMITTED) == adversarial_rows()
    assert adversarial.ADVERSARIAL_PATH == COMMITTED


def test_size_cases_and_fields(rows):
    assert len(rows) >= 500
    counts = Counter(row["case"] for row in rows)
    assert list(counts) == list(CASES) and min(counts.values()) >= 60 and max(counts.values()) - min(counts.values()) <= 10
    for row in rows:
        assert list(row) == ["prompt", "answer", "case", "computable", "task", "wording"]
        assert row["computable"] == (row["answer"] is not None)
        # the template's split: held-out wordings only where every bracketed template asks for an empty list once
        assert row["wording"] == (None if row["case"] == "nothing_to_compute" else
                                  row["wording"] if row["case"] == "empty_lists" else "training")
        assert row["task"] is None or row["task"] in tasks.TASKS
    assert len({row["prompt"] for row in rows}) == len(rows)  # no prompt twice
    assert not any(re.search(r"[-+*<] ?-", row["prompt"]) for row in rows)  # no 5--3= or 5 - -3


def test_determinism(rows):
    assert adversarial_rows(seed=0) == rows
    other = adversarial_rows(seed=1)
    assert [r["prompt"] for r in other] != [r["prompt"] for r in rows]
    assert Counter(r["case"] for r in adversarial_rows(seed=3, n_per_case=5)) == {case: 5 for case in CASES}
    with pytest.raises(ValueError, match="n_per_case must be a positive int"):
        adversarial_rows(n_per_case=0)


def test_computable_answers_are_the_templates(rows):
    for row in rows:
        if row["case"] in ("negative_operands", "negative_results", "large_list_items", "one_item_lists",
                           "answer_ends"):
            assert reference(row["prompt"]) == (row["task"], row["answer"]), row


def test_negative_operands_and_results(rows):
    for row in by_case(rows, "negative_operands"):
        assert min(numbers(row["prompt"])) < 0, row
    assert {row["task"] for row in by_case(rows, "negative_operands")} >= {"add", "sub", "mul", "less_than", "sort"}
    results = by_case(rows, "negative_results")
    assert all(row["answer"].startswith("-") and row["task"] in ("add", "sub") for row in results)
    assert {row["task"] for row in results} == {"add", "sub"}
    assert any(min(numbers(row["prompt"])) >= 0 for row in results)  # "4406-81273=": a negative from positives


def test_large_list_items(rows):
    large = by_case(rows, "large_list_items")
    for row in large:
        values = numbers(row["prompt"])
        if row["task"] == "gcd":
            assert all(1000 <= v < 10**6 for v in values), row
        else:
            assert max(values) >= 1000, row
    assert {row["task"] for row in large} == {"gcd", "sort", "max", "min", "sum"}


def test_one_item_lists(rows):
    for row in by_case(rows, "one_item_lists"):
        template = next(t for t in tasks.TEMPLATES.values() if parse(t.text, row["prompt"]))
        (item,) = parse(template.text, row["prompt"])["xs"]
        assert row["answer"] in (str(item), f"[{item}]")
    assert "sort: 55 ->" in tasks.TEMPLATES["sort/arrow"].text.format(xs_spaced="55")


def test_empty_lists(rows):
    empty = by_case(rows, "empty_lists")
    for row in empty:
        assert "[]" in row["prompt"]
        if row["task"] in ("max", "min"):
            assert not row["computable"] and row["answer"] is None
        else:
            assert row["answer"] == {"sort": "[]", "sum": "0"}[row["task"]]
            assert last_question(row["prompt"])[1] == (row["task"], row["answer"])
    bare = {row["prompt"] for row in empty}
    for template in tasks.TEMPLATES.values():  # every bracketed template of a list task, bare
        if template.task in tasks.LIST_TASKS and template.bracketed:
            assert template.text.format(xs="[]") in bare
    assert {"sorted([])=", "What is the sum of []?", "max([])=", "min([])="} <= bare
    assert any(not row["computable"] for row in empty) and any(row["computable"] for row in empty)


def test_answer_ends_are_training_prompts_at_training_lengths(rows):
    ends = by_case(rows, "answer_ends")
    assert all(row["computable"] for row in ends)
    assert len({row["task"] for row in ends}) >= 9
    for row in ends:
        template = next(t for t in tasks.templates(row["task"]) if parse(t.text, row["prompt"]))
        assert not template.heldout


def test_nothing_to_compute(rows):
    nothing = by_case(rows, "nothing_to_compute")
    for row in nothing:
        assert row["answer"] is None and row["task"] is None and not row["computable"]
        assert re.search(r"\d", row["prompt"])
        with pytest.raises(AssertionError):
            last_question(row["prompt"])  # no template writes any part of it
    shapes = {re.sub(r"\d+", "N", row["prompt"]) for row in nothing}
    assert len(shapes) >= 15


def test_two_questions_answer_the_second(rows):
    two = by_case(rows, "two_questions")
    for row in two:
        first, (task, answer) = last_question(row["prompt"])
        assert (task, answer) == (row["task"], row["answer"]), row
        assert first.endswith("? ")
        reference(first[:-1])  # the first is a question a template writes too
    assert "What is 3 plus 4? What is 81273 minus 4406?".endswith(
        tasks.render("sub/minus", a=81273, b=4406)["prompt"])


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_adversarial(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1=", "answer": "2", "case": "x", "computable": true}\n{"prompt": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: a row needs answer, case, computable"):
        load_adversarial(bad)
    bad.write_text('{"prompt": "1+1=", "answer": null, "case": "x", "computable": true}\n')
    with pytest.raises(ValueError, match="a computable row needs an answer"):
        load_adversarial(bad)
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: not JSON"):
        load_adversarial(bad)
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"prompt": "1+1=", "answer": "2", "case": "x", "computable": True}) + "\n")
    assert load_adversarial(one) == [{"prompt": "1+1=", "answer": "2", "case": "x", "computable": True, "task": None,
                                      "wording": None}]


def test_the_training_statements_are_many_and_none_is_the_evaluations(rows):
    """The training's statements with nothing to compute (tasks.context_examples) come from frames whose words and
    numbers vary, thousands of different sentences, none of which is a statement of the adversarial set, nor one of
    its frames: the set measures statements the model has not seen."""
    import random

    rng = random.Random(0)
    training = {tasks._statement(rng) for _ in range(5000)}
    assert len(training) > 4000
    assert len({word for sentence in training for word in re.findall(r"[A-Za-z]+", sentence)}) > 200
    nothing = {row["prompt"] for row in by_case(rows, "nothing_to_compute")}
    assert not training & nothing
    assert {row["wording"] for row in by_case(rows, "empty_lists")} == {"training", "heldout"}
    frames = {re.sub(r"-?\d+", "N", text) for text, _ in adversarial._STATEMENTS}
    assert not {re.sub(r"-?\d+", "N", sentence) for sentence in training} & frames
    for sentence in training:
        assert re.search(r"\d", sentence) and sentence[0].isupper() and sentence.endswith(".")
        with pytest.raises(AssertionError):
            last_question(sentence)  # no template writes any part of it
