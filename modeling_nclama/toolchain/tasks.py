"""Algorithmic tasks (toolchain): seeded generators of prompt/answer data as ``datasets.Dataset``.

Every task renders its operands through natural-language templates. Training templates are what the model is
trained on; held-out templates (``split="heldout"``) are used only in evaluation, to tell whether the model learned
the task or the wording. The answer is always computed here, in Python, from the operands.

Text conventions:

- ``answer`` is what a model must write after ``prompt``: the generated text up to the end of sequence or the first
  newline, stripped (:func:`modeling_nclama.toolchain.evaluation.exact_match`).
- ``text`` (what the language model trains on) is ``prompt + separator + answer``: the separator is empty when the
  prompt ends with ``=`` (``81273+4406=85679``, ``gcd(84, 36)=12``) and one space otherwise
  (``What is 81273 plus 4406? 85679``, ``sort: 5 3 9 1 -> 1 3 5 9``). ``text`` carries no end-of-sequence token:
  the training collator appends the tokenizer's.
- Numbers are signed integers of any length, written as Python writes them: a negative number has a leading ``-``
  (``4406-81273=-76867``, ``What is -5 plus 12? 7``, ``Sort the list [-3, 1200, 5]. [-3, 5, 1200]``).
- A list answer is written the way the prompt wrote its list: ``[1, 3, 5, 9]`` after a bracketed list, ``1 3 5 9``
  after a spaced one. Comparisons answer ``yes`` or ``no``. ``fib(0) = 0``, ``fib(1) = 1``, ``0! = 1``.
- A list may hold one number (``sort: 55 -> 55``, ``max([7])=7``) and, for sort and sum, none: an empty list is
  written ``[]`` (``sorted([])=[]``, ``What is the sum of []? 0``), so it takes a bracketed template only (a spaced
  empty list has no text). The maximum and the minimum of an empty list are not defined: max and min lists have at
  least one number.

Signs. add, sub, mul and less_than draw each operand negative with probability :data:`NEGATIVE_RATE` (0.3), and
sub's ``a - b`` may be negative. A template that writes a symbol operator right before ``{b}`` (``{a}-{b}=``,
``{a}+{b}=``, ``{a}*{b}=``, ``{a}<{b}?``, and ``Compute {a} - {b}.``) keeps ``b`` non-negative, so that no prompt
reads ``5--3=`` or ``5 - -3``: only ``a`` may be negative there (``-5-3=`` is minus five minus three). Word templates
take both signs. gcd operands are positive, of any length. List items (sort, max, min, sum) are signed numbers of
1 to 6 digits: a number of digits uniform over 1..3 with probability 0.8 and over 4..6 otherwise, negative with
probability 0.3 (``max_value`` replaces them by items uniform over 0..max_value, for small-V experiments).

Length (the unit of per-length evaluation, sampled uniformly over lengths rather than values, so short operands
appear as often as long ones): the digits of the longer operand (not counting a sign) for add, sub, mul, less_than
and gcd; the number of elements for sort, max, min and sum; ``n`` for factorial and fib. An operand of ``d`` digits
is uniform over the ``d``-digit numbers (0-9 for ``d = 1``); the other operand of a two-operand task has a uniform
number of digits between 1 and the length.

Chat form (:func:`chat_prompt`, :func:`chat_form`): an instruct model is asked inside its chat template. The prompt
is the user's turn, rendered by the tokenizer's own template up to the start of the assistant's turn
(``apply_chat_template(..., add_generation_prompt=True)``, the template's default system message included), and the
answer follows it directly, without a separator: ``<|im_start|>user\nWhat is 81273 plus 4406?<|im_end|>\n
<|im_start|>assistant\n85679`` (the training collator appends the tokenizer's end-of-sequence token, ``<|im_end|>``
for SmolLM2, which closes the assistant's turn).

``clrs_insertion_sort`` reproduces CLRS-Text's (DeepMind, 2024) text format for ``insertion_sort`` without hints,
as its ``clrs._src.clrs_text`` code writes it (see :func:`clrs_insertion_sort`).
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Sequence

if TYPE_CHECKING:  # datasets is imported where a dataset is built, so the CLI and the constants need no datasets
    from datasets import Dataset

__all__ = [
    "TASKS", "CLRS_TASK", "ALL_TASKS", "SPLITS", "TRAINING_RANGES", "EVAL_LENGTHS", "TEMPLATES", "CANONICAL",
    "LIST_TASKS", "NEGATIVE_RATE", "Template", "templates", "solve", "render", "sample", "validate", "make_dataset",
    "clrs_insertion_sort", "context_examples", "chat_prompt", "chat_example", "chat_form",
]

TASKS: tuple[str, ...] = ("add", "sub", "mul", "less_than", "gcd", "factorial", "fib", "sort", "max", "min", "sum")
CLRS_TASK = "clrs_insertion_sort"
ALL_TASKS: tuple[str, ...] = TASKS + (CLRS_TASK,)
LIST_TASKS: tuple[str, ...] = ("sort", "max", "min", "sum")
SPLITS: tuple[str, ...] = ("train", "heldout")

#: Probability that an operand of add, sub, mul and less_than, or a list item, is negative.
NEGATIVE_RATE = 0.3

#: What training data covers: ``length`` is the inclusive range of lengths (see the module docstring for the unit
#: of each task); list elements take ``values`` (inclusive). Recipes cite these; evaluation goes beyond them.
TRAINING_RANGES: dict[str, dict] = {
    "add": {"length": (1, 10), "unit": "digits of the longer operand"},
    "sub": {"length": (1, 10), "unit": "digits of the longer operand"},
    "mul": {"length": (1, 5), "unit": "digits of the longer operand"},
    "less_than": {"length": (1, 10), "unit": "digits of the longer operand"},
    "gcd": {"length": (1, 6), "unit": "digits of the longer operand"},
    "factorial": {"length": (0, 12), "unit": "n"},
    "fib": {"length": (0, 30), "unit": "n"},
    "sort": {"length": (0, 16), "unit": "elements", "values": (-999999, 999999)},
    "max": {"length": (1, 16), "unit": "elements", "values": (-999999, 999999)},
    "min": {"length": (1, 16), "unit": "elements", "values": (-999999, 999999)},
    "sum": {"length": (0, 16), "unit": "elements", "values": (-999999, 999999)},
    CLRS_TASK: {"length": (4, 31), "unit": "elements", "values": (0.0, 0.999)},
}

#: The lengths evaluation reports by default: inside the training range and up to 4x its longest length
#: (10x10-digit mul is the stretch goal).
EVAL_LENGTHS: dict[str, tuple[int, ...]] = {
    "add": (1, 5, 10, 20, 40),
    "sub": (1, 5, 10, 20, 40),
    "mul": (1, 3, 5, 10),
    "less_than": (1, 5, 10, 20, 40),
    "gcd": (1, 3, 6, 12),
    "factorial": (3, 6, 12, 24, 48),
    "fib": (5, 10, 20, 30, 60, 120),
    "sort": (2, 4, 8, 16, 32, 64),
    "max": (2, 4, 8, 16, 32, 64),
    "min": (2, 4, 8, 16, 32, 64),
    "sum": (2, 4, 8, 16, 32, 64),
    CLRS_TASK: (4, 8, 16, 31),
}

#: The shortest length a task can have: its training range's (sort and sum take an empty list, max and min do not).
_MIN_LENGTH = {task: ranges["length"][0] for task, ranges in TRAINING_RANGES.items()}


@dataclass(frozen=True)
class Template:
    """A prompt wording of a task. Fields: ``{a}``, ``{b}``, ``{n}``, ``{xs}`` (a bracketed list) or
    ``{xs_spaced}`` (a space-separated list)."""

    id: str
    task: str
    text: str
    heldout: bool

    @property
    def bracketed(self) -> bool:
        return "{xs}" in self.text

    @property
    def symbol_before_b(self) -> bool:
        """Whether a symbol operator comes right before ``{b}`` (``{a}-{b}=``, ``Compute {a} - {b}.``): ``b`` is
        then non-negative, so that no prompt reads ``5--3=``."""
        return re.search(r"[-+*<>] ?\{b\}", self.text) is not None


_TRAIN, _HELDOUT = False, True
_TEMPLATE_TABLE: dict[str, list[tuple[str, str, bool]]] = {
    "add": [
        ("sym", "{a}+{b}=", _TRAIN),
        ("plus", "What is {a} plus {b}?", _TRAIN),
        ("add", "Add {a} and {b}.", _TRAIN),
        ("sum-of", "What is the sum of {a} and {b}?", _TRAIN),
        ("compute", "Compute {a} + {b}.", _TRAIN),
        ("calculate", "Calculate {a} plus {b}.", _HELDOUT),
        ("how-much", "How much is {a} plus {b}?", _HELDOUT),
        ("total", "Find the total of {a} and {b}.", _HELDOUT),
        ("add-to", "What do you get if you add {a} to {b}?", _HELDOUT),
    ],
    "sub": [
        ("sym", "{a}-{b}=", _TRAIN),
        ("minus", "What is {a} minus {b}?", _TRAIN),
        ("subtract", "Subtract {b} from {a}.", _TRAIN),
        ("difference", "What is the difference between {a} and {b}?", _TRAIN),
        ("compute", "Compute {a} - {b}.", _TRAIN),
        ("calculate", "Calculate {a} minus {b}.", _HELDOUT),
        ("how-much", "How much is {a} minus {b}?", _HELDOUT),
        ("take-away", "Take {b} away from {a}.", _HELDOUT),
        ("remains", "What remains when {b} is taken from {a}?", _HELDOUT),
    ],
    "mul": [
        ("sym", "{a}*{b}=", _TRAIN),
        ("times", "What is {a} times {b}?", _TRAIN),
        ("multiply", "Multiply {a} and {b}.", _TRAIN),
        ("product", "What is the product of {a} and {b}?", _TRAIN),
        ("compute", "Compute {a} * {b}.", _TRAIN),
        ("calculate", "Calculate {a} times {b}.", _HELDOUT),
        ("multiplied-by", "How much is {a} multiplied by {b}?", _HELDOUT),
        ("find-product", "Find the product of {a} and {b}.", _HELDOUT),
    ],
    "less_than": [
        ("less", "Is {a} less than {b}?", _TRAIN),
        ("sym", "{a}<{b}?", _TRAIN),
        ("smaller", "Is {a} smaller than {b}?", _TRAIN),
        ("greater", "Is {b} greater than {a}?", _TRAIN),
        ("lower", "Is {a} lower than {b}?", _HELDOUT),
        ("larger", "Is {b} larger than {a}?", _HELDOUT),
        ("numbers", "Is the number {a} less than the number {b}?", _HELDOUT),
    ],
    "gcd": [
        ("sym", "gcd({a}, {b})=", _TRAIN),
        ("greatest", "What is the greatest common divisor of {a} and {b}?", _TRAIN),
        ("find", "Find the gcd of {a} and {b}.", _TRAIN),
        ("gcd-of", "What is the gcd of {a} and {b}?", _TRAIN),
        ("hcf", "What is the highest common factor of {a} and {b}?", _HELDOUT),
        ("divides-both", "What is the largest number that divides both {a} and {b}?", _HELDOUT),
        ("compute", "Compute the greatest common divisor of {a} and {b}.", _HELDOUT),
    ],
    "factorial": [
        ("sym", "{n}!=", _TRAIN),
        ("what", "What is {n} factorial?", _TRAIN),
        ("of", "What is the factorial of {n}?", _TRAIN),
        ("call", "factorial({n})=", _TRAIN),
        ("calculate", "Calculate the factorial of {n}.", _HELDOUT),
        ("how-much", "How much is {n} factorial?", _HELDOUT),
        ("equal", "What is {n}! equal to?", _HELDOUT),
    ],
    "fib": [
        ("sym", "fib({n})=", _TRAIN),
        ("number", "What is Fibonacci number {n}?", _TRAIN),
        ("call", "fibonacci({n})=", _TRAIN),
        ("compute", "Compute fib({n}).", _TRAIN),
        ("index", "What is the Fibonacci number at index {n}?", _HELDOUT),
        ("calculate", "Calculate fibonacci({n}).", _HELDOUT),
        ("give", "Give the Fibonacci number with index {n}.", _HELDOUT),
    ],
    "sort": [
        ("arrow", "sort: {xs_spaced} ->", _TRAIN),
        ("list", "Sort the list {xs}.", _TRAIN),
        ("ascending", "Sort {xs_spaced} in ascending order.", _TRAIN),
        ("call", "sorted({xs})=", _TRAIN),
        ("increasing", "Put {xs} in increasing order.", _HELDOUT),
        ("arrange", "Arrange the numbers {xs_spaced} from smallest to largest.", _HELDOUT),
        ("order", "Order the list {xs} from low to high.", _HELDOUT),
    ],
    "max": [
        ("largest", "What is the largest number in {xs}?", _TRAIN),
        ("call", "max({xs})=", _TRAIN),
        ("arrow", "max: {xs_spaced} ->", _TRAIN),
        ("find", "Find the maximum of {xs}.", _TRAIN),
        ("biggest", "Which number in {xs} is the biggest?", _HELDOUT),
        ("greatest", "What is the greatest of {xs_spaced}?", _HELDOUT),
        ("maximum-value", "Give the maximum value of the list {xs}.", _HELDOUT),
    ],
    "min": [
        ("smallest", "What is the smallest number in {xs}?", _TRAIN),
        ("call", "min({xs})=", _TRAIN),
        ("arrow", "min: {xs_spaced} ->", _TRAIN),
        ("find", "Find the minimum of {xs}.", _TRAIN),
        ("smallest-which", "Which number in {xs} is the smallest?", _HELDOUT),
        ("least", "What is the least of {xs_spaced}?", _HELDOUT),
        ("minimum-value", "Give the minimum value of the list {xs}.", _HELDOUT),
    ],
    "sum": [
        ("sum-of", "What is the sum of {xs}?", _TRAIN),
        ("call", "sum({xs})=", _TRAIN),
        ("arrow", "sum: {xs_spaced} ->", _TRAIN),
        ("add-up", "Add up the numbers {xs_spaced}.", _TRAIN),
        ("add-up-to", "What do the numbers in {xs} add up to?", _HELDOUT),
        ("total", "Find the total of the list {xs}.", _HELDOUT),
        ("compute", "Compute the sum of {xs_spaced}.", _HELDOUT),
    ],
}

#: Every template by id (``task/name``).
TEMPLATES: dict[str, Template] = {
    f"{task}/{name}": Template(f"{task}/{name}", task, text, heldout)
    for task, rows in _TEMPLATE_TABLE.items() for name, text, heldout in rows
}

#: The canonical prompts the shipped model must answer, with their answers: the specification that tests check the
#: training templates reproduce (answers recomputed by :func:`solve`).
CANONICAL: list[tuple[str, str]] = [
    ("81273+4406=", "85679"),
    ("81273-4406=", "76867"),
    ("734*58=", "42572"),
    ("What is 81273 plus 4406?", "85679"),
    ("What is 81273 minus 4406?", "76867"),
    ("What is 734 times 58?", "42572"),
    ("Add 3 and 4.", "7"),
    ("Is 81273 less than 4406?", "no"),
    ("gcd(84, 36)=", "12"),
    ("7!=", "5040"),
    ("fib(20)=", "6765"),
    ("sort: 5 3 9 1 ->", "1 3 5 9"),
    ("Sort the list [5, 3, 9, 1].", "[1, 3, 5, 9]"),
    ("What is the largest number in [5, 3, 9, 1]?", "9"),
    ("What is the sum of [5, 3, 9, 1]?", "18"),
    ("4406-81273=", "-76867"),
    ("What is -5 plus 12?", "7"),
    ("Sort the list [-3, 1200, 5].", "[-3, 5, 1200]"),
    ("What is the largest number in [5, 3, 9, 1, 1200]?", "1200"),
    ("gcd(2000, 3000)=", "1000"),
    ("sort: 55 ->", "55"),
]


def templates(task: str, split: str = "train") -> list[Template]:
    """The templates of ``task`` used in ``split`` (training and held-out templates are disjoint)."""
    validate([task], split=split)
    return [t for t in TEMPLATES.values() if t.task == task and t.heldout == (split == "heldout")]


def _fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


_SOLVERS: dict[str, Callable[..., object]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "less_than": lambda a, b: a < b,
    "gcd": lambda a, b: math.gcd(a, b),
    "factorial": lambda n: math.factorial(n),
    "fib": lambda n: _fib(n),
    "sort": lambda xs: sorted(xs),
    "max": lambda xs: max(xs),
    "min": lambda xs: min(xs),
    "sum": lambda xs: sum(xs),
}


def solve(task: str, **operands) -> object:
    """The reference result of ``task`` on ``operands`` (``a`` and ``b``, ``n``, or ``xs``), computed in Python."""
    return _SOLVERS[task](**operands)


def _format_list(xs: Sequence, bracketed: bool) -> str:
    return "[" + ", ".join(map(str, xs)) + "]" if bracketed else " ".join(map(str, xs))


def _separator(prompt: str) -> str:
    return "" if prompt.endswith("=") else " "


def render(template_id: str, **operands) -> dict:
    """One example (a dataset row) of template ``template_id`` on ``operands``, its answer computed by
    :func:`solve`."""
    template = TEMPLATES[template_id]
    fields = dict(operands)
    if "xs" in operands:
        fields = {"xs": _format_list(operands["xs"], True), "xs_spaced": _format_list(operands["xs"], False)}
    prompt = template.text.format(**fields)
    result = solve(template.task, **operands)
    if isinstance(result, bool):
        answer = "yes" if result else "no"
    elif isinstance(result, list):
        answer = _format_list(result, template.bracketed)
    else:
        answer = str(result)
    return {"prompt": prompt, "answer": answer, "text": prompt + _separator(prompt) + answer, "task": template.task,
            "length": _length(operands), "template": template_id}


def _length(operands: dict) -> int:
    if "xs" in operands:
        return len(operands["xs"])
    if "n" in operands:
        return operands["n"]
    return max(len(str(abs(operands["a"]))), len(str(abs(operands["b"]))))


def _number(rng: random.Random, digits: int) -> int:
    """Uniform over the ``digits``-digit numbers (0-9 for one digit)."""
    return rng.randint(0, 9) if digits == 1 else rng.randint(10 ** (digits - 1), 10 ** digits - 1)


def _pair(rng: random.Random, length: int) -> tuple[int, int]:
    """Two numbers, the longer of ``length`` digits, the other of a uniform 1..length digits, in random order."""
    a, b = _number(rng, length), _number(rng, rng.randint(1, length))
    return (a, b) if rng.random() < 0.5 else (b, a)


def _gcd_pair(rng: random.Random, length: int) -> tuple[int, int]:
    """Two positive multiples of a common factor ``g`` (of a uniform 1..length digits), the longer of ``length``
    digits: uniform pairs would have gcd 1 most of the time."""
    g = max(1, _number(rng, rng.randint(1, length)))
    low, high = max(1, 10 ** (length - 1)), 10 ** length - 1
    a = g * rng.randint(-(-low // g), high // g)
    b = g * rng.randint(1, high // g)
    return (a, b) if rng.random() < 0.5 else (b, a)


def _signed(rng: random.Random, value: int) -> int:
    """``value``, negated with probability :data:`NEGATIVE_RATE`."""
    return -value if rng.random() < NEGATIVE_RATE else value


def _item(rng: random.Random) -> int:
    """A list item: 1-3 digits (probability 0.8) or 4-6 digits, negative with probability :data:`NEGATIVE_RATE`."""
    digits = rng.randint(1, 3) if rng.random() < 0.8 else rng.randint(4, 6)
    return _signed(rng, _number(rng, digits))


def _operands(task: str, rng: random.Random, length: int, max_value: Optional[int] = None,
              template: Optional[Template] = None) -> dict:
    """Operands of ``task`` at ``length``; ``template`` (the one they are rendered with) keeps ``b`` non-negative
    where a symbol operator comes right before it."""
    if task in ("add", "sub", "mul", "less_than"):
        a, b = _pair(rng, length)
        a = _signed(rng, a)
        b = b if template is not None and template.symbol_before_b else _signed(rng, b)
        return {"a": a, "b": b}
    if task == "gcd":
        a, b = _gcd_pair(rng, length)
        return {"a": a, "b": b}
    if task in ("factorial", "fib"):
        return {"n": length}
    if max_value is not None:
        return {"xs": [rng.randint(0, max_value) for _ in range(length)]}
    return {"xs": [_item(rng) for _ in range(length)]}


def sample(task: str, rng: random.Random, length: int, *, split: str = "train", max_value: Optional[int] = None,
           template_id: Optional[str] = None) -> dict:
    """One example of ``task`` at ``length`` (a dataset row, see :func:`render`), drawn from ``rng``: a template of
    ``split`` (or ``template_id``), then operands for it. An empty list takes a bracketed template."""
    if task == CLRS_TASK:
        return _clrs_example(rng, length)
    if template_id is not None:
        template = TEMPLATES[template_id]
    else:
        choices = templates(task, split)
        if task in LIST_TASKS and length == 0:
            choices = [t for t in choices if t.bracketed]
        template = rng.choice(choices)
    return render(template.id, **_operands(task, rng, length, max_value, template))


def _clrs_truncate(value: float) -> float:
    """CLRS-Text's ``truncate_decimals=3``: ``numpy.trunc(x * 10**3) / 10**3`` (truncated, not rounded)."""
    return math.trunc(value * 1000) / 1000


