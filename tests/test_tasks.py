"""Task generators: determinism, the canonical prompts, templates, answers (recomputed here independently), lengths,
ranges, and the CLRS-Text format."""
import re
from collections import Counter

import pytest

from modeling_nclama import tasks
from modeling_nclama.tasks import (ALL_TASKS, CANONICAL, CLRS_TASK, TASKS, TEMPLATES, TRAINING_RANGES,
                                   clrs_insertion_sort, make_dataset, render, templates)


# Which training template and operands write each canonical prompt.
CANONICAL_SOURCES = [
    ("add/sym", {"a": 81273, "b": 4406}),
    ("sub/sym", {"a": 81273, "b": 4406}),
    ("mul/sym", {"a": 734, "b": 58}),
    ("add/plus", {"a": 81273, "b": 4406}),
    ("sub/minus", {"a": 81273, "b": 4406}),
    ("mul/times", {"a": 734, "b": 58}),
    ("add/add", {"a": 3, "b": 4}),
    ("less_than/less", {"a": 81273, "b": 4406}),
    ("gcd/sym", {"a": 84, "b": 36}),
    ("factorial/sym", {"n": 7}),
    ("fib/sym", {"n": 20}),
    ("sort/arrow", {"xs": [5, 3, 9, 1]}),
    ("sort/list", {"xs": [5, 3, 9, 1]}),
    ("max/largest", {"xs": [5, 3, 9, 1]}),
    ("sum/sum-of", {"xs": [5, 3, 9, 1]}),
]


# ---------------------------------------------------------------------------------------------------------------
# an independent reference: parse a prompt through its template's wording and compute the answer here
# ---------------------------------------------------------------------------------------------------------------

def _euclid(a, b):
    while b:
        a, b = b, a % b
    return a


def _fib(n):
    if n < 2:
        return n
    x, y = 0, 1
    for _ in range(n - 1):
        x, y = y, x + y
    return y


def _fact(n):
    out = 1
    for k in range(2, n + 1):
        out *= k
    return out


_FIELD_PATTERNS = {"{a}": r"(?P<a>\d+)", "{b}": r"(?P<b>\d+)", "{n}": r"(?P<n>\d+)",
                   "{xs}": r"\[(?P<xs>\d+(?:, \d+)+)\]", "{xs_spaced}": r"(?P<xs_spaced>\d+(?: \d+)+)"}


def parse(template_text, prompt):
    pattern = re.escape(template_text)
    for field, sub in _FIELD_PATTERNS.items():
        pattern = pattern.replace(re.escape(field), sub)
    match = re.fullmatch(pattern, prompt)
    if match is None:
        return None
    fields = match.groupdict()
    xs = fields.get("xs") or fields.get("xs_spaced")
    return {"a": fields.get("a"), "b": fields.get("b"), "n": fields.get("n"),
            "xs": [int(v) for v in re.split(r",? ", xs)] if xs else None, "bracketed": fields.get("xs") is not None}


def reference_answer(task, operands):
    """The answer as text, computed without the module."""
    a = int(operands["a"]) if operands["a"] is not None else None
    b = int(operands["b"]) if operands["b"] is not None else None
    xs = operands["xs"]
    if task == "add":
        return str(a + b)
    if task == "sub":
        assert a >= b
        return str(a - b)
    if task == "mul":
        return str(a * b)
    if task == "less_than":
        return {True: "yes", False: "no"}[a < b]
    if task == "gcd":
        return str(_euclid(a, b))
    if task == "factorial":
        return str(_fact(int(operands["n"])))
    if task == "fib":
        return str(_fib(int(operands["n"])))
    if task == "max":
        return str(max(xs))
    if task == "sum":
        return str(sum(xs))
    ordered = sorted(xs)
    return "[" + ", ".join(map(str, ordered)) + "]" if operands["bracketed"] else " ".join(map(str, ordered))


def reference(prompt):
    """(task, answer) of a prompt written by one of the templates."""
    for template in TEMPLATES.values():
        operands = parse(template.text, prompt)
        if operands is not None:
            return template.task, reference_answer(template.task, operands)
    raise AssertionError(f"no template writes {prompt!r}")


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source, expected", list(zip(CANONICAL_SOURCES, CANONICAL)), ids=[p for p, _ in CANONICAL])
def test_every_canonical_pair_comes_from_a_training_template(source, expected):
    template_id, operands = source
    assert not TEMPLATES[template_id].heldout
    row = render(template_id, **operands)
    assert (row["prompt"], row["answer"]) == expected
    assert reference(expected[0]) == (TEMPLATES[template_id].task, expected[1])
    separator = "" if expected[0].endswith("=") else " "
    assert row["text"] == expected[0] + separator + expected[1]


