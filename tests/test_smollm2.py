"""nclama-smollm2-135m before training: SmolLM2-135M-Instruct converted as its recipe converts it (the gate closed)
is SmolLM2 on text with nothing to compute, in plain and chat form, and in the chat template its interpreter never
makes a call at the template's markers or role names. Needs the real model (marker ``smollm2``, the session's
``smollm2_folder``)."""
import pytest
import torch

from modeling_nclama.toolchain.tasks import chat_prompt
from modeling_nclama.toolchain.training import build_model, chat_tokens, load_recipe, prompt_ids

pytestmark = [pytest.mark.smollm2, pytest.mark.usefixtures("one_thread")]

PROSE = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "The best way to learn a new language is",
    "Photosynthesis is the process by which",
    "My favourite season of the year is",
    "A good cup of tea needs",
    "The old lighthouse keeper looked at the sea and",
    "To make a paper airplane, first",
]
CHAT = ["Tell me a short fact about owls.", "What colour is the sky on a clear day?"]


@pytest.fixture(scope="module")
def converted(smollm2_folder):
    recipe = load_recipe("nclama-smollm2-135m", {"model.from_llama.path": str(smollm2_folder)})
    model, tokenizer, kind = build_model(recipe["model"])
    assert kind == "nclama"
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def smollm2(smollm2_folder):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(smollm2_folder).eval()


def test_the_template_tokens_of_smollm2(converted):
    model, tok = converted
    roles = {tok.decode([int(t)]): role for t, role in model.config.nc_chat_tokens.items()}
    assert roles == {"<|im_start|>": "marker", "<|im_end|>": "marker", "\n": "break", "system": "header",
                     "user": "header", "ass": "header", "istant": "header"}
    assert model.config.nc_chat_tokens == chat_tokens(tok)
    assert {" yes", " no", "yes", "no"} <= set(model.config.nc_reader_tokens.values())
    text = chat_prompt("What is 81273 plus 4406?", tok)
    assert prompt_ids(tok, [text])[0] == tok.apply_chat_template(
        [{"role": "user", "content": "What is 81273 plus 4406?"}], add_generation_prompt=True)["input_ids"]


def test_greedy_continuations_without_numbers_are_smollm2s(converted, smollm2):
    """Gate closed: every prompt with nothing to compute continues exactly as SmolLM2 (8 greedy tokens each, the
    prompts batched and left-padded alike for both)."""
    model, tok = converted
    prompts = PROSE + [chat_prompt(question, tok) for question in CHAT]
    ids = prompt_ids(tok, prompts)
    width = max(map(len, ids))
    pad = tok.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
    attention_mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    settings = dict(max_new_tokens=8, do_sample=False, pad_token_id=pad)
    with torch.no_grad():
        ours = model.generate(input_ids=input_ids, attention_mask=attention_mask, **settings)
        theirs = smollm2.generate(input_ids=input_ids, attention_mask=attention_mask, **settings)
    assert torch.equal(ours, theirs)
    assert tok.decode(ours[0, width:]).startswith(" Paris")


def test_a_chat_prompt_with_numbers_never_calls_at_the_template(converted):
    """A chat-template prompt with numbers generates, and every call site the interpreter uses (in the prompt and
    for each generated token) is a position of the question or the newline that opens the assistant's turn, never
    a marker ("<|im_start|>", "<|im_end|>") or a role name."""
    model, tok = converted
    ids = torch.tensor([prompt_ids(tok, [chat_prompt("Is 81273 less than 4406? And what is 12 plus 30?", tok)])[0]])
    with torch.no_grad():
        sequence, trace = model.generate_with_trace(ids, max_new_tokens=4, do_sample=False, max_trace_rows=1)
        record: dict = {}
        model._run_decoder(True, None, record, input_ids=sequence, use_cache=False)
    assert sequence.shape[1] > ids.shape[1] and len(trace) == sequence.shape[1] - ids.shape[1]
    template = {int(t) for t, role in model.config.nc_chat_tokens.items() if role != "break"}
    silent = model.nc_heads.sentences.silent_positions(sequence)[0]
    sites = sorted(position for (_, position), calls in record.items() if calls)
    assert sites and ids.shape[1] - 1 in sites  # the assistant's turn opens with calls on the question's numbers
    assert not any(silent[s] for s in sites) and not any(int(sequence[0, s]) in template for s in sites)
    for row in trace:
        assert not silent[row["site"]] and int(sequence[0, row["site"]]) not in template
    called = record[(0, ids.shape[1] - 1)]
    assert {tuple(c.call.arguments) for c in called} <= {(81273, 4406), (4406, 81273), (12, 30), (30, 12), (4406, 12),
                                                         (12, 4406), (81273, 12), (12, 81273), (30, 4406), (4406, 30),
                                                         (81273, 30), (30, 81273), (81273, 81273), (4406, 4406),
                                                         (12, 12), (30, 30), (30,), (12,), (4406,), (81273,)}