def _clrs_example(rng: random.Random, length: int) -> dict:
    keys = [_clrs_truncate(rng.random()) for _ in range(length)]
    prompt = f"insertion_sort:\nkey: [{' '.join(map(str, keys))}]\npred:\n"
    answer = f"[{' '.join(map(str, sorted(keys)))}]"
    return {"prompt": prompt, "answer": answer, "text": prompt + answer + "\n\n", "task": CLRS_TASK,
            "length": length, "template": "clrs"}


def validate(tasks: Iterable[str], lengths: Optional[Iterable[int]] = None, split: str = "train",
             max_value: Optional[int] = None) -> None:
    """Raise ``ValueError`` naming the problem: an unknown task or split, a length a task cannot have, a held-out
    split of the CLRS task (it has one format only), or a ``max_value`` that is not a positive int or is given for
    a task without a list. Callers check a request before loading a model."""
    tasks = list(tasks)
    if not tasks:
        raise ValueError("no tasks given")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    for task in tasks:
        if task not in ALL_TASKS:
            raise ValueError(f"unknown task {task!r} (known: {', '.join(ALL_TASKS)})")
        if task == CLRS_TASK and split == "heldout":
            raise ValueError(f"{CLRS_TASK} has CLRS-Text's format only: it has no held-out templates")
        for length in lengths or ():
            if not isinstance(length, int) or length < _MIN_LENGTH[task]:
                raise ValueError(f"length {length!r} is not valid for {task}: a length is an int >= "
                                 f"{_MIN_LENGTH[task]} ({TRAINING_RANGES[task]['unit']})")
    if max_value is not None:
        if isinstance(max_value, bool) or not isinstance(max_value, int) or max_value < 1:
            raise ValueError(f"max_value must be a positive int, got {max_value!r}")
        unused = [t for t in tasks if t not in LIST_TASKS]
        if unused:
            raise ValueError(f"max_value caps list items; {', '.join(unused)} has no list (list tasks: {', '.join(LIST_TASKS)})")