def test_the_text_conventions():
    assert render("add/sym", a=81273, b=4406)["text"] == "81273+4406=85679"
    assert render("add/plus", a=81273, b=4406)["text"] == "What is 81273 plus 4406? 85679"
    assert render("sort/arrow", xs=[5, 3, 9, 1])["text"] == "sort: 5 3 9 1 -> 1 3 5 9"
    assert render("sort/call", xs=[5, 3, 9, 1])["text"] == "sorted([5, 3, 9, 1])=[1, 3, 5, 9]"
    assert render("fib/sym", n=0)["answer"] == "0" and render("fib/sym", n=1)["answer"] == "1"
    assert render("factorial/sym", n=0)["answer"] == "1"
    assert render("less_than/less", a=3, b=4)["answer"] == "yes"


def test_make_dataset_is_deterministic_per_seed():
    first = make_dataset(TASKS, 60, seed=7)
    assert first.to_list() == make_dataset(TASKS, 60, seed=7).to_list()
    assert first["prompt"] != make_dataset(TASKS, 60, seed=8)["prompt"]
    assert first["prompt"] != make_dataset(TASKS, 60, seed=7, split="heldout")["prompt"]
    # each task draws from its own stream: adding a task leaves the others' examples alone
    alone = make_dataset(["add"], 5, seed=7)["text"]
    assert make_dataset(["add", "sort"], 10, seed=7)["text"][::2] == alone


def test_columns_and_balance():
    data = make_dataset(TASKS, 40, seed=0)
    assert data.column_names == ["prompt", "answer", "text", "task", "length", "template"]
    assert Counter(data["task"]) == {task: 4 for task in TASKS}


@pytest.mark.parametrize("task", TASKS)
def test_heldout_templates_are_disjoint_from_training_ones(task):
    train, heldout = templates(task, "train"), templates(task, "heldout")
    assert len(heldout) >= 3 and len(train) >= 3
    assert not {t.id for t in train} & {t.id for t in heldout}
    assert not {t.text for t in train} & {t.text for t in heldout}
    data = make_dataset([task], 60, seed=1, split="heldout")
    assert set(data["template"]) <= {t.id for t in heldout}
    assert set(make_dataset([task], 60, seed=1)["template"]) <= {t.id for t in train}


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_answers_are_right(split):
    data = make_dataset(TASKS, 600, seed=11, split=split)
    for row in data:
        assert reference(row["prompt"]) == (row["task"], row["answer"]), row
        separator = "" if row["prompt"].endswith("=") else " "
        assert row["text"] == row["prompt"] + separator + row["answer"]
    assert {r["answer"] for r in data if r["task"] == "less_than"} == {"yes", "no"}


def _operands(row):
    return parse(TEMPLATES[row["template"]].text, row["prompt"])


def _check_length(row):
    """The row's length, recomputed from its prompt."""
    operands = _operands(row)
    if operands["xs"] is not None:
        assert row["length"] == len(operands["xs"])
        assert all(0 <= v <= 999 for v in operands["xs"])
    elif operands["n"] is not None:
        assert row["length"] == int(operands["n"])
    else:
        assert row["length"] == max(len(operands["a"]), len(operands["b"]))
        assert operands["a"] == str(int(operands["a"])) and operands["b"] == str(int(operands["b"]))  # no leading 0


