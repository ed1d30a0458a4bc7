"""What transformers' generation tests check, on the shipped nclama-tiny with its gate open (its library answers
these prompts): every way into ``generate`` gives the answer that plain greedy decoding from token ids gives, and
the interpreter's state follows the KV cache wherever generation moves it (inputs_embeds prompts, beam reordering,
cropping in assisted decoding, repeated rows, a static cache, continuing from a cache, packed sequences)."""
from pathlib import Path

import pytest
import torch

from modeling_nclama import Library, LibraryError
from modeling_nclama.modeling_nclama import NCLlamaForCausalLM, interpreter_state

pytestmark = pytest.mark.usefixtures("one_thread")

SHIPPED = Path(__file__).resolve().parents[1] / "hub_assets" / "nclama-tiny"
PROMPTS = ["81273+4406=", "Sort the list [5, 3, 9, 1] ->", "gcd(84, 36)=", "What is 16 times 23?"]
NEW = 10


@pytest.fixture(scope="module")
def shipped():
    from transformers import AutoTokenizer

    return NCLlamaForCausalLM.from_pretrained(SHIPPED).eval(), AutoTokenizer.from_pretrained(SHIPPED)


def ids_of(tok, prompt):
    return torch.tensor([tok(prompt)["input_ids"]])


def greedy(model, ids, **kwargs):
    kwargs.setdefault("use_cache", True)
    return model.generate(ids, max_new_tokens=NEW, do_sample=False, **kwargs)[:, ids.shape[1]:]


@pytest.fixture(scope="module")
def answers(shipped):
    """Greedy answers from token ids, every step recomputed from the whole sequence (no cache): the reference; the
    library's answers (checked: the right numbers)."""
    model, tok = shipped
    out = {p: greedy(model, ids_of(tok, p), use_cache=False) for p in PROMPTS}
    assert tok.decode(out["81273+4406="][0], skip_special_tokens=True).strip() == str(81273 + 4406)
    assert tok.decode(out["What is 16 times 23?"][0], skip_special_tokens=True).strip() == str(16 * 23)
    return out


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_from_inputs_embeds_equals_greedy_from_ids(shipped, answers, prompt):
    model, tok = shipped
    ids = ids_of(tok, prompt)
    embeds = model.get_input_embeddings()(ids)
    out = model.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), max_new_tokens=NEW,
                         do_sample=False, use_cache=True)
    assert torch.equal(out, answers[prompt])


def test_a_soft_prompt_vector_reads_as_no_token(shipped):
    model, tok = shipped
    ids = ids_of(tok, "81273+4406=")
    embeds = model.get_input_embeddings()(ids)
    embeds[0, 0] += 0.01  # no token's embedding
    read = model.ids_of_embeddings(embeds)
    assert read[0, 0].item() == model.config.bos_token_id and torch.equal(read[0, 1:], ids[0, 1:])


@pytest.mark.parametrize("prompt", PROMPTS)
def test_prompt_lookup_decoding_equals_greedy(shipped, answers, prompt):
    """Prompt lookup proposes the prompt's own n-grams as candidates; the rejected ones are cropped from the cache,
    and the interpreter's state with them."""
    model, tok = shipped
    assert torch.equal(greedy(model, ids_of(tok, prompt), prompt_lookup_num_tokens=3), answers[prompt])


def test_assisted_decoding_equals_greedy(shipped, answers):
    model, tok = shipped
    for prompt in PROMPTS[:2]:
        assert torch.equal(greedy(model, ids_of(tok, prompt), assistant_model=model), answers[prompt])


def test_a_cropped_state_is_the_state_of_the_shorter_sequence(shipped):
    model, tok = shipped
    ids = ids_of(tok, "81273+4406=85679")
    with torch.no_grad():
        whole = model(ids, use_cache=True).cache
        short = model(ids[:, :9], use_cache=True).cache
    cropped = interpreter_state(whole).crop(9)
    reference = interpreter_state(short)
    assert cropped.length == 9
    for got, want in zip(cropped._fields(), reference._fields()):
        assert torch.equal(got, want)
    assert torch.allclose(cropped.last_sites, reference.last_sites)


