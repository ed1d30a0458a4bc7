"""The adversarial evaluation set (toolchain): prompts on which a model that calls its library at the wrong time, or
with the wrong operands, or keeps writing after its answer, goes wrong.

Every row is ``{"prompt", "answer", "case", "computable", "task", "wording"}``: ``answer`` is what a model must write
after ``prompt`` (the rule of :func:`modeling_nclama.toolchain.evaluation.exact_match`), or ``None`` where there is
nothing to compute (``computable`` false); ``task`` is the task of :mod:`modeling_nclama.toolchain.tasks` that answers
it (``None`` where none does); ``wording``: ``"training"`` or ``"heldout"``, the split of the template that wrote it
(``None`` for a statement: no template does). Computable rows are renderings of the tasks' templates
(:func:`modeling_nclama.toolchain.tasks.render`), so their answers come from :func:`modeling_nclama.toolchain.tasks.solve`.
The cases (:data:`CASES`):

- ``negative_operands``: training wordings with negative operands ("What is -81273 plus 4406?", "Is -5 less than 3?",
  "[-3, 4]"); a symbol operator never stands right before a negative number (no "5--3=").
- ``negative_results``: additions and subtractions whose result is negative ("4406-81273=" -> "-76867").
- ``large_list_items``: sort, max, min and sum of lists with an item of 4-6 digits ("What is the largest number in
  [5, 3, 9, 1, 1200]?"), and gcd of numbers of 4-6 digits.
- ``one_item_lists``: "sort: 55 ->" -> "55", "max([7])=" -> "7".
- ``empty_lists``: "sorted([])=" -> "[]", "What is the sum of []?" -> "0"; the max and the min of "[]" are not
  defined (not computable). Every bracketed template (training and held-out) once, bare, then training templates
  after a sentence with numbers ("Room 12 holds 40 people. What is the sum of []?").
- ``answer_ends``: ordinary training prompts at training lengths, whose answer must end right after it.
- ``nothing_to_compute``: sentences with numbers and no question ("The meeting is at 10 in room 204."): not
  computable.
- ``two_questions``: two questions in one prompt; the answer answers the second ("What is 3 plus 4? What is 81273
  minus 4406?" -> "76867").

:func:`adversarial_rows` generates the set (deterministic given its seed); ``configuration/adversarial.jsonl`` is
``write_adversarial`` of seed 0, which :func:`modeling_nclama.toolchain.evaluation.evaluate_adversarial` and ``nclama eval
MODEL --adversarial`` read.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, Optional, Union

from . import tasks
from .tasks import LIST_TASKS, TASKS, TEMPLATES, TRAINING_RANGES, render, sample, templates

__all__ = ["CASES", "ADVERSARIAL_PATH", "DEFAULT_N_PER_CASE", "adversarial_rows", "write_adversarial",
           "load_adversarial"]

CASES: tuple[str, ...] = ("negative_operands", "negative_results", "large_list_items", "one_item_lists", "empty_lists",
                          "answer_ends", "nothing_to_compute", "two_questions")
#: The committed set: ``write_adversarial(ADVERSARIAL_PATH)`` (seed 0).
ADVERSARIAL_PATH = Path(__file__).resolve().parents[2] / "configuration" / "adversarial.jsonl"
DEFAULT_N_PER_CASE = 70

_SIGNED = ("add", "sub", "mul", "less_than")


def _wording(template) -> str:
    return "heldout" if template.heldout else "training"


def _row(rendered: dict, case: str) -> dict:
    return {"prompt": rendered["prompt"], "answer": rendered["answer"], "case": case, "computable": True,
            "task": rendered["task"], "wording": _wording(TEMPLATES[rendered["template"]])}


def _template(rng: random.Random, task: str, predicate: Callable = lambda t: True):
    return rng.choice([t for t in templates(task) if predicate(t)])


def _digits(rng: random.Random, low: int, high: int) -> int:
    return tasks._number(rng, rng.randint(low, high))


def _negative_operands(rng: random.Random) -> dict:
    if rng.random() < 0.75:
        task = rng.choice(_SIGNED)
        template = _template(rng, task)
        a, b = _digits(rng, 1, 6) or 1, _digits(rng, 1, 6) or 1
        if template.symbol_before_b:  # only a may be negative: "-5-3=", never "5--3="
            a = -a
        else:
            which = rng.choice(("a", "b", "both"))
            a = -a if which in ("a", "both") else a
            b = -b if which in ("b", "both") else b
        return _row(render(template.id, a=a, b=b), "negative_operands")
    task = rng.choice(LIST_TASKS)
    xs = [_digits(rng, 1, 3) for _ in range(rng.randint(2, 8))]
    for i in rng.sample(range(len(xs)), rng.randint(1, len(xs))):
        xs[i] = -xs[i] if xs[i] else -1
    return _row(render(_template(rng, task).id, xs=xs), "negative_operands")


def _negative_results(rng: random.Random) -> dict:
    task = rng.choice(("add", "sub"))
    template = _template(rng, task)
    big = _digits(rng, 2, 8)
    small = _digits(rng, 1, len(str(big)))
    small, big = min(small, big), max(small, big) + (small == big)  # 0 <= small < big
    if task == "sub":  # a - b < 0
        choices = [(small, big), (-small, big)] + ([] if template.symbol_before_b else [(-big, -small)])
    else:  # a + b < 0
        choices = [(-big, small)] + ([] if template.symbol_before_b else [(small, -big), (-big, -small)])
    a, b = rng.choice(choices)
    row = render(template.id, a=a, b=b)
    assert row["answer"].startswith("-"), row
    return _row(row, "negative_results")


def _large_list_items(rng: random.Random) -> dict:
    if rng.random() < 0.2:  # gcd of numbers of 4-6 digits, with a common factor
        g = _digits(rng, 1, 3) or 1
        a, b = (g * rng.randint(1000 // g + 1, 999999 // g) for _ in range(2))
        return _row(render(_template(rng, "gcd").id, a=a, b=b), "large_list_items")
    task = rng.choice(LIST_TASKS)
    xs = [tasks._item(rng) for _ in range(rng.randint(2, 12))]
    large = rng.sample(range(len(xs)), rng.randint(1, max(1, len(xs) // 3)))
    for i in large:
        xs[i] = _digits(rng, 4, 6) * (-1 if rng.random() < tasks.NEGATIVE_RATE else 1)
    xs[large[0]] = abs(xs[large[0]])  # at least one item >= 1000
    return _row(render(_template(rng, task).id, xs=xs), "large_list_items")


def _one_item_lists(rng: random.Random) -> dict:
    task = rng.choice(LIST_TASKS)
    item = tasks._item(rng)
    return _row(render(_template(rng, task).id, xs=[item]), "one_item_lists")


def _empty_list_row(template, case: str = "empty_lists", prefix: str = "") -> dict:
    if template.task in ("sort", "sum"):
        row = _row(render(template.id, xs=[]), case)
    else:  # the max and the min of nothing are not defined
        row = {"prompt": template.text.format(xs="[]"), "answer": None, "case": case, "computable": False,
               "task": template.task, "wording": _wording(template)}
    row["prompt"] = prefix + row["prompt"]
    return row


#: Every bracketed template of a list task, training ones first: each writes one empty-list prompt.
_BRACKETED = [t for split in ("train", "heldout") for task in LIST_TASKS for t in templates(task, split) if t.bracketed]


def _empty_lists(rng: random.Random, index: int) -> dict:
    """The bare empty-list prompt of every bracketed template first (training, then held-out), then training ones
    after a sentence with numbers ("Room 12 holds 40 people. What is the sum of []?")."""
    if index < len(_BRACKETED):
        return _empty_list_row(_BRACKETED[index])
    template = rng.choice([t for t in _BRACKETED if not t.heldout])
    return _empty_list_row(template, prefix=_nothing_to_compute(rng)["prompt"] + " ")


def _answer_ends(rng: random.Random) -> dict:
    task = rng.choice(TASKS)
    low, high = TRAINING_RANGES[task]["length"]
    return _row(sample(task, rng, rng.randint(max(low, 1), high)), "answer_ends")  # empty lists are their own case


#: Sentences with numbers and nothing to compute; fields are filled with random numbers of the ranges given.
_STATEMENTS: tuple[tuple[str, dict[str, tuple[int, int]]], ...] = (
    ("The meeting is at {h} in room {r}.", {"h": (1, 12), "r": (100, 999)}),
    ("In {year}, {k} astronauts flew to the moon.", {"year": (1950, 2024), "k": (2, 9)}),
    ("The train leaves from platform {p} at {h}:{m}.", {"p": (1, 24), "h": (10, 23), "m": (10, 59)}),
    ("Chapter {c} begins on page {p}.", {"c": (2, 40), "p": (10, 900)}),
    ("The temperature fell to -{t} degrees overnight.", {"t": (1, 40)}),
    ("Flight {f} to gate {g} is delayed by {m} minutes.", {"f": (100, 9999), "g": (1, 60), "m": (5, 180)}),
    ("She was born on March {d}, {year}.", {"d": (1, 31), "year": (1900, 2020)}),
    ("The recipe needs {e} eggs and {g} grams of flour.", {"e": (1, 12), "g": (50, 1000)}),
    ("Route {r} runs for {k} kilometres along the coast.", {"r": (1, 999), "k": (10, 5000)}),
    ("Our team scored {a} points in the final of {year}.", {"a": (10, 150), "year": (1980, 2024)}),
    ("Version {a}.{b} was released with {n} bug fixes.", {"a": (1, 20), "b": (0, 9), "n": (2, 400)}),
    ("The winning numbers were {a}, {b}, {c} and {d}.", {"a": (1, 49), "b": (1, 49), "c": (1, 49), "d": (1, 49)}),
    ("Scores so far: [{a}, {b}, {c}].", {"a": (0, 100), "b": (0, 100), "c": (0, 100)}),
    ("The account balance is -{a} dollars after {n} payments.", {"a": (1, 99999), "n": (2, 60)}),
    ("Room {r} holds {n} people and has {w} windows.", {"r": (1, 500), "n": (2, 300), "w": (1, 40)}),
    ("Call extension {x} between {a} and {b} o'clock.", {"x": (1000, 9999), "a": (8, 11), "b": (12, 18)}),
)


def _nothing_to_compute(rng: random.Random) -> dict:
    text, ranges = rng.choice(_STATEMENTS)
    prompt = text.format(**{field: rng.randint(low, high) for field, (low, high) in ranges.items()})
    return {"prompt": prompt, "answer": None, "case": "nothing_to_compute", "computable": False, "task": None,
            "wording": None}


def _two_questions(rng: random.Random) -> dict:
    def question(rng: random.Random, ends: tuple[str, ...]) -> dict:
        template = rng.choice([t for t in TEMPLATES.values() if not t.heldout and t.text.endswith(ends)])
        task = template.task
        low, high = TRAINING_RANGES[task]["length"]
        return sample(task, rng, rng.randint(low, min(high, 6)), template_id=template.id)

    first = question(rng, ("?",))
    second = question(rng, ("?", ".", "=", "->"))
    while second["prompt"] == first["prompt"]:
        second = question(rng, ("?", ".", "=", "->"))
    row = _row(second, "two_questions")
    row["prompt"] = first["prompt"] + " " + second["prompt"]
    return row


_GENERATORS: dict[str, Callable[..., dict]] = {
    "negative_operands": _negative_operands,
    "negative_results": _negative_results,
    "large_list_items": _large_list_items,
    "one_item_lists": _one_item_lists,
    "empty_lists": _empty_lists,
    "answer_ends": _answer_ends,
    "nothing_to_compute": _nothing_to_compute,
    "two_questions": _two_questions,
}


def adversarial_rows(seed: int = 0, n_per_case: int = DEFAULT_N_PER_CASE) -> list[dict]:
    """``n_per_case`` rows of every case of :data:`CASES` (in that order), deterministic given ``seed``: each case
    draws from its own random stream, and no prompt appears twice."""
    if not isinstance(n_per_case, int) or n_per_case <= 0:
        raise ValueError(f"n_per_case must be a positive int, got {n_per_case!r}")
    rows: list[dict] = []
    for case in CASES:
        rng = random.Random(f"nclama/adversarial/{seed}/{case}")
        seen: set[str] = set()
        for _ in range(50 * n_per_case):
            if len(seen) == n_per_case:
                break
            row = _GENERATORS[case](rng, len(seen)) if case == "empty_lists" else _GENERATORS[case](rng)
            if row["prompt"] not in seen:
                seen.add(row["prompt"])
                rows.append(row)
    return rows


def write_adversarial(path: Union[str, Path] = ADVERSARIAL_PATH, *, seed: int = 0,
                      n_per_case: int = DEFAULT_N_PER_CASE) -> Path:
    """Write :func:`adversarial_rows` as JSON lines (one row a line, keys in a fixed order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({key: row[key] for key in ("prompt", "answer", "case", "computable", "task", "wording")})
             for row in adversarial_rows(seed, n_per_case)]
    path.write_text("\n".join(lines) + "\n")
    return path


def load_adversarial(path: Union[str, Path, None] = None) -> list[dict]:
    """The rows of a JSONL file of :func:`write_adversarial` (default: the committed set). Raises
    ``FileNotFoundError`` for a missing file and ``ValueError`` naming the line of a malformed row."""
    path = Path(path) if path is not None else ADVERSARIAL_PATH
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error})") from None
        missing = {"prompt", "answer", "case", "computable"} - set(row)
        if missing:
            raise ValueError(f"{path}:{number}: a row needs {', '.join(sorted(missing))}")
        if row["computable"] and not isinstance(row["answer"], str):
            raise ValueError(f"{path}:{number}: a computable row needs an answer")
        row.setdefault("task", None)
        row.setdefault("wording", None)
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows
