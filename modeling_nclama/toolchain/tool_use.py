"""The tool-use baseline: a plain LLaMA fine-tuned to write a call, ``[[81273+4406]]``, that an external Python
evaluator answers, instead of the answer itself (the arithmetic tasks: add, sub, mul, less-than).

This is what reviewers asked NCLlama to be compared with: the model still has to read the operands and copy them
into the call, token by token, but no longer has to compute. ``tool_text`` writes the training text of a task row,
``answer_call`` is the evaluator (a regular expression and Python integers; nothing is ``eval``-ed).
"""
from __future__ import annotations

import re
from typing import Optional

from .tasks import TEMPLATES

TOOL_TASKS = ("add", "sub", "mul", "less_than")
_OPERATOR = {"add": "+", "sub": "-", "mul": "*", "less_than": "<"}
CALL = re.compile(r"\[\[(-?\d+)([-+*<>])(-?\d+)\]\]")
# a number with its sign: a minus right after a digit is the operator ("7-10"), not a sign
NUMBER = re.compile(r"(?<!\d)-?\d+")


def tool_call(row: dict) -> str:
    """The call that answers a task row: its operands in the order the prompt writes them, and the operation the
    template asks for ("Subtract 5 from 9." -> ``[[9-5]]``, "Is 7 greater than 3?" -> ``[[7>3]]``)."""
    task, template = row["task"], TEMPLATES[row["template"]].text
    if task not in TOOL_TASKS:
        raise ValueError(f"the tool-use baseline covers {', '.join(TOOL_TASKS)}, not {task!r}")
    numbers = NUMBER.findall(row["prompt"])
    order = sorted(("a", "b"), key=lambda field: template.index("{" + field + "}"))  # fields as the prompt has them
    value = dict(zip(order, numbers))
    if task == "less_than" and order == ["b", "a"]:  # "Is {b} greater than {a}?"
        return f"[[{value['b']}>{value['a']}]]"
    return f"[[{value['a']}{_OPERATOR[task]}{value['b']}]]"


def tool_text(row: dict) -> str:
    """Training text of the tool-use baseline: the prompt, the separator the answer would have, the call."""
    separator = row["text"][len(row["prompt"]) : len(row["text"]) - len(row["answer"])]
    return row["prompt"] + separator + tool_call(row)


def answer_call(generated: str) -> Optional[str]:
    """The evaluator: the answer to the first call in ``generated`` (None if there is none): an integer for
    + - *, "yes" or "no" for < and >."""
    match = CALL.search(generated)
    if match is None:
        return None
    a, op, b = int(match.group(1)), match.group(2), int(match.group(3))
    if op in "<>":
        return "yes" if (a < b if op == "<" else a > b) else "no"
    return str(a + b if op == "+" else a - b if op == "-" else a * b)
