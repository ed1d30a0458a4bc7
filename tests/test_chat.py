"""Chat templates in the interpreter heads: the template's own tokens (markers, role names, the newline that ends a
header) are no operands, no words for the keyword call reader and no call sites (the newline that opens the
assistant's turn is one), and a comparison answered in the assistant's turn writes "no", not " no". A ChatML
tokenizer built from the project's (SmolLM2's template, with "<|im_start|>" and "<|im_end|>"), a 2-layer LLaMA."""
from pathlib import Path

import pytest
import torch

from modeling_nclama.modeling_nclama import NCLlamaForCausalLM
from modeling_nclama.reader import Style
from modeling_nclama.toolchain.tasks import chat_prompt
from modeling_nclama.toolchain.tokenization import default_tokenizer, reader_tokens
from modeling_nclama.toolchain.training import _result_words, chat_tokens, prompt_ids
from modeling_nclama import standard_library

pytestmark = pytest.mark.usefixtures("one_thread")

# SmolLM2-135M-Instruct's chat template (ChatML with a default system message)
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
          "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
PROGRAMS = ["long_add", "long_sub", "long_cmp"]


def chatml_tokenizer():
    """The project's tokenizer with ChatML's markers and SmolLM2's chat template (other test files use it too)."""
    tok = default_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="module")
def tok():
    return chatml_tokenizer()


@pytest.fixture(scope="module")
def lib():
    return standard_library(256)


def chat_model(tok, make_llama, lib, **settings):
    nc = {"nc_answer_lead": True, "nc_result_words": {"long_cmp": [" yes", " no", " no"]}}
    settings = {"nc_programs": PROGRAMS, "nc_call_reader": "keywords", "nc_operand_reader": "context",
                "nc_site_reader": "tokens", "nc_gate_at": "site", "nc_chat_tokens": chat_tokens(tok), **nc, **settings}
    table = reader_tokens(tok, words=_result_words(settings, tok))
    model = NCLlamaForCausalLM.from_llama(make_llama(tok), lib, reader_tokens=table, **settings)
    return model.eval()


def ids_of(tok, text):
    return prompt_ids(tok, [text])[0]


def test_chat_tokens_are_the_templates_own(tok):
    roles = chat_tokens(tok)
    texts = {tok.decode([int(t)]): role for t, role in roles.items()}
    assert texts["<|im_start|>"] == texts["<|im_end|>"] == "marker" and texts["\n"] == "break"
    header = "".join(sorted(t for t, role in texts.items() if role == "header"))
    assert set(header) == set("systemuserassistant")  # role names only, in the tokenizer's pieces
    assert not any(ch.isdigit() for ch in header)
    assert chat_tokens(default_tokenizer()) == {}  # no chat template, no template tokens


def test_template_positions_and_call_sites(tok, make_llama, lib):
    model = chat_model(tok, make_llama, lib)
    text = chat_prompt("What is 3 plus 4?", tok)
    ids = torch.tensor([ids_of(tok, text)])
    pieces = [tok.decode([i]) for i in ids[0].tolist()]
    template = model.nc_heads.sentences.template_positions(ids)[0].tolist()
    silent = model.nc_heads.sentences.silent_positions(ids)[0].tolist()
    content = "".join(p for p, t in zip(pieces, template) if not t)
    assert content == tok.bos_token + "You are a helpful AI assistant named SmolLM, trained by Hugging FaceWhat is 3 plus 4?"
    assert pieces[-1] == "\n" and template[-1] and not silent[-1]  # the assistant's turn opens there: a call site
    assert all(s for p, t, s in zip(pieces, template, silent) if t and p != "\n")  # markers and role names: silent
    record = {}
    with torch.no_grad():
        model._run_decoder(True, None, record, input_ids=ids, use_cache=False)
    sites = {position for (_, position), calls in record.items() if calls}
    assert len(ids[0]) - 1 in sites and not any(silent[s] for s in sites)
    # the question's operands, never the template's tokens
    assert [o.items for o in model.calls.operands(ids[0].tolist())] == [("3",), ("4",)]


def test_content_that_starts_like_a_role_name_is_content(tok, make_llama, lib):
    """The header ends at its newline: a message whose first token is also a piece of a role name is content."""
    model = chat_model(tok, make_llama, lib)
    ids = torch.tensor([ids_of(tok, chat_prompt("a 5 b", tok))])
    pieces = [tok.decode([i]) for i in ids[0].tolist()]
    user = pieces.index("What") if "What" in pieces else len(pieces) - pieces[::-1].index("<|im_start|>") - 1
    first = [i for i in range(len(pieces)) if pieces[i] == "a" and pieces[i - 1] == "\n"]
    assert first and not model.nc_heads.sentences.template_positions(ids)[0, first[0]] and user