def make_dataset(tasks: Sequence[str], n: int, *, seed: int, split: str = "train",
                 lengths: Optional[Sequence[int]] = None, max_value: Optional[int] = None) -> Dataset:
    """``n`` examples of ``tasks`` (round robin, so tasks are balanced), deterministic given ``seed``.

    ``split="heldout"`` uses only the held-out templates. Each example's length is drawn uniformly from ``lengths``
    (default: the task's :data:`TRAINING_RANGES`), so evaluation can ask for one length at a time. Each task draws
    from its own random stream (seeded by ``seed``, ``split`` and the task), so adding a task does not change the
    examples of the others.

    ``max_value`` caps list items (sort, max, min, sum: uniform over 0..max_value instead of signed numbers of 1-6
    digits), for experiments with a small library value size."""
    from datasets import Dataset

    tasks = list(tasks)
    validate(tasks, lengths, split, max_value)
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    streams = {task: random.Random(f"nclama/{seed}/{split}/{task}") for task in dict.fromkeys(tasks)}
    rows = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        rng = streams[task]
        low, high = TRAINING_RANGES[task]["length"]
        length = rng.choice(list(lengths) if lengths else range(low, high + 1))
        rows.append(sample(task, rng, length, split=split, max_value=max_value))
    features = _features()
    return Dataset.from_list(rows, features=features)


