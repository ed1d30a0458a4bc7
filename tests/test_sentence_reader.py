"""The sentence call reader (nc_call_reader "sentence"): the mean of the normalized hidden states of the words of
the position's sentence, at the layer nc_call_layer names; the same token by token as in one pass."""
import pytest
import torch
from transformers import DynamicCache

from modeling_nclama import standard_library
from modeling_nclama.modeling_nclama import NCLlamaForCausalLM
from modeling_nclama.toolchain.tokenization import default_tokenizer, reader_tokens

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


@pytest.fixture(scope="module")
def model(tok, make_llama):
    model = NCLlamaForCausalLM.from_llama(make_llama(tok), standard_library(256), reader_tokens=reader_tokens(tok),
                                          nc_programs=["long_add", "long_sub", "sort_numbers"],
                                          nc_call_reader="sentence", nc_call_layer=0, nc_layer=-1,
                                          nc_residual_injection=False)
    with torch.no_grad():
        model.nc_heads.gate_scale.fill_(1.0)
    return model.eval()


def test_the_call_reader_reads_its_own_layer(model, tok):
    ids = torch.tensor([tok("What is 3 plus 4?")["input_ids"]])
    seen = []
    with torch.no_grad():
        out = model.model(input_ids=ids, output_hidden_states=True)
        model.model(input_ids=ids, at_layer=lambda hidden, calls=None: seen.append((hidden, calls)) or hidden)
    hidden, calls = seen[0]
    assert torch.equal(calls, out.hidden_states[1])  # layer 0's output
    assert torch.equal(hidden, out.last_hidden_state)  # the other heads: the last layer, after the norm


def test_the_mean_is_of_the_words_of_the_sentence_so_far(model, tok):
    """Digits and list punctuation are no words: their states do not count; a new sentence starts its own mean."""
    reader = model.nc_heads.call
    ids = torch.tensor([tok("Sort the list [5, 1]. Add 3 and 4.")["input_ids"]])
    hidden = torch.randn(1, ids.shape[1], model.config.hidden_size)
    logits, carried = reader(ids, hidden, None)
    words = model.nc_heads.sentences.words(ids)[0]
    loud = hidden.clone()
    loud[0, ~words] *= 1000.0  # whatever the numbers' states say
    assert torch.allclose(reader(ids, loud, None)[0], logits, atol=1e-5)
    segment, _ = model.nc_heads.sentences(ids)
    second = int((segment[0] == segment[0, -1]).nonzero()[0])  # where " Add 3 and 4." starts
    assert tok.decode(ids[0, second:]).strip() == "Add 3 and 4."
    normed = torch.nn.functional.layer_norm(hidden[0], hidden.shape[-1:])
    expected = normed[second:][words[second:]].mean(0)
    assert torch.allclose(logits[0, -1], reader.scores(expected), atol=1e-5)
    assert float(carried[0, -1, -1]) == float(words[second:].sum())  # the count of the second sentence's words


def test_token_by_token_as_in_one_pass(model, tok):
    ids = tok("What is 3 plus 4? Sort the list [5, 1].")["input_ids"]
    cache, stepped = DynamicCache(), []
    with torch.no_grad():
        for t in range(len(ids)):
            stepped.append(model(input_ids=torch.tensor([ids[t : t + 1]]), cache=cache, use_cache=True).logits[0, -1])
        whole = model(input_ids=torch.tensor([ids])).logits[0]
    assert torch.allclose(torch.stack(stepped), whole, atol=1e-4)


def test_the_call_layer_comes_no_later_than_the_heads_layer(tok, make_llama):
    with pytest.raises(Exception, match="nc_call_layer must be a layer at or before nc_layer"):
        NCLlamaForCausalLM.from_llama(make_llama(tok), standard_library(256), reader_tokens=reader_tokens(tok),
                                      nc_programs=["long_add"], nc_call_reader="sentence", nc_layer=0, nc_call_layer=1)
