"""The tool-use baseline: calls written from task rows, and the evaluator that answers them."""
import pytest

from modeling_nclama.toolchain.tasks import make_dataset, templates
from modeling_nclama.toolchain.tool_use import TOOL_TASKS, answer_call, tool_call, tool_text


def test_every_template_gives_a_call_whose_answer_is_right():
    for task in TOOL_TASKS:
        for split in ("train", "heldout"):
            for row in make_dataset([task], 40, seed=3, split=split).to_list():
                call = tool_call(row)
                assert answer_call(call) == row["answer"], (row["prompt"], call)
    assert len({t.id for task in TOOL_TASKS for t in templates(task)}) >= 16


def test_training_text_and_examples():
    row = make_dataset(["sub"], 1, seed=0).to_list()[0]
    assert tool_text(row).startswith(row["prompt"]) and tool_text(row).endswith(tool_call(row))
    assert tool_call({"task": "sub", "template": "sub/subtract", "prompt": "Subtract 5 from 9."}) == "[[9-5]]"
    assert tool_call({"task": "less_than", "template": "less_than/greater", "prompt": "Is 7 greater than 3?"}) == "[[7>3]]"
    assert answer_call("12 [[734*58]] tail") == "42572" and answer_call("[[3<4]]") == "yes" and answer_call("no call") is None
    with pytest.raises(ValueError, match="not 'sort'"):
        tool_call({"task": "sort", "template": "sort/arrow", "prompt": "sort: 1 2 ->"})