def clrs_insertion_sort(n: int, *, seed: int, lengths: Optional[Sequence[int]] = None) -> Dataset:
    """``n`` insertion-sort examples in CLRS-Text's format (no hints), lengths uniform over ``lengths`` (default
    4..31), with the columns of :func:`make_dataset` (task ``clrs_insertion_sort``, template ``clrs``).

    The format, as ``clrs._src.clrs_text.clrs_utils.format_clrs_example`` writes it: keys uniform in [0, 1),
    truncated to 3 decimals and written by ``str`` (``0.43``, not ``0.430``), space-separated in brackets::

        prompt: "insertion_sort:\\nkey: [0.549 0.715 0.603 0.545]\\npred:\\n"
        answer: "[0.545 0.549 0.603 0.715]"
        text:   prompt + answer + "\\n\\n"

    (``text`` is CLRS-Text's ``question + answer``, whose answer ends with a blank line.)"""
    return make_dataset([CLRS_TASK], n, seed=seed, lengths=lengths)



#: Statements with numbers and nothing to compute, for training only (the adversarial set has its own, disjoint
#: ones). Each is a frame whose word fields ({name}, {things}, ...) draw from the word lists below and whose number
#: fields draw from the ranges given, so that the training sees thousands of different statements and most words a
#: statement can hold: the gate's word table (``nc_gate_reader: words``) learns that the words of a statement ask
#: for nothing, not that twelve sentences do. What follows them is text, not a result.
_TRAINING_STATEMENTS: tuple[tuple[str, dict[str, tuple[int, int]]], ...] = (
    ("The bus leaves at {h} from stop {s}.", {"h": (1, 12), "s": (1, 99)}),
    ("There are {n} {things} in basket {b}.", {"n": (2, 500), "b": (1, 30)}),
    ("Lesson {l} takes {m} minutes.", {"l": (1, 40), "m": (10, 120)}),
    ("The hotel has {f} floors and {r} rooms.", {"f": (2, 90), "r": (10, 2000)}),
    ("{name} ran {k} kilometres in {m} minutes.", {"k": (1, 42), "m": (5, 300)}),
    ("Box {b} weighs {w} kilograms.", {"b": (1, 999), "w": (1, 80)}),
    ("The museum opened in {year} with {n} paintings.", {"year": (1800, 2024), "n": (10, 9999)}),
    ("We waited {m} minutes for bus {b}.", {"m": (2, 90), "b": (1, 400)}),
    ("The stadium seats {n} fans.", {"n": (1000, 99999)}),
    ("Values so far: [{a}, {b}].", {"a": (0, 100), "b": (0, 100)}),
    ("The river is {k} kilometres long and {w} metres wide.", {"k": (10, 6000), "w": (5, 900)}),
    ("It was -{t} degrees at {h} o'clock.", {"t": (1, 30), "h": (1, 12)}),
    ("{name} {did} {n} {things} on {day}.", {"n": (2, 90)}),
    ("{name} {did} {a}, {b} and {c} {things} in three weeks.", {"a": (1, 60), "b": (1, 60), "c": (1, 60)}),
    ("On {day} {name} {did} {n} {things} at the {place}.", {"n": (2, 400)}),
    ("The {place} on {street} Street has {n} {things}.", {"n": (2, 900)}),
    ("{name} lives at number {n}, {street} Road.", {"n": (1, 300)}),
    ("{name} was {a} years old in {year}.", {"a": (2, 99), "year": (1900, 2024)}),
    ("In {year} the {place} had {n} visitors.", {"year": (1850, 2024), "n": (100, 99999)}),
    ("The {thing} costs {n} euros at the {place}.", {"n": (2, 5000)}),
    ("Our {place} is {n} metres from the {place2}.", {"n": (10, 9000)}),
    ("{name} read pages {a} to {b} on {day}.", {"a": (1, 200), "b": (201, 600)}),
    ("The {thing} was {n} centimetres long and {m} wide.", {"n": (2, 400), "m": (1, 99)}),
    ("Shelf {a} holds {n} {things} and {m} {things2}.", {"a": (1, 40), "n": (2, 300), "m": (2, 300)}),
    ("The game ended {a} to {b} after {m} minutes.", {"a": (0, 9), "b": (0, 9), "m": (60, 130)}),
    ("{name} owes -{n} euros on card {c}.", {"n": (1, 9999), "c": (1, 9)}),
    ("The readings were {a}, {b}, {c} and {d} on {day}.", {"a": (0, 99), "b": (0, 99), "c": (0, 99), "d": (0, 99)}),
    ("Her notes list [{a}, {b}, {c}] from the {place}.", {"a": (0, 999), "b": (0, 999), "c": (0, 999)}),
    ("Version {a} of the {thing} came out in {year}.", {"a": (2, 30), "year": (1990, 2024)}),
    ("{name} planted {n} {things} in row {r}.", {"n": (2, 80), "r": (1, 40)}),
    ("At {h}:{m} the {thing} was still on table {t}.", {"h": (10, 23), "m": (10, 59), "t": (1, 60)}),
    ("Bus {b} stops at the {place} every {m} minutes.", {"b": (1, 400), "m": (2, 60)}),
    ("The code for locker {a} is {n}.", {"a": (1, 300), "n": (1000, 9999)}),
    ("{name} and {name2} painted {n} {things} together.", {"n": (2, 200)}),
    ("The water in the {place} stayed at {t} degrees.", {"t": (-20, 40)}),
    ("Day {d} of the trip took us {k} kilometres north.", {"d": (1, 30), "k": (5, 900)}),
)
#: The word fields of the statements: names, places, things, days, streets, verbs.
_STATEMENT_WORDS: dict[str, tuple[str, ...]] = {
    "name": ("Anna", "Ben", "Carlos", "Dana", "Eli", "Farah", "Grace", "Hugo", "Ines", "Jon", "Kiri", "Leo", "Mia",
             "Nora", "Omar", "Paul", "Rosa", "Sam", "Tara", "Uma", "Victor", "Wen", "Yusuf", "Zoe", "my sister",
             "the teacher", "our neighbour", "the driver", "a student", "the baker"),
    "place": ("library", "school", "park", "station", "market", "garden", "office", "farm", "harbour", "bakery",
              "village", "hospital", "cinema", "factory", "bridge", "castle", "shop", "kitchen", "studio", "island"),
    "things": ("apples", "chairs", "books", "tickets", "cars", "birds", "coins", "letters", "boxes", "trees",
               "photos", "cups", "shirts", "lamps", "bikes", "stones", "cookies", "flowers", "songs", "maps",
               "candles", "pencils", "plates", "rabbits", "boats"),
    "thing": ("lamp", "table", "bicycle", "painting", "coat", "clock", "camera", "guitar", "kettle", "carpet",
              "ladder", "phone", "blanket", "mirror", "statue", "tent", "bottle", "rope", "helmet", "basket"),
    "day": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "the weekend",
            "her birthday", "the first day"),
    "street": ("Oak", "Mill", "King", "Church", "Lake", "River", "High", "Park", "Hill", "Station", "Bridge", "Green"),
    "did": ("bought", "sold", "found", "counted", "collected", "washed", "painted", "carried", "packed", "lost",
            "baked", "drew", "fixed", "sent", "picked", "moved", "wrapped", "cleaned", "returned", "borrowed"),
}
_CONTINUATIONS = ("That is all we know.", "It was a quiet day.", "Everyone was there.", "Nothing else changed.",
                  "The rest is history.", "Thank you.", "See you there.")


