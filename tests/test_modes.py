"""The model's options: soft execution (program weights train with the model), residual injection of the library's
result into later layers."""
import pytest
import torch

from forcing import force
from modeling_nclama.modeling_nclama import NCLlamaForCausalLM
from modeling_nclama.toolchain.tokenization import default_tokenizer, reader_tokens
from safetensors import safe_open

PROGRAMS = ["add", "double_all"]  # the user library's small programs: soft runs of a few steps
PROMPT = "Add 3 and 4."


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


@pytest.fixture(scope="module")
def llama(tok, make_llama):
    return make_llama(tok).eval()


@pytest.fixture
def convert(llama, user_lib, tok):
    def make(**settings):
        return NCLlamaForCausalLM.from_llama(llama, user_lib, design="paper", reader_tokens=reader_tokens(tok), nc_programs=PROGRAMS, **settings).eval()

    return make


def answer(model, tok, prompt=PROMPT, **kwargs):
    inputs = tok(prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False, **kwargs)
    return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def last_site(tok, prompt=PROMPT):
    return len(tok(prompt)["input_ids"]) - 1


@pytest.mark.parametrize("settings", [{"nc_mode": "soft"}, {"nc_layer": 0, "nc_residual_injection": True}])
def test_closed_gate_is_still_the_llama(convert, llama, tok, settings):
    model = convert(**settings)
    batch = tok([PROMPT, "Double [1, 2, 3]."], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert (model(**batch).logits - llama(**batch).logits).abs().max().item() <= 1e-5


def test_soft_execution_equals_hard_on_compiled_programs(convert, tok):
    hard, soft = convert(), convert(nc_mode="soft")
    soft.nc_heads.load_state_dict(hard.nc_heads.state_dict())  # the same heads: only the execution differs
    site = last_site(tok)
    for model in (hard, soft):
        force(model, "add", site=site)
        assert answer(model, tok) == "7"
    batch = tok([PROMPT + "7"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(hard(**batch).logits, soft(**batch).logits, atol=1e-4)


def test_soft_execution_trains_the_program_weights(convert, tok):
    model = convert(nc_mode="soft").train()
    force(model, "add", site=last_site(tok))
    batch = tok([PROMPT + "7"], return_tensors="pt")
    model(**batch, labels=batch["input_ids"]).loss.backward()
    weights = model.nc_program_weights["add"]
    assert all(torch.isfinite(w).all() for w in weights.values())  # -inf logits raised to 20 below the best
    assert sum(w.grad.abs().sum() for w in weights.values() if w.grad is not None) > 0
    # double_all (a lone number is a one-item list) is called only with the forced call head's probability, ~e^-60
    assert all(w.grad is None or w.grad.abs().max() < 1e-12 for w in model.nc_program_weights["double_all"].values())
    assert model.nc_heads.operands.query.weight.grad.abs().sum() > 0
    # add has the call's whole mass (a forced logit of 30 against -30), and the call head no gradient to speak of
    assert model.nc_heads.call.scores.bias.grad is None or model.nc_heads.call.scores.bias.grad.abs().max() < 1e-12


def test_frozen_programs_get_no_gradient(convert, tok):
    model = convert(nc_mode="soft").train()
    model.nc_program_weights.requires_grad_(False)
    force(model, "add", site=last_site(tok))
    batch = tok([PROMPT + "7"], return_tensors="pt")
    model(**batch, labels=batch["input_ids"]).loss.backward()
    assert all(not w.requires_grad and w.grad is None for w in model.nc_program_weights.parameters())
    assert model.nc_heads.operands.query.weight.grad.abs().sum() > 0
    # add has the call's whole mass (a forced logit of 30 against -30), and the call head no gradient to speak of
    assert model.nc_heads.call.scores.bias.grad is None or model.nc_heads.call.scores.bias.grad.abs().max() < 1e-12


def test_trained_programs_travel_in_the_library_files(convert, tok, tmp_path, user_lib):
    model = convert(nc_mode="soft")
    with torch.no_grad():  # as if training changed the program: its first line's operation is another one
        op = model.nc_program_weights["add"]["op"]
        op[0] = torch.roll(op[0], 1)
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if k.startswith("nc_program_weights")]  # the library files hold them
    loaded = NCLlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.nc_library_fingerprint == loaded.library.fingerprint() != user_lib.fingerprint()
    for name, weight in model.nc_program_weights.named_parameters():
        assert torch.equal(loaded.nc_program_weights.get_parameter(name), weight), name
    batch = tok([PROMPT + "7"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, model(**batch).logits, atol=1e-6)


def test_residual_injection_reaches_later_layers(convert, tok):
    model = convert(nc_layer=0, nc_residual_injection=True).train()
    force(model, "add", site=last_site(tok))
    batch = tok([PROMPT + "7"], return_tensors="pt")
    before = model(**batch).logits.detach()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    inject = model.nc_heads.inject.weight
    assert inject.grad.abs().sum() > 0  # zero at init, but it learns
    with torch.no_grad():
        inject.copy_(torch.randn_like(inject) * 0.1)
        assert (model(**batch).logits - before).abs().max() > 1e-3
    # activation checkpointing recomputes the layer, hook included: same gradients
    model.zero_grad()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    model.activation_checkpointing_disable()
    for name, grad in expected.items():
        assert torch.allclose(model.get_parameter(name).grad, grad, atol=1e-5), name


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_unlikely_calls_are_not_executed(convert, tok, mode):
    model = convert(nc_mode=mode, nc_min_call_probability=0.1)
    force(model, "add", site=last_site(tok))
    assert answer(model, tok) == "7"  # the untrained pointers split ~1/4 over the operand pairs: all above 0.1
    model = convert(nc_mode=mode, nc_min_call_probability=0.4)
    force(model, "add", site=last_site(tok))
    assert answer(model, tok) != "7"  # at the answer's site no call reached 0.4: none ran
    if mode == "hard":  # the only call that ran: where "3" was the only operand, add(3, 3) had probability 1
        assert [call.arguments for call in model.calls.results] == [(3, 3)]


def test_a_call_the_machine_cannot_take_keeps_its_mass_and_proposes_nothing(convert, tok):
    """"Add 300 and 4." on a machine of values below 256: the add calls that read 300 keep their share of the call's
    probability, are not run and propose nothing (add(4, 4) must not get their mass); the trace says why."""
    model = convert()
    prompt = "Add 300 and 4."
    site = len(tok(prompt)["input_ids"]) - 1
    force(model, "add", site=site)
    trace = model.explain(tok(prompt + "8", return_tensors="pt")["input_ids"][0], site + 1)
    calls = trace[0]["calls"]
    assert {call["program"] for call in calls} == {"add"} and len(calls) == 4
    refused = [c for c in calls if 300 in c["arguments"]]
    assert len(refused) == 3 and all(c["status"] == f"not run: argument {'a' if c['arguments'][0] == 300 else 'b'} "
                                     "of add: 300 is outside [0, 256)" and c["result"] is None for c in refused)
    assert sum(c["probability"] for c in refused) > 0.5  # the pointers are untrained: each pair about 1/4
    (ran,) = [c for c in calls if c["arguments"] == [4, 4]]
    assert ran["result"] == 8 and ran["status"] == "ok"


def brute_force_evidence(table: torch.Tensor, ids: list[int], bos: int) -> torch.Tensor:
    """Per position, the best score of each program over the tokens since the last BOS (inclusive)."""
    rows, start = [], 0
    for t, token in enumerate(ids):
        if token == bos:
            start = t
        rows.append(table[ids[start:t + 1]].max(0).values)
    return torch.stack(rows)


def test_the_keyword_call_reader_pools_each_segment_in_one_pass_or_in_steps(convert, tok):
    model = convert(nc_call_reader="keywords")
    heads, bos = model.nc_heads, model.config.bos_token_id
    ids = tok("Add 3 and 4.")["input_ids"] + tok("Add 12345678 and 4.")["input_ids"]  # two segments, each from a BOS
    assert ids.count(bos) == 2
    pad = model.config.pad_token_id
    batch = torch.tensor([ids, [pad] * 3 + ids[:-3]])  # the second row left-padded: pads before its first BOS
    table = heads.call.keywords.weight.detach()
    with torch.no_grad():
        full = heads.call.evidence(batch)
        stepped, carried = [], None
        for t in range(batch.shape[1]):
            stepped.append(heads.call.evidence(batch[:, t:t + 1], carried)[:, 0])
            carried = stepped[-1]
    assert torch.equal(full[0], brute_force_evidence(table, ids, bos))
    assert torch.equal(full[1, 3:], brute_force_evidence(table, [pad] * 3 + ids[:-3], bos)[3:])
    assert torch.equal(torch.stack(stepped, 1), full)


def test_keyword_calls_do_not_change_with_operand_length(convert, tok):
    model = convert(nc_call_reader="keywords")
    with torch.no_grad():  # "Add" is evidence for add, digits and the rest against both programs
        table = model.nc_heads.call.keywords.weight
        table.fill_(-1.0)
        table[tok("Add")["input_ids"][-1], model.config.nc_programs.index("add")] = 2.0
    short, long = (model.nc_heads.call.evidence(tok(p, return_tensors="pt")["input_ids"])[0, -1]
                   for p in ("Add 3 and 4.", "Add 3 and " + "4" * 40 + "."))
    assert torch.equal(short, long) and short.tolist() == [2.0, -1.0]