@pytest.mark.parametrize("prompt", PROMPTS[:3])
def test_beam_search_with_the_cache_equals_beam_search_without(shipped, prompt):
    """Beam search reorders the cache every step; the interpreter's state is reordered with it, so the beams are
    those of recomputing every step from the whole sequence."""
    model, tok = shipped
    ids = ids_of(tok, prompt)
    kwargs = dict(max_new_tokens=NEW, do_sample=False, num_beams=3, num_return_sequences=2)
    assert torch.equal(model.generate(ids, use_cache=True, **kwargs), model.generate(ids, use_cache=False, **kwargs))


def test_a_static_cache_equals_the_dynamic_one(shipped, answers):
    model, tok = shipped
    for prompt in PROMPTS[:2]:
        assert torch.equal(greedy(model, ids_of(tok, prompt), cache_implementation="static"), answers[prompt])


def test_continuing_from_a_cache_equals_one_greedy_run(shipped, answers):
    model, tok = shipped
    ids = ids_of(tok, PROMPTS[1])  # an answer longer than 3 tokens
    assert answers[PROMPTS[1]].shape[1] > 3
    first = model.generate(ids, max_new_tokens=3, do_sample=False, return_dict_in_generate=True, use_cache=True)
    rest = model.generate(first.sequences, past_key_values=first.past_key_values, max_new_tokens=NEW - 3,
                          do_sample=False, use_cache=True)
    assert torch.equal(rest[:, ids.shape[1]:], answers[PROMPTS[1]])


def test_a_cache_the_interpreter_did_not_read_is_refused(shipped):
    from transformers import DynamicCache

    model, tok = shipped
    ids = ids_of(tok, PROMPTS[0])
    with torch.no_grad():
        cache = model.model(ids[:, :-1], use_cache=True).cache  # the decoder alone: no interpreter state
        with pytest.raises(ValueError, match="positions that NCLlama's interpreter has not read"):
            model(ids[:, -1:], cache=cache)
    assert isinstance(cache, DynamicCache)


def test_packed_sequences_equal_padded_ones(shipped):
    """A padding-free collator packs sequences into one row with position ids restarting at 0: each sequence is
    read alone, as in a padded batch (no operand of one is read by the next)."""
    model, tok = shipped
    rows = [tok(p + " " + str(a))["input_ids"] for p, a in (("81273+4406=", 85679), ("gcd(84, 36)=", 12),
                                                            ("What is 16 times 23?", 368))]
    packed = torch.tensor([sum(rows, [])])
    positions = torch.tensor([sum((list(range(len(r))) for r in rows), [])])
    with torch.no_grad():
        logits = model(packed, position_ids=positions, use_cache=False).logits[0]
        start = 0
        for row in rows:
            alone = model(torch.tensor([row])).logits[0]
            torch.testing.assert_close(logits[start : start + len(row)], alone, rtol=1e-4, atol=1e-4)
            start += len(row)


def test_operands_too_long_for_the_machine_make_no_call_and_no_error(shipped):
    """Two 130-digit operands need more memory cells than the machine has: no call fits, the LM answers."""
    model, tok = shipped
    a, b = "9" * 130, "8" * 130
    with torch.no_grad():
        out = model(ids_of(tok, f"{a}*{b}="))
    assert torch.isfinite(out.logits).all()
    trace = model.generate_with_trace(ids_of(tok, f"{a}*{b}="), max_new_tokens=3, do_sample=False)
    assert trace is not None


def test_a_library_can_be_passed_to_from_pretrained(tmp_path):
    lib = Library.load(SHIPPED)
    model = NCLlamaForCausalLM.from_pretrained(SHIPPED, library=lib)
    assert model.library is lib
    with pytest.raises(LibraryError, match="pass the model's library"):
        NCLlamaForCausalLM.from_pretrained(None, config=model.config, state_dict=model.state_dict())
    again = NCLlamaForCausalLM.from_pretrained(None, config=model.config, state_dict=model.state_dict(), library=lib)
    assert again.library is lib