def _statement(rng: random.Random) -> str:
    text, ranges = rng.choice(_TRAINING_STATEMENTS)
    fields = {field: rng.randint(low, high) for field, (low, high) in ranges.items()}
    for field, words in (("name", "name"), ("name2", "name"), ("place", "place"), ("place2", "place"),
                         ("things", "things"), ("things2", "things"), ("thing", "thing"), ("day", "day"),
                         ("street", "street"), ("did", "did")):
        fields[field] = rng.choice(_STATEMENT_WORDS[words])
    sentence = text.format(**fields)
    return sentence[0].upper() + sentence[1:]


def context_examples(n: int, *, seed: int, tasks: Sequence[str] = TASKS) -> "Dataset":
    """Training examples of text around the questions, ``n`` in all (columns of :func:`make_dataset`): a third
    are statements with numbers followed by text (task ``statement``: nothing to compute, so the model learns not
    to call the library there), a third a training question after such a statement, a third a training question
    after another one (the answer answers the second). Questions are at the training lengths, at most 6."""
    from datasets import Dataset

    rng = random.Random(f"nclama/{seed}/context")
    rows = []
    for i in range(n):
        if i % 3 == 0:
            prompt = _statement(rng)
            answer = rng.choice(_CONTINUATIONS)
            rows.append({"prompt": prompt, "answer": answer, "text": prompt + " " + answer, "task": "statement",
                         "length": 0, "template": "statement"})
            continue
        task = tasks[(i // 3) % len(tasks)]
        low, high = TRAINING_RANGES[task]["length"]
        question = sample(task, rng, rng.randint(low, min(high, 6)))
        if i % 3 == 1:
            before = _statement(rng)
        else:
            first = rng.choice([t for t in TASKS if t != task])
            flow, fhigh = TRAINING_RANGES[first]["length"]
            before = sample(first, rng, rng.randint(flow, min(fhigh, 6)))["prompt"]
        rows.append({**question, "prompt": before + " " + question["prompt"], "text": before + " " + question["text"]})
    return Dataset.from_list(rows, features=_features())


def _features():
    """The columns of every task dataset."""
    from datasets import Features, Value

    return Features({"prompt": Value("string"), "answer": Value("string"), "text": Value("string"),
                     "task": Value("string"), "length": Value("int32"), "template": Value("string")})


def chat_prompt(prompt: str, tokenizer, system: Optional[str] = None) -> str:
    """``prompt`` as the user's turn of ``tokenizer``'s chat template, up to the start of the assistant's turn (the
    text ``apply_chat_template(..., add_generation_prompt=True)`` renders, with the template's default system message
    unless ``system`` is given). Tokenized without added special tokens, it gives the template's own token ids."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template: chat-form prompts need an instruct model's tokenizer")
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def chat_example(row: dict, tokenizer) -> dict:
    """A task example (a dataset row) in chat form: the prompt in the user's turn, the answer right after the start
    of the assistant's turn (no separator); the other columns unchanged."""
    prompt = chat_prompt(row["prompt"], tokenizer)
    return {**row, "prompt": prompt, "text": prompt + row["answer"]}


def chat_form(dataset: "Dataset", tokenizer, fraction: float = 1.0, *, seed: int = 0) -> "Dataset":
    """``dataset`` with a seeded ``fraction`` of its rows (each independently, probability ``fraction``) in chat form
    (:func:`chat_example`), the rest as they are, in the same order."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    from datasets import Dataset

    rng = random.Random(f"nclama/{seed}/chat")
    rows = [chat_example(row, tokenizer) if rng.random() < fraction else row for row in dataset.to_list()]
    return Dataset.from_list(rows, features=dataset.features)