def test_training_ranges_are_respected_and_lengths_are_uniform():
    data = make_dataset(TASKS, 4000, seed=2).to_list()
    for task in TASKS:
        rows = [r for r in data if r["task"] == task]
        low, high = TRAINING_RANGES[task]["length"]
        lengths = [r["length"] for r in rows]
        assert set(lengths) == set(range(low, high + 1)), task  # every length, none outside the range
        short = sum(length <= (low + high) // 2 for length in lengths) / len(lengths)
        assert abs(short - ((low + high) // 2 - low + 1) / (high - low + 1)) < 0.1, task  # uniform over lengths
        for row in rows:
            _check_length(row)
    gcd_rows = [r for r in data if r["task"] == "gcd"]
    operands = [_operands(r) for r in gcd_rows]
    assert all(0 < int(o["a"]) < 1000 and 0 < int(o["b"]) < 1000 for o in operands)
    assert sum(r["answer"] != "1" for r in gcd_rows) > len(gcd_rows) / 2  # gcds are mostly not trivial
    assert TRAINING_RANGES["mul"]["length"] == (1, 5) and TRAINING_RANGES["add"]["length"] == (1, 10)
    assert TRAINING_RANGES["sort"]["values"] == (0, 999)


@pytest.mark.parametrize("task, length", [("add", 7), ("sub", 3), ("less_than", 1), ("mul", 2), ("gcd", 2),
                                          ("factorial", 5), ("fib", 0), ("sort", 3), ("max", 9), ("sum", 2)])
def test_the_lengths_argument(task, length):
    data = make_dataset([task], 30, seed=5, lengths=[length])
    assert set(data["length"]) == {length}
    for row in data:
        _check_length(row)


@pytest.mark.parametrize("task, length", [("add", 40), ("sub", 40), ("less_than", 40), ("mul", 10),
                                          ("sort", 64), ("max", 64), ("sum", 64), ("gcd", 12), ("fib", 120),
                                          ("factorial", 48)])
def test_four_times_the_training_lengths(task, length):
    data = make_dataset([task], 8, seed=3, lengths=[length], split="heldout")
    for row in data:
        assert row["length"] == length
        _check_length(row)
        assert reference(row["prompt"]) == (task, row["answer"])


def test_several_lengths_are_drawn_from():
    assert set(make_dataset(["sort"], 60, seed=0, lengths=[2, 64])["length"]) == {2, 64}


@pytest.mark.parametrize("call, message", [
    (lambda: make_dataset(["add", "divide"], 4, seed=0), "unknown task 'divide'"),
    (lambda: make_dataset(["add"], 4, seed=0, split="test"), "unknown split 'test'"),
    (lambda: make_dataset(["add"], 4, seed=0, lengths=[0]), "length 0 is not valid for add"),
    (lambda: make_dataset(["sort"], 4, seed=0, lengths=[1]), "length 1 is not valid for sort"),
    (lambda: make_dataset(["fib"], 4, seed=0, lengths=[-1]), "length -1 is not valid for fib"),
    (lambda: make_dataset(["add"], 0, seed=0), "n must be a positive int"),
    (lambda: make_dataset([], 4, seed=0), "no tasks"),
    (lambda: make_dataset([CLRS_TASK], 4, seed=0, split="heldout"), "no held-out templates"),
    (lambda: make_dataset(["sort", "add"], 4, seed=0, max_value=9), "max_value caps list items; add has no list"),
    (lambda: make_dataset(["sort"], 4, seed=0, max_value=0), "max_value must be a positive int, got 0"),
])
def test_bad_requests_name_the_problem(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_max_value_caps_list_items():
    rows = make_dataset(["sort", "max", "sum"], 60, seed=0, lengths=[8], max_value=9).to_list()
    for row in rows:
        items = [int(x) for x in re.findall(r"\d+", row["prompt"])]
        assert len(items) == 8 and max(items) <= 9, row["prompt"]
    assert {int(x) for row in rows for x in re.findall(r"\d+", row["prompt"])} == set(range(10))  # all of 0..9 drawn


CLRS_FLOAT = r"0\.\d{1,3}|0\.0"
CLRS_PROMPT = re.compile(r"insertion_sort:\nkey: \[((?:%s)(?: (?:%s))*)\]\npred:\n" % (CLRS_FLOAT, CLRS_FLOAT))


def test_clrs_insertion_sort_format():
    data = clrs_insertion_sort(200, seed=0)
    assert set(data["task"]) == {CLRS_TASK} and set(data["template"]) == {"clrs"}
    assert set(data["length"]) <= set(range(4, 32)) and len(set(data["length"])) > 20
    for row in data:
        match = CLRS_PROMPT.fullmatch(row["prompt"])
        assert match, row["prompt"]
        keys = match.group(1).split(" ")
        assert len(keys) == row["length"]
        assert all(k == str(float(k)) and not k.endswith("0") or k == "0.0" for k in keys)  # str(), 3 decimals
        assert row["answer"] == "[" + " ".join(sorted(keys, key=float)) + "]"
        assert row["text"] == row["prompt"] + row["answer"] + "\n\n"
    assert clrs_insertion_sort(3, seed=4, lengths=[16])["length"] == [16, 16, 16]
    assert clrs_insertion_sort(5, seed=4).to_list() == make_dataset([CLRS_TASK], 5, seed=4).to_list()


def test_clrs_floats_are_truncated_like_clrs_text():
    assert str(tasks._clrs_truncate(0.5499999)) == "0.549"  # numpy.trunc(x * 10**3) / 10**3, not round
    assert str(tasks._clrs_truncate(0.43)) == "0.43" and str(tasks._clrs_truncate(0.0004)) == "0.0"


def test_all_tasks_and_eval_lengths_are_consistent():
    assert set(ALL_TASKS) == set(TRAINING_RANGES) == set(tasks.EVAL_LENGTHS)
    for task, lengths in tasks.EVAL_LENGTHS.items():
        tasks.validate([task], lengths)
        if task != CLRS_TASK:
            assert max(lengths) >= 2 * TRAINING_RANGES[task]["length"][1]  # evaluation goes past training
