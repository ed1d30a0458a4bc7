"""Task generators: determinism, the canonical prompts, templates, answers (recomputed here independently), lengths,
ranges, and the CLRS-Text format."""
import re
from collections import Counter

import pytest

from modeling_nclama.toolchain import tasks
from modeling_nclama.toolchain.tasks import (ALL_TASKS, CANONICAL, CLRS_TASK, TASKS, TEMPLATES, TRAINING_RANGES,
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
    ("sub/sym", {"a": 4406, "b": 81273}),
    ("add/plus", {"a": -5, "b": 12}),
    ("sort/list", {"xs": [-3, 1200, 5]}),
    ("max/largest", {"xs": [5, 3, 9, 1, 1200]}),
    ("gcd/sym", {"a": 2000, "b": 3000}),
    ("sort/arrow", {"xs": [55]}),
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


_FIELD_PATTERNS = {"{a}": r"(?P<a>-?\d+)", "{b}": r"(?P<b>-?\d+)", "{n}": r"(?P<n>\d+)",
                   "{xs}": r"\[(?P<xs>(?:-?\d+(?:, -?\d+)*)?)\]", "{xs_spaced}": r"(?P<xs_spaced>-?\d+(?: -?\d+)*)"}


def parse(template_text, prompt):
    pattern = re.escape(template_text)
    for field, sub in _FIELD_PATTERNS.items():
        pattern = pattern.replace(re.escape(field), sub)
    match = re.fullmatch(pattern, prompt)
    if match is None:
        return None
    fields = match.groupdict()
    xs = fields["xs"] if fields.get("xs") is not None else fields.get("xs_spaced")
    return {"a": fields.get("a"), "b": fields.get("b"), "n": fields.get("n"),
            "xs": ([int(v) for v in re.split(r",? ", xs)] if xs else []) if xs is not None else None,
            "bracketed": fields.get("xs") is not None}


def reference_answer(task, operands):
    """The answer as text, computed without the module."""
    a = int(operands["a"]) if operands["a"] is not None else None
    b = int(operands["b"]) if operands["b"] is not None else None
    xs = operands["xs"]
    if task == "add":
        return str(a + b)
    if task == "sub":
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
    if task == "min":
        return str(min(xs))
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
    data = make_dataset(TASKS, 4 * len(TASKS), seed=0)
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
        assert all(-999999 <= v <= 999999 for v in operands["xs"])
    elif operands["n"] is not None:
        assert row["length"] == int(operands["n"])
    else:
        assert row["length"] == max(len(operands["a"].lstrip("-")), len(operands["b"].lstrip("-")))
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
    assert all(0 < int(o["a"]) < 10**6 and 0 < int(o["b"]) < 10**6 for o in operands)  # positive, up to 6 digits
    assert any(int(o["a"]) >= 1000 for o in operands)
    assert sum(r["answer"] != "1" for r in gcd_rows) > len(gcd_rows) / 2  # gcds are mostly not trivial
    assert TRAINING_RANGES["mul"]["length"] == (1, 5) and TRAINING_RANGES["add"]["length"] == (1, 10)
    assert TRAINING_RANGES["gcd"]["length"] == (1, 6)
    assert TRAINING_RANGES["sort"]["values"] == (-999999, 999999)
    assert [TRAINING_RANGES[t]["length"] for t in ("sort", "sum", "max", "min")] == [(0, 16), (0, 16), (1, 16), (1, 16)]


@pytest.mark.parametrize("task, length", [("add", 7), ("sub", 3), ("less_than", 1), ("mul", 2), ("gcd", 2),
                                          ("gcd", 6), ("factorial", 5), ("fib", 0), ("sort", 3), ("sort", 1),
                                          ("sort", 0), ("max", 9), ("max", 1), ("min", 4), ("min", 1), ("sum", 2),
                                          ("sum", 0)])
def test_the_lengths_argument(task, length):
    data = make_dataset([task], 30, seed=5, lengths=[length])
    assert set(data["length"]) == {length}
    for row in data:
        _check_length(row)


@pytest.mark.parametrize("task, length", [("add", 40), ("sub", 40), ("less_than", 40), ("mul", 10),
                                          ("sort", 64), ("max", 64), ("min", 64), ("sum", 64), ("gcd", 12), ("fib", 120),
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
    (lambda: make_dataset(["sort"], 4, seed=0, lengths=[-1]), "length -1 is not valid for sort"),
    (lambda: make_dataset(["max"], 4, seed=0, lengths=[0]), "length 0 is not valid for max"),
    (lambda: make_dataset(["min"], 4, seed=0, lengths=[0]), "length 0 is not valid for min"),
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
    rows = make_dataset(["sort", "max", "min", "sum"], 80, seed=0, lengths=[8], max_value=9).to_list()
    for row in rows:
        items = [int(x) for x in re.findall(r"-?\d+", row["prompt"])]
        assert len(items) == 8 and max(items) <= 9 and min(items) >= 0, row["prompt"]  # non-negative
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


# ---------------------------------------------------------------------------------------------------------------
# signed numbers, long list items, one-item and empty lists, min
# ---------------------------------------------------------------------------------------------------------------

SIGNED_TASKS = ("add", "sub", "mul", "less_than")


def _python_answer(row):
    """The answer Python computes on the numbers parsed back from the rendered prompt (signs included)."""
    operands = _operands(row)
    task = row["task"]
    if task in SIGNED_TASKS + ("gcd",):
        a, b = int(operands["a"]), int(operands["b"])
        result = {"add": a + b, "sub": a - b, "mul": a * b, "less_than": a < b, "gcd": _euclid(a, b)}[task]
        return ("yes" if result else "no") if task == "less_than" else str(result)
    xs = operands["xs"]
    if task == "sort":
        ordered = sorted(xs)
        return "[" + ", ".join(map(str, ordered)) + "]" if operands["bracketed"] else " ".join(map(str, ordered))
    return str({"max": max, "min": min, "sum": sum}[task](xs))


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_negative_operands_occur_at_the_stated_rate(split):
    rows = make_dataset(list(SIGNED_TASKS), 4000, seed=12, split=split).to_list()
    word, symbol = [], []  # signs of the operands that may be negative
    for row in rows:
        operands = _operands(row)
        a, b = int(operands["a"]), int(operands["b"])
        if TEMPLATES[row["template"]].symbol_before_b:
            assert b >= 0, row["prompt"]
            symbol.append(a)
        else:
            word += [a, b]
    for values in (word, symbol) if split == "train" else (word,):
        nonzero = [v for v in values if v != 0]
        assert abs(sum(v < 0 for v in nonzero) / len(nonzero) - tasks.NEGATIVE_RATE) < 0.03
    subs = [r for r in rows if r["task"] == "sub"]
    assert 0.3 < sum(r["answer"].startswith("-") for r in subs) / len(subs) < 0.7  # a - b may be negative


def test_list_items_are_signed_and_up_to_six_digits():
    rows = make_dataset(list(tasks.LIST_TASKS), 2000, seed=13).to_list()
    items = [v for row in rows for v in _operands(row)["xs"]]
    nonzero = [v for v in items if v != 0]
    assert abs(sum(v < 0 for v in nonzero) / len(nonzero) - tasks.NEGATIVE_RATE) < 0.02
    digits = Counter(len(str(abs(v))) for v in items)
    assert set(digits) == set(range(1, 7))
    assert abs(sum(digits[d] for d in (4, 5, 6)) / len(items) - 0.2) < 0.02  # 4-6 digits with probability 0.2
    assert abs(digits[4] - digits[6]) / digits[5] < 0.2 and abs(digits[1] - digits[3]) / digits[2] < 0.2


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_answers_are_pythons_on_the_rendered_prompt(split):
    chosen = list(SIGNED_TASKS) + ["gcd"] + list(tasks.LIST_TASKS)
    rows = make_dataset(chosen, 2200, seed=14, split=split).to_list()
    rows += make_dataset(["sort", "sum"], 40, seed=14, split=split, lengths=[0, 1]).to_list()
    for row in rows:
        assert row["answer"] == _python_answer(row), row
        assert reference(row["prompt"]) == (row["task"], row["answer"]), row
    negative = [r for r in rows if r["task"] in ("add", "sub", "mul") and r["answer"].startswith("-")]
    assert negative and all(re.fullmatch(r"-[1-9]\d*", r["answer"]) for r in negative)  # Python's "-76867"


def test_no_doubled_signs_after_a_symbol_operator():
    rows = make_dataset(list(SIGNED_TASKS), 3000, seed=15).to_list()
    symbol = [r for r in rows if TEMPLATES[r["template"]].symbol_before_b]
    assert {r["template"] for r in symbol} == {"add/sym", "add/compute", "sub/sym", "sub/compute", "mul/sym",
                                               "mul/compute", "less_than/sym"}
    assert any(r["prompt"].startswith("-") for r in symbol)  # a may be negative there
    for row in rows:
        assert not re.search(r"[-+*<] ?-", row["prompt"]), row["prompt"]  # no 5--3=, 5+-3=, 5 - -3
    assert render("sub/sym", a=4406, b=81273)["text"] == "4406-81273=-76867"
    assert render("sub/minus", a=-81273, b=-4406)["text"] == "What is -81273 minus -4406? -76867"
    assert render("less_than/less", a=-5, b=3)["answer"] == "yes"


def test_one_item_and_empty_lists():
    assert render("sort/arrow", xs=[55])["text"] == "sort: 55 -> 55"
    assert render("max/call", xs=[7])["text"] == "max([7])=7"
    assert render("min/arrow", xs=[-7])["text"] == "min: -7 -> -7"
    assert render("sort/call", xs=[])["text"] == "sorted([])=[]"
    assert render("sum/sum-of", xs=[])["text"] == "What is the sum of []? 0"
    for split in ("train", "heldout"):
        empty = make_dataset(["sort", "sum"], 60, seed=16, split=split, lengths=[0]).to_list()
        assert all(TEMPLATES[r["template"]].bracketed and "[]" in r["prompt"] for r in empty)  # bracketed only
        assert {r["answer"] for r in empty} == {"[]", "0"}
        assert len({r["template"] for r in empty}) == len([t for task in ("sort", "sum")
                                                            for t in templates(task, split) if t.bracketed])
    one = make_dataset(list(tasks.LIST_TASKS), 80, seed=16, lengths=[1]).to_list()
    for row in one:
        (item,) = _operands(row)["xs"]
        assert row["answer"] in (str(item), f"[{item}]")
    default = make_dataset(list(tasks.LIST_TASKS), 4000, seed=16).to_list()
    shortest = {task: min(r["length"] for r in default if r["task"] == task) for task in tasks.LIST_TASKS}
    assert shortest == {"sort": 0, "max": 1, "min": 1, "sum": 0}  # training lists: 0 (sort, sum) or 1 to 16 items
    with pytest.raises(ValueError, match="length 0 is not valid for max"):
        make_dataset(["max"], 1, seed=0, lengths=[0])


def test_the_min_task():
    assert "min" in TASKS and "min" in tasks.LIST_TASKS
    assert TRAINING_RANGES["min"] == TRAINING_RANGES["max"] and tasks.EVAL_LENGTHS["min"] == tasks.EVAL_LENGTHS["max"]
    assert [t.text for t in templates("min")] == ["What is the smallest number in {xs}?", "min({xs})=",
                                                  "min: {xs_spaced} ->", "Find the minimum of {xs}."]
    assert [t.text for t in templates("min", "heldout")] == ["Which number in {xs} is the smallest?",
                                                             "What is the least of {xs_spaced}?",
                                                             "Give the minimum value of the list {xs}."]
    assert render("min/smallest", xs=[5, -3, 9])["text"] == "What is the smallest number in [5, -3, 9]? -3"
    rows = make_dataset(["min"], 200, seed=17).to_list()
    assert all(r["answer"] == str(min(_operands(r)["xs"])) for r in rows)


def test_signed_data_is_deterministic_per_seed():
    chosen = list(SIGNED_TASKS) + ["gcd"] + list(tasks.LIST_TASKS)
    first = make_dataset(chosen, 90, seed=21).to_list()
    assert first == make_dataset(chosen, 90, seed=21).to_list()
    assert [r["prompt"] for r in first] != make_dataset(chosen, 90, seed=22)["prompt"]
    empty = make_dataset(["sort", "sum"], 10, seed=21, lengths=[0, 1]).to_list()
    assert empty == make_dataset(["sort", "sum"], 10, seed=21, lengths=[0, 1]).to_list()


def test_sample_draws_one_row():
    import random

    row = tasks.sample("sub", random.Random(0), 5, template_id="sub/sym")
    assert row["template"] == "sub/sym" and row["length"] == 5 and not row["prompt"].split("-", 1)[1].startswith("-")
    assert tasks.sample("sort", random.Random(0), 0)["prompt"].count("[]") == 1
    assert tasks.sample("sort", random.Random(3), 4) == tasks.sample("sort", random.Random(3), 4)


def test_chat_form():
    """A fraction of the rows in the tokenizer's chat template, seeded: the question in the user's turn, the answer
    right after the start of the assistant's turn; everything else unchanged."""
    from test_chat import chatml_tokenizer

    tok = chatml_tokenizer()
    plain = make_dataset(["add", "less_than", "sort"], 60, seed=4)
    assert tasks.chat_form(plain, tok, 0.0).to_list() == plain.to_list()
    every = tasks.chat_form(plain, tok, 1.0).to_list()
    for before, after in zip(plain.to_list(), every):
        assert after["prompt"] == tasks.chat_prompt(before["prompt"], tok)
        assert after["prompt"].endswith(before["prompt"] + "<|im_end|>\n<|im_start|>assistant\n")
        assert after["text"] == after["prompt"] + before["answer"]
        assert {k: v for k, v in after.items() if k not in ("prompt", "text")} == \
            {k: v for k, v in before.items() if k not in ("prompt", "text")}
    half = tasks.chat_form(plain, tok, 0.5, seed=1)
    chat = [row["prompt"].startswith("<|im_start|>") for row in half]
    assert 15 < sum(chat) < 45 and half.to_list() == tasks.chat_form(plain, tok, 0.5, seed=1).to_list()
    assert tasks.chat_form(plain, tok, 0.5, seed=2).to_list() != half.to_list()
    with pytest.raises(ValueError, match="fraction"):
        tasks.chat_form(plain, tok, 1.5)

