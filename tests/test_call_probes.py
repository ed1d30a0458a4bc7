"""nclama probe-calls: linear probes of a base's states, trained on the training wordings and asked the task of the
held-out ones, reading the call site or the mean of the words (what the call readers read)."""
import pytest
import torch

from modeling_nclama.toolchain.call_probes import format_probes, probe_calls, read_states
from modeling_nclama.toolchain.tokenization import default_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_readings_are_the_call_readers():
    states = torch.tensor([[1.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 3.0]])
    words = torch.tensor([True, False, True])
    normed = torch.nn.functional.layer_norm(states, (3,))
    assert torch.allclose(read_states(states, words, "site"), normed[2])
    assert torch.allclose(read_states(states, words, "words"), (normed[0] + normed[2]) / 2)  # the digit's state left out
    with pytest.raises(ValueError, match="no words"):
        read_states(states, torch.zeros(3, dtype=torch.bool), "words")
    with pytest.raises(ValueError, match="reading must be one of"):
        read_states(states, words, "max")


def test_a_probe_table_on_a_small_llama(make_llama):
    tok = default_tokenizer()
    rows = probe_calls(make_llama(tok), tok, layers=[0, -1], n_train=44, n_heldout=22, forms=["plain"], steps=50)
    assert [(r["layer"], r["reading"]) for r in rows] == [(0, "site"), (0, "words"), (-1, "site"), (-1, "words")]
    assert all(0.0 <= r["train"] <= 1.0 and 0.0 <= r["heldout"] <= 1.0 for r in rows)
    assert max(r["train"] for r in rows) > 0.5  # 44 prompts of 11 tasks: a linear probe fits most of them
    assert format_probes(rows).splitlines()[2].startswith("| plain | 0 | site |")
    with pytest.raises(ValueError, match="forms are"):
        probe_calls(make_llama(tok), tok, layers=[0], n_train=11, n_heldout=11, forms=["spoken"])
