"""generate() with the library active: cache equals no cache, padding, beam search, sampling, static cache, bf16."""
import pytest
import torch

from modeling_nclama.modeling_nclama import NCLlamaForCausalLM
from modeling_nclama.toolchain.tokenization import default_tokenizer, reader_tokens
from modeling_nclama import standard_library

PROMPTS = ["81273+4406=", "gcd(84, 36)=", "What is the sum of [5, 3, 9, 1]?"]


@pytest.fixture(scope="module")
def tok():
    t = default_tokenizer()
    t.padding_side = "left"
    return t


READERS = {
    "hidden-state heads": {},
    "keyword calls": {"nc_call_reader": "keywords"},
    "token-table heads, gate at the site": {"nc_call_reader": "keywords", "nc_site_reader": "tokens",
                                            "nc_operand_reader": "context", "nc_gate_at": "site",
                                            "nc_openers_from_lm": True, "nc_closers_from_lm": True},
}


@pytest.fixture(scope="module", params=list(READERS.values()), ids=list(READERS))
def model(request, tok, make_llama):
    model = NCLlamaForCausalLM.from_llama(make_llama(tok), standard_library(256), reader_tokens=reader_tokens(tok),
                                          **request.param)
    with torch.no_grad():  # an open gate and random heads: the library shapes every step
        model.nc_heads.gate_scale.fill_(1.0)
        model.nc_heads.gate.bias.fill_(1.0)
    return model.eval()


def greedy(model, batch, **kwargs):
    return model.generate(**batch, max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True, **kwargs)


def test_cache_equals_no_cache(model, tok):
    batch = tok(PROMPTS[:1], return_tensors="pt")
    cached, uncached = greedy(model, batch, use_cache=True), greedy(model, batch, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.scores, uncached.scores):
        assert torch.allclose(a, b, atol=1e-4)


def test_left_padded_batch_equals_single_runs(model, tok):
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    together = greedy(model, batch).sequences
    width = batch["input_ids"].shape[1]
    for i, prompt in enumerate(PROMPTS):
        alone = greedy(model, tok([prompt], return_tensors="pt")).sequences[0]
        n = len(tok(prompt)["input_ids"])
        new = alone[n:].tolist()
        assert together[i, width : width + len(new)].tolist() == new, prompt
        assert set(together[i, width + len(new):].tolist()) <= {tok.pad_token_id}  # a finished row is padded


def test_beam_search_and_sampling_run(model, tok):
    batch = tok(PROMPTS[:1], return_tensors="pt")
    beams = model.generate(**batch, max_new_tokens=5, num_beams=3, num_return_sequences=3, do_sample=False)
    assert beams.shape[0] == 3
    torch.manual_seed(0)
    sampled = model.generate(**batch, max_new_tokens=5, do_sample=True, top_k=5)
    assert sampled.shape[0] == 1 and sampled.shape[1] > batch["input_ids"].shape[1]


def test_static_cache_matches_dynamic(model, tok):
    batch = tok(PROMPTS[:1], return_tensors="pt")
    static = greedy(model, batch, cache_implementation="static").sequences
    assert torch.equal(static, greedy(model, batch).sequences)


def test_return_dict_false(model, tok):
    batch = tok(PROMPTS[:1], return_tensors="pt")
    logits, = model(**batch, use_cache=False, return_dict=False)
    assert torch.allclose(logits, model(**batch, use_cache=False).logits)


def test_bf16_load(model, tok, tmp_path):
    model.save_pretrained(tmp_path)
    half = NCLlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert half.model.embed_tokens.weight.dtype == torch.bfloat16
    out = half.generate(**tok(PROMPTS[:1], return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] == len(tok(PROMPTS[0])["input_ids"]) + 3 or tok.eos_token_id in out[0].tolist()