def test_the_keyword_reader_reads_the_users_question_at_the_assistants_turn(tok, make_llama, lib):
    """At the newline that opens the assistant's turn, the keyword evidence is that of the user's question (the
    template neither ends nor starts a sentence and has no words), in one pass and token by token; without the
    template's tokens it would read only "<|im_start|>assistant\\n"."""
    model = chat_model(tok, make_llama, lib)
    heads = model.nc_heads
    plus = tok(" plus", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        heads.call.keywords.weight.uniform_(-1.0, 1.0)
        heads.call.keywords.weight[plus] = torch.tensor([5.0, -2.0, -2.0])
    text = chat_prompt("What is 3 plus 4?", tok)
    ids = torch.tensor([ids_of(tok, text)])
    question_end = ids_of(tok, text).index(tok.convert_tokens_to_ids("?"))
    with torch.no_grad():
        evidence = heads.call.evidence(ids)
        stepped, carried = [], None
        for t in range(ids.shape[1]):
            stepped.append(heads.call.evidence(ids[:, t:t + 1], carried, history=ids[:, :t])[:, 0])
            carried = stepped[-1]
    assert torch.equal(evidence[0, -1], evidence[0, question_end]) and evidence[0, -1, 0] == 5.0
    assert torch.equal(torch.stack(stepped, 1), evidence)
    without = chat_model(tok, make_llama, lib, nc_chat_tokens={})
    with torch.no_grad():
        without.nc_heads.call.keywords.weight.copy_(heads.call.keywords.weight)
        assert without.nc_heads.call.evidence(ids)[0, -1, 0] != 5.0  # restarted at "<|im_start|>"


def test_keyword_gradients_reach_the_words_not_the_template(tok, make_llama, lib):
    model = chat_model(tok, make_llama, lib).train()
    ids = torch.tensor([ids_of(tok, chat_prompt("What is 3 plus 4?", tok))])
    model.nc_heads.call.evidence(ids)[0, -1].sum().backward()
    grad = model.nc_heads.call.keywords.weight.grad.abs().sum(-1)
    marker = tok.convert_tokens_to_ids("<|im_start|>")
    assert grad[tok(" plus", add_special_tokens=False)["input_ids"][0]] > 0 and grad[marker] == 0
    assert torch.isfinite(grad).all()


def test_a_result_word_in_the_assistants_turn_is_written_without_the_space(tok, make_llama, lib):
    """With the word's unspaced form in the table, the writing without the lead is the bare word (the assistant's
    answer starts on a new line), the one with it the spaced word; without it both are the spaced word, as before.
    (This tokenizer has "on"/" on" and "up"/" up" as single tokens, not "yes"/"no": SmolLM2's test has those.)"""
    words = {"long_cmp": [" on", " up", " up"]}
    model = chat_model(tok, make_llama, lib, nc_result_words=words)
    eos = [tok.eos_token_id]
    on, spaced_on, up, spaced_up = (tok(w, add_special_tokens=False)["input_ids"] for w in ("on", " on", "up", " up"))
    assert model.calls.text_tokens("long_cmp", 0, Style()) == (on + eos, spaced_on + eos)
    assert model.calls.text_tokens("long_cmp", 2, Style()) == (up + eos, spaced_up + eos)
    spaced_only = NCLlamaForCausalLM.from_llama(
        make_llama(tok), lib, reader_tokens=reader_tokens(tok, words=[" on", " up"]), nc_programs=PROGRAMS,
        nc_answer_lead=True, nc_result_words=words, nc_operand_reader="context")
    assert spaced_only.calls.text_tokens("long_cmp", 2, Style()) == (spaced_up + eos,) * 2
    # the unspaced forms join the table only for a tokenizer with a chat template, and only where they are one token
    assert _result_words({"nc_result_words": words, "nc_answer_lead": True}, tok) == [" on", " up", "on", "up"]
    yes_no = {"nc_result_words": {"long_cmp": [" yes", " no"]}, "nc_answer_lead": True}
    assert _result_words(yes_no, tok) == [" no", " yes"]  # "no" and "yes" are not single tokens here
    assert _result_words({"nc_result_words": words, "nc_answer_lead": True}, default_tokenizer()) == [" on", " up"]


def test_a_chat_prompt_generates_as_the_llama_with_the_gate_closed(tok, make_llama, lib):
    model = chat_model(tok, make_llama, lib)
    llama = make_llama(tok)
    ids = torch.tensor([ids_of(tok, chat_prompt("What is 81273 plus 4406?", tok))])
    with torch.no_grad():
        ours = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
        theirs = llama.eval().generate(input_ids=ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(ours, theirs)


def test_the_chat_template_is_rendered_once(tok):
    text = chat_prompt("Add 3 and 4.", tok)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    rendered = tok.apply_chat_template([{"role": "user", "content": "Add 3 and 4."}], add_generation_prompt=True,
                                       tokenize=True)["input_ids"]
    assert ids_of(tok, text) == [tok.bos_token_id] + rendered  # this tokenizer starts every text with its BOS
    assert ids_of(tok, tok.bos_token + text) == [tok.bos_token_id] + rendered  # and never twice
    with pytest.raises(ValueError, match="no chat template"):
        chat_prompt("Add 3 and 4.", default_tokenizer())


def test_the_recipe_builder_fills_the_template(tmp_path, tok, make_llama):
    from modeling_nclama.toolchain.training import build_model, validate_recipe

    folder = Path(tmp_path) / "llama"
    make_llama(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    spec = validate_recipe({"model": {"from_llama": {"path": str(folder), "library": {"value_size": 256},
                                                     "nc": {"nc_programs": PROGRAMS, "nc_answer_lead": True,
                                                            "nc_result_words": {"long_cmp": [" on", " up", " up"]}}}}})
    model, _, _ = build_model(spec["model"])
    assert model.config.nc_chat_tokens == chat_tokens(tok)
    assert {"on", " on", "up", " up"} <= set(model.config.nc_reader_tokens.values())
