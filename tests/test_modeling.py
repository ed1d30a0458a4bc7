"""NCLlamaForCausalLM: exactly LLaMA at initialization, the library inside the forward pass, gradients to the heads."""
import pytest
import torch

from forcing import force
from modeling_nclama import LibraryError, compile_library, standard_library
from modeling_nclama.heads import HeadsTraining
from modeling_nclama import mixture
from modeling_nclama.modeling_nclama import NCLlamaForCausalLM
from modeling_nclama.toolchain.tokenization import default_tokenizer, reader_tokens

PROMPTS = ["81273+4406=", "Sort the list [5, 3, 9, 1].", "gcd(84, 36)="]


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


@pytest.fixture(scope="module")
def lib():
    return standard_library(256)


@pytest.fixture(scope="module")
def llama(tok, make_llama):
    return make_llama(tok).eval()


@pytest.fixture
def model(llama, lib, tok):
    return NCLlamaForCausalLM.from_llama(llama, lib, design="paper", reader_tokens=reader_tokens(tok)).eval()


def test_closed_gate_gives_the_llama_logits(llama, model, tok):
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected, got = llama(**batch).logits, model(**batch).logits
    assert (expected - got).abs().max().item() <= 1e-5
    for name, value in llama.state_dict().items():  # every pretrained weight kept
        assert torch.equal(model.state_dict()[name], value), name


def test_heads_can_read_an_inner_layer(llama, lib, tok):
    inner = NCLlamaForCausalLM.from_llama(llama, lib, design="paper", reader_tokens=reader_tokens(tok), nc_layer=0).eval()
    batch = tok(PROMPTS[:1], return_tensors="pt")
    with torch.no_grad():
        assert (inner(**batch).logits - llama(**batch).logits).abs().max() <= 1e-5  # closed gate: still the LLaMA
        hidden = inner.model(**batch, output_hidden_states=True).hidden_states
        inner.nc_heads.gate_scale.fill_(1.0)
        seen = []
        inner.nc_heads.gate.register_forward_hook(lambda m, args, out: seen.append(args[0]))
        inner(**batch)
    assert torch.equal(seen[0], hidden[1])  # the output of decoder layer 0


def test_each_head_variant_is_a_module_chosen_by_name_from_its_registry(llama, lib, tok):
    """The configuration names each head's variant; the heads build the registered module of that name (the
    configuration validates the same names), each owning its parameters."""
    from modeling_nclama import configuration_nclama as configuration, heads as registry

    assert tuple(registry.CALL_READERS) == configuration.NC_CALL_READERS
    assert tuple(registry.OPERAND_READERS) == configuration.NC_OPERAND_READERS
    assert tuple(registry.SITE_READERS) == configuration.NC_SITE_READERS
    assert tuple(registry.GATE_READERS) == configuration.NC_GATE_READERS
    assert tuple(registry.GATE_PLACES) == configuration.NC_GATE_POSITIONS
    owned = {}
    for design in ("shipped", "paper"):
        model = NCLlamaForCausalLM.from_llama(llama, lib, design=design, reader_tokens=reader_tokens(tok))
        config, heads = model.config, model.nc_heads
        assert type(heads.call) is registry.CALL_READERS[config.nc_call_reader]
        assert type(heads.operands) is registry.OPERAND_READERS[config.nc_operand_reader]
        assert type(heads.sites) is registry.SITE_READERS[config.nc_site_reader]
        assert type(heads.gate_reader) is registry.GATE_READERS[config.nc_gate_reader]
        assert heads.place_gate is registry.GATE_PLACES[config.nc_gate_at]
        owned[design] = sorted(n for n, _ in heads.named_parameters()
                               if n.startswith(("call.", "operands.", "sites.", "gate_reader.")))
    assert owned["shipped"] == ["call.keywords.weight", "gate_reader.bias", "gate_reader.words.weight",
                                "operands.after.weight", "operands.before.weight", "operands.rank.weight",
                                "sites.previous.weight", "sites.token.weight"]
    assert owned["paper"] == ["call.scores.bias", "call.scores.weight", "operands.key.bias", "operands.key.weight",
                              "operands.query.bias", "operands.query.weight", "sites.scores.bias", "sites.scores.weight"]
    with pytest.raises(Exception, match="nc_call_reader must be one of .'hidden', 'keywords', 'sentence'., got 'attention'"):
        NCLlamaForCausalLM.from_llama(llama, lib, reader_tokens=reader_tokens(tok), nc_call_reader="attention")


def test_gradients_reach_every_head(llama, lib, tok):
    model = NCLlamaForCausalLM.from_llama(llama, lib, design="paper", reader_tokens=reader_tokens(tok),
                                          nc_programs=["long_add", "long_mul", "gcd", "max_number"]).train()
    batch = tok(["81273+4406=85679"], return_tensors="pt")
    heads = dict(model.nc_heads.named_parameters())
    model(**batch, labels=batch["input_ids"]).loss.backward()  # closed gate: only its scale can move first
    assert heads["gate_scale"].grad.abs() > 0 and heads["call.scores.weight"].grad.abs().sum() == 0
    model.zero_grad()
    with torch.no_grad():
        heads["gate_scale"].fill_(0.5)
    model(**batch, labels=batch["input_ids"]).loss.backward()
    for name in ("gate.weight", "call.scores.weight", "operands.query.weight", "operands.key.weight", "sites.scores.weight"):
        assert heads[name].grad is not None and heads[name].grad.abs().sum() > 0, name


def test_a_gate_learning_floor_teaches_the_closed_gate_where_to_open(llama, lib, tok):
    """Closed at conversion, the gate head gets no gradient; with a floor it does, and the logits are unchanged."""
    batch = tok(["81273+4406=85679"], return_tensors="pt")
    grads = {}
    for floor in (0.0, 0.1):
        torch.manual_seed(0)  # the same heads
        model = NCLlamaForCausalLM.from_llama(llama, lib, design="paper", reader_tokens=reader_tokens(tok),
                                              nc_programs=["long_add", "long_mul", "gcd", "max_number"],
                                              nc_top_k=32).train()  # every call runs: the right one is proposed
        model.heads_training = HeadsTraining(gate_learning_floor=floor)
        out = model(**batch, labels=batch["input_ids"])
        assert (out.logits - llama(**batch).logits).abs().max() <= 1e-5  # still exactly the LLaMA
        out.loss.backward()
        heads = model.nc_heads
        grads[floor] = (heads.gate.weight.grad.abs().sum().item(), heads.gate_scale.grad.item(),
                        heads.sites.scores.weight.grad.abs().sum().item())
    assert grads[0.0][0] == 0 and grads[0.1][0] > 0
    assert grads[0.0][2] == 0 and grads[0.1][2] > 0  # the heads behind the proposal learn too
    assert grads[0.0][1] == pytest.approx(grads[0.1][1], rel=1e-6, abs=0)  # the scale's own gradient is unchanged


def test_the_learning_floor_trains_the_proposal_on_the_answer_alone():
    """The floor's loss term: value 0, gradient -(floor - g) / q(y) / count on the proposal q at each answer token y
    (none where the gate is at or above the floor, none on other tokens, none on ignored positions)."""
    from modeling_nclama.modeling_nclama import Interpreted

    torch.manual_seed(0)
    B, N, V = 2, 4, 11
    lm_logits = torch.randn(B, N, V)
    proposal = torch.rand(B, N, V, requires_grad=True)
    gate = torch.tensor([[0.0, 0.02, 0.5, 0.0], [0.1, 0.0, 0.0, 0.0]])
    labels = torch.tensor([[5, 3, 7, 1], [-100, 2, -100, 4]])
    interpreted = Interpreted(proposal, None, None, gate, None, None, None, None)
    q = mixture.proposed_answer(lm_logits, interpreted, [], labels)
    loss = mixture.learning_floor_loss(q, interpreted, labels, 0.1)
    assert loss.item() == 0.0
    (grad,) = torch.autograd.grad(loss, proposal)
    expected = torch.zeros(B, N, V)
    count = 5  # answer tokens: labels[:, 1:] that are not -100
    for b in range(B):
        for t in range(N - 1):
            y = labels[b, t + 1].item()
            if y != -100:
                expected[b, t, y] = -max(0.1 - gate[b, t].item(), 0.0) / proposal[b, t, y].item() / count
    assert torch.allclose(grad, expected, atol=1e-6) and expected[0, 2].abs().sum() == 0  # gate 0.5: none
    # closers: the mass on closing tokens is shared among them as the LM prefers them
    closers = torch.tensor([5, 7])
    q = mixture.proposed_answer(lm_logits, interpreted, [closers], labels)
    loss = mixture.learning_floor_loss(q, interpreted, labels, 0.1)
    (grad,) = torch.autograd.grad(loss, proposal)
    assert grad[0, 1, 5] != 0 and grad[0, 1, 7] != 0  # the answer's closer (7) learns from both closers' mass


def test_the_gate_target_is_cross_entropy_toward_the_right_expert():
    """The gate target's loss: at each answer token the library proposes (mass >= 1/2), binary cross-entropy of the
    own gate logit of each site answered (weighted by the site distribution) toward 1 where the proposal gives the
    token at least 1/2, toward 0 where it does not and the LM does, none where neither does; averaged over the
    answer tokens the library proposes; only the gate logits learn."""
    from modeling_nclama.modeling_nclama import Interpreted

    torch.manual_seed(0)
    B, N, V = 2, 5, 11
    lm_logits = torch.zeros(B, N, V)  # the LM gives every token 1/11 ...
    lm_logits[0, 1, 7] = lm_logits[1, 2, 4] = 10.0  # ... but these two answers nearly 1
    labels = torch.tensor([[5, 3, 7, 1, 2], [-100, 2, -100, 4, 4]])  # position t answers labels[:, t + 1]
    proposal = torch.zeros(B, N, V)
    proposal[0, 0, 3] = 0.9  # right
    proposal[0, 1, 8] = 0.9  # wrong (the answer is 7), and the LM right: close
    proposal[0, 2, 1], proposal[0, 2, 9] = 0.3, 0.6  # the answer gets 0.3 < 1/2, the LM 1/11: no target
    proposal[0, 3, 2] = 0.2  # mass 0.2: the library does not answer here
    proposal[1, 0, 2] = 1.0  # right
    proposal[1, 1, 5] = 1.0  # an ignored label
    proposal[1, 2, 4], proposal[1, 2, 6] = 0.5, 0.5  # right (exactly 1/2), as the LM: a tie opens
    proposal[1, 3, 4] = 1.0  # right
    proposal.requires_grad_(True)
    mass = proposal.detach().sum(-1)
    z = torch.randn(B, N, requires_grad=True)
    sites = torch.rand(B, N, N).tril()
    sites = sites / sites.sum(-1, keepdim=True)
    targets, answered = {(0, 0): 1.0, (1, 0): 1.0, (1, 2): 1.0, (1, 3): 1.0, (0, 1): 0.0}, 6  # and (0, 2): none
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    for site_weights in (sites, None):
        interpreted = Interpreted(proposal, None, mass, None, None, None, None, None, z, site_weights)
        q = mixture.proposed_answer(lm_logits, interpreted, [], labels)
        loss = mixture.gate_target_loss(q, lm_logits, interpreted, labels)
        expected = 0.0
        for (b, t), target in targets.items():
            weights = site_weights[b, t] if site_weights is not None else torch.eye(N)[t]
            expected += sum(weights[s] * bce(z[b, s], torch.tensor(target)) for s in range(N))
        assert loss.item() == pytest.approx(expected.item() / answered, rel=1e-5)
        grad_z, grad_proposal = torch.autograd.grad(loss, (z, proposal), allow_unused=True)
        assert grad_proposal is None
    assert grad_z[0, 0] < 0 and grad_z[1, 0] < 0 and grad_z[1, 2] < 0 and grad_z[1, 3] < 0  # without sites: open,
    assert grad_z[0, 1] > 0  # close,
    assert grad_z[0, 2] == 0 and grad_z[0, 3] == 0 and grad_z[1, 1] == 0 and grad_z[:, 4].abs().sum() == 0  # neither


def test_the_gate_target_opens_a_closed_gate_over_a_right_call_alone(llama, lib, tok):
    """End to end, with the gate at the site: the gate head gets gradient to open where the call is right even
    though the gate is closed (and the mixture has nothing to say); none where the call is wrong, as the untrained
    LM is."""
    prompt = "81273+4406="
    batch = tok([prompt + "85679"], return_tensors="pt")
    labels = batch["input_ids"].clone()
    site = len(tok(prompt)["input_ids"]) - 1
    labels[:, : site + 1] = -100  # the loss on the answer
    grads = {}
    for program in ("long_add", "long_sub"):
        for weight in (0.0, 1.0):
            model = NCLlamaForCausalLM.from_llama(llama, lib, design="paper", reader_tokens=reader_tokens(tok), nc_gate_at="site").train()
            model.heads_training = HeadsTraining(gate_target_weight=weight)
            force(model, program, site)
            with torch.no_grad():
                model.nc_heads.gate_scale.fill_(0.0)  # closed, as at conversion
                model.nc_heads.gate.bias.fill_(0.0)  # the opening undecided
                model.nc_heads.operands.query.weight.zero_()  # uniform pointers: a + b and b + a hold 1/2 exactly
                model.nc_heads.operands.query.bias.zero_()
            model(**batch, labels=labels).loss.backward()
            grads[program, weight] = model.nc_heads.gate.bias.grad.item()
    assert grads["long_add", 0.0] == 0 and grads["long_sub", 0.0] == 0 and grads["long_sub", 1.0] == 0
    assert grads["long_add", 1.0] < 0  # gradient descent opens it


def test_keyword_calls_learn_from_the_answer(llama, lib, tok):
    model = NCLlamaForCausalLM.from_llama(llama, lib, design="paper", reader_tokens=reader_tokens(tok), nc_call_reader="keywords").train()
    prompt = PROMPTS[0]
    force(model, "long_add", site=len(tok(prompt)["input_ids"]) - 1)
    with torch.no_grad():
        model.nc_heads.call.keywords.weight.normal_()  # random evidence: the call is unsure
    batch = tok([prompt + "85679"], return_tensors="pt")
    model(**batch, labels=batch["input_ids"]).loss.backward()
    learned = model.nc_heads.call.keywords.weight.grad.any(-1).nonzero().flatten().tolist()
    assert learned and set(learned) <= set(batch["input_ids"][0].tolist())  # the winning tokens of this text


@pytest.mark.parametrize("use_cache", [False, True])
def test_the_library_answers_inside_the_forward_pass(model, tok, use_cache):
    prompt = tok("81273+4406=", return_tensors="pt")
    force(model, "long_add", site=prompt["input_ids"].shape[1] - 1)
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False, use_cache=use_cache)
    new = out[0, prompt["input_ids"].shape[1]:]
    assert tok.decode(new, skip_special_tokens=True) == "85679"
    assert new[-1].item() == tok.eos_token_id or tok.eos_token_id in new.tolist()


def test_a_sorted_list_is_written_like_the_prompts_list(model, tok):
    for prompt, answer in [("Sort the list [5, 3, 9, 1].", "[1, 3, 5, 9]"), ("sort: 5 3 9 1 ->", " 1 3 5 9")]:
        inputs = tok(prompt, return_tensors="pt")
        if answer.startswith(" "):  # after "->" the prompt's own space comes first; the call answers after it
            inputs = tok(prompt + " ", return_tensors="pt")
        force(model, "insertion_sort", site=inputs["input_ids"].shape[1] - 1)
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        assert tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True) == answer.strip()


def test_a_comparison_is_answered_in_words(llama, lib, tok):
    """long_cmp returns 0, 1, 2 for a < b, a = b, a > b; a word per value. Both operands are the prompt's one number
    (untrained pointers read the two numbers of a two-number prompt in either order), so the value is 1."""
    inputs = tok("Is 7 less than 7?", return_tensors="pt")
    for words, answer in [([" yes", " no", " no"], "no"), ([" no", " yes", " no"], "yes")]:
        model = NCLlamaForCausalLM.from_llama(llama, lib, design="paper", reader_tokens=reader_tokens(tok, words),
                                              nc_result_words={"long_cmp": words}).eval()
        force(model, "long_cmp", site=inputs["input_ids"].shape[1] - 1)
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1]:].tolist()
        assert tok.decode(new[:1]) == " " + answer and new[1] == tok.eos_token_id
    with pytest.raises(Exception, match="' maybe' is not a token of nc_reader_tokens"):  # the config refuses it
        NCLlamaForCausalLM.from_llama(llama, lib, design="paper", reader_tokens=reader_tokens(tok, words), nc_result_words={"long_cmp": [" maybe"]})
    with pytest.raises(ValueError, match="is not one token"):
        reader_tokens(tok, ["no way"])


def test_decimals_are_sorted_and_written_as_decimals(llama, lib, tok):
    """CLRS-Text's insertion_sort: keys are decimals, read in fixed point and written back the same way."""
    model = NCLlamaForCausalLM.from_llama(llama, standard_library(1024), design="paper", reader_tokens=reader_tokens(tok),
                                          nc_decimal_places=3).eval()
    inputs = tok("insertion_sort:\nkey: [0.549 0.715 0.6 0.05]\npred:\n", return_tensors="pt")
    force(model, "insertion_sort", site=inputs["input_ids"].shape[1] - 1)
    out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    assert tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True) == "[0.05 0.549 0.6 0.715]"


def test_a_larger_step_budget_reruns_the_calls_that_ran_out(model, tok):
    """Results are cached per step budget: a call that ran out of steps in training (nc_max_steps 4000) must run
    again when the saved model gets a larger budget, not propose the cached failure (fib(60) in the shipped model)."""
    prompt = tok("81273+4406=", return_tensors="pt")
    force(model, "long_add", site=prompt["input_ids"].shape[1] - 1)
    answers = []
    for budget in (5, 100_000):
        model.config.nc_max_steps = budget
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
        answers.append(tok.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True))
    assert answers[0] != "85679" and answers[1] == "85679"


def test_generate_with_trace_explains_every_token(model, tok):
    prompt = tok("81273+4406=", return_tensors="pt")
    site = prompt["input_ids"].shape[1] - 1
    force(model, "long_add", site=site)
    sequence, trace = model.generate_with_trace(prompt["input_ids"], max_new_tokens=8, do_sample=False)
    generated = sequence[0, site + 1 :].tolist()
    assert [row["token"] for row in trace] == generated and len(trace) == 3  # "856", "79", end of text
    for offset, row in enumerate(trace):
        assert row["site"] == site and row["offset"] == offset and row["gate"] > 0.99
        assert all(call["program"] == "long_add" and call["steps"] > 0 for call in row["calls"])
        # untrained pointers: both orders of the two numbers, and each number twice; a + b and b + a win together
        right = [c for c in row["calls"] if {o["text"] for o in c["operands"]} == {"81273", "4406"}]
        assert len(right) == 2 and all(c["result"] == 85679 for c in right)
        assert all(c["result_tokens"][offset] == row["token"] for c in right)
        assert sum(c["probability"] for c in right) > 0.49  # (the untrained pointers are nearly uniform)
        assert "long_add" in row["machine_trace"] and "ret" in row["machine_trace"]
        # each side alone: the library proposes the token written; the (untrained) LM would say something else
        assert row["library_token"] == row["token"] and row["library_probability"] > 0.49
        assert 0 < row["lm_probability_of_token"] <= row["lm_probability"] <= 1
    with torch.no_grad():  # the LM's own choice is its logits' argmax at the position before the token
        logits = model.lm_head(model.model(input_ids=sequence).last_hidden_state)[0]
    assert [row["lm_token"] for row in trace] == logits[site : site + len(trace)].argmax(-1).tolist()


def test_the_trace_runs_no_call_again_but_the_traced_one(model, tok, monkeypatch):
    """explain reads each call's value, steps and status from the run made while reading the sequence; only the
    machine trace of each row's top call is run (once per distinct call)."""
    prompt = tok("81273+4406=", return_tensors="pt")
    site = prompt["input_ids"].shape[1] - 1
    force(model, "long_add", site=site)
    sequence = model.generate(prompt["input_ids"], max_new_tokens=8, do_sample=False)
    counted = {"run_batch": 0, "run": 0}
    for name in counted:
        original = getattr(model.library, name)

        def counting(*args, _name=name, _original=original, **kwargs):
            counted[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(model.library, name, counting)
    trace = model.explain(sequence[0], prompt["input_ids"].shape[1])
    assert len(trace) == 3 and all(row["calls"] and row["calls"][0]["steps"] > 0 for row in trace)
    assert counted == {"run_batch": 0, "run": len({repr(row["calls"][0]["arguments"]) for row in trace})}


def test_save_and_load_carry_the_library(model, tok, tmp_path, lib):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "library.json").is_file() and (tmp_path / "library.safetensors").is_file()
    loaded = NCLlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.library.fingerprint() == lib.fingerprint()
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, model(**batch).logits, atol=1e-6)
    (tmp_path / "library.json").unlink()
    with pytest.raises(LibraryError, match="library files are missing"):
        NCLlamaForCausalLM.from_pretrained(tmp_path)


def test_a_mismatched_library_is_refused(model):
    with pytest.raises(LibraryError, match="value_size"):
        model.attach_library(standard_library(128))
    other = compile_library("def gcd(a, b):\n    return a\n", value_size=256)
    with pytest.raises(LibraryError, match="lacks programs"):
        model.attach_library(other)


def test_fusion_equals_the_dense_mixture_values_and_gradients():
    """The sparse fusion against the formula over the whole vocabulary, with repeated proposed tokens."""
    from modeling_nclama.modeling_nclama import Interpreted

    torch.manual_seed(0)
    B, N, V, E = 2, 3, 50, 6
    logits = torch.randn(B, N, V, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 5, (B, N, E))  # few distinct tokens: many repeats
    weight = (torch.rand(B, N, E, dtype=torch.float64) / E).requires_grad_(True)
    gate = torch.rand(B, N, dtype=torch.float64)
    gate[0, 0] = 0.0  # a closed gate still gets the mixture's gradient
    gate.requires_grad_(True)
    proposal = torch.zeros(B, N, V, dtype=torch.float64).scatter_add(2, tokens, weight)
    got = mixture.fuse(logits, Interpreted(proposal, tokens, weight.sum(-1), gate, None, None, None, None))
    dense = (1 - gate * proposal.sum(-1)).unsqueeze(-1) * torch.softmax(logits, -1) + gate.unsqueeze(-1) * proposal
    expected = dense.log() + torch.logsumexp(logits, -1, keepdim=True)
    assert torch.allclose(got, expected, atol=1e-10)
    probe = torch.randn(B, N, V, dtype=torch.float64)
    grads = torch.autograd.grad((got * probe).sum(), (logits, weight, gate), retain_graph=True)
    expected_grads = torch.autograd.grad((expected * probe).sum(), (logits, weight, gate), retain_graph=True)
    for a, b in zip(grads, expected_grads):
        assert torch.allclose(a, b, atol=1e-9)
    # brackets from the LM: the proposal's mass on the closing tokens, and on the opening ones, is shared within each
    # group as the LM's softmax does
    groups = [torch.tensor([1, 7, 9]), torch.tensor([2, 4])]
    got = mixture.fuse(logits, Interpreted(proposal, tokens, weight.sum(-1), gate, None, None, None, None), groups)
    shared = proposal.clone()
    for group in groups:
        shared[..., group] = proposal[..., group].sum(-1, keepdim=True) * torch.softmax(logits[..., group], -1)
    assert torch.allclose(shared.sum(-1), proposal.sum(-1)) and not torch.allclose(shared, proposal)
    dense = (1 - gate * shared.sum(-1)).unsqueeze(-1) * torch.softmax(logits, -1) + gate.unsqueeze(-1) * shared
    expected = dense.log() + torch.logsumexp(logits, -1, keepdim=True)
    assert torch.allclose(got, expected, atol=1e-10)
    grads = torch.autograd.grad((got * probe).sum(), (logits, weight, gate), retain_graph=True)
    expected_grads = torch.autograd.grad((expected * probe).sum(), (logits, weight, gate))
    for a, b in zip(grads, expected_grads):
        assert torch.allclose(a, b, atol=1e-9)


def test_a_full_result_cache_starts_over(model, tok, monkeypatch):
    import modeling_nclama.calls as calls

    force(model, "long_add", site=4)
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**batch).logits
        monkeypatch.setattr(calls, "RESULT_CACHE_SIZE", 3)  # fewer than one forward's calls
        model.calls.results.clear(), model.calls.menus.clear()
        model(**tok(PROMPTS[:1], return_tensors="pt"))  # some results cached...
        model.calls.menus.clear()  # ...and the next forward needs those and more
        got = model(**batch).logits
    assert torch.equal(got, expected) and len(model.calls.results) > 3


def test_continued_sites_follow_the_recurrence_in_one_pass_or_in_steps():
    """P[t] = c_t P[t-1] + (1 - c_t) e_t: all positions at once equals the loop, and equals prefix then steps."""
    from modeling_nclama.modeling_nclama import InterpreterState

    torch.manual_seed(0)
    B, T = 2, 7
    logits = torch.randn(B, T)
    full = NCLlamaForCausalLM._continued_sites(logits, T, None)
    cont = torch.sigmoid(logits)
    previous = torch.zeros(B, T)
    for t in range(T):
        previous = cont[:, t:t + 1] * previous + (1 - cont[:, t:t + 1]) * torch.nn.functional.one_hot(torch.tensor(t), T)
        assert torch.allclose(full[:, t], previous, atol=1e-6)
    # the first 4 positions done, then one at a time
    state = InterpreterState(torch.zeros(B, 4, dtype=torch.long), None, None, None, (full[:, :4, :4],), None, None)
    step = NCLlamaForCausalLM._continued_sites(logits[:, 4:5], 5, state)
    assert torch.allclose(step[:, 0], full[:, 4, :5], atol=1e-6)



def test_the_token_site_reader_reads_a_position_and_its_predecessor(llama, lib, tok):
    model = NCLlamaForCausalLM.from_llama(llama, lib, design="paper", reader_tokens=reader_tokens(tok), nc_site_reader="tokens")
    heads = model.nc_heads
    ids = torch.tensor([tok("81273+4406=85679")["input_ids"]])
    with torch.no_grad():
        heads.sites.token.weight.copy_(torch.arange(len(tok) + 1).view(-1, 1).float())
        heads.sites.previous.weight.copy_(1000.0 * torch.arange(len(tok) + 1).view(-1, 1))
    logits = heads.continuation_logits(None, ids, 0)
    digits = {int(t) for t, text in reader_tokens(tok).items() if text.isdigit()}
    row = [len(tok) if t in digits else t for t in ids[0].tolist()]  # every digit token reads the last row
    previous = [model.config.bos_token_id] + row[:-1]
    assert logits[0].tolist() == [t + 1000.0 * p for t, p in zip(row, previous)]
    assert len(set(row)) < len(set(ids[0].tolist())) and len(tok) in row
    assert heads.continuation_logits(None, ids, 3).tolist() == [logits[0, 3:].tolist()]  # the same, a step at a time


def site_calls(model, ids):
    """(program, operand indices among the candidates, probability) of the calls recorded at the last position."""
    record = {}
    with torch.no_grad():
        model._run_decoder(True, None, record, input_ids=torch.tensor([ids]), use_cache=False)
    candidates = model.calls.operands(ids)
    return {(model.config.nc_programs[c.call.program], tuple(candidates.index(o) for o in c.operands)): c.probability
            for c in record[(0, len(ids) - 1)]}


def test_the_context_reader_reads_operands_by_their_surroundings_at_any_length(llama, lib, tok):
    """p(program, operands) = p(program) x per slot softmax over candidates of the program's scores for the token
    before each, the token after it and its rank; the same for 2- and 40-digit operands; gradients reach the tables."""
    model = NCLlamaForCausalLM.from_llama(llama, lib, design="paper", reader_tokens=reader_tokens(tok), nc_programs=["long_sub", "long_add"],
                                          nc_call_reader="keywords", nc_operand_reader="context", nc_top_k=8).eval()
    heads, P, S = model.nc_heads, 2, model.config.nc_max_operands
    torch.manual_seed(0)
    with torch.no_grad():
        heads.call.keywords.weight.fill_(-1.0)  # "Subtract" is evidence for long_sub; digits for neither
        heads.call.keywords.weight[tok("Subtract")["input_ids"][-1]] = torch.tensor([1.5, 0.5])
        for table in (heads.operands.before, heads.operands.after, heads.operands.rank):
            table.weight.normal_()
    short = tok("Subtract 12 from 345.")["input_ids"]
    got = site_calls(model, short)
    candidates = model.calls.operands(short)
    assert [o.items for o in candidates] == [("12",), ("345",)]
    none = model.config.vocab_size
    context = [(short[o.start - 1], short[o.end], len(candidates) - 1 - i) for i, o in enumerate(candidates)]
    expected = {}
    for p, name in enumerate(["long_sub", "long_add"]):
        scores = torch.stack([(heads.operands.before.weight[b] + heads.operands.after.weight[a] + heads.operands.rank.weight[r])
                              .view(P, S)[p] for b, a, r in context]).detach()  # [O, S]
        pointer = torch.softmax(scores, 0)
        for i in range(2):
            for j in range(2):
                expected[(name, (i, j))] = float(torch.softmax(torch.tensor([1.5, 0.5]), 0)[p] * pointer[i, 0] * pointer[j, 1])
    assert got.keys() == expected.keys() and all(abs(got[k] - expected[k]) < 1e-6 for k in got)
    long = tok("Subtract " + "7" * 40 + " from " + "9" * 40 + ".")["input_ids"]
    assert site_calls(model, long) == got  # the same calls with the same probabilities
    assert none not in [a for _, a, _ in context]  # both operands were closed at the site
    model.train()
    with torch.no_grad():
        heads.gate_scale.fill_(1.0)
    batch = torch.tensor([short + tok("333")["input_ids"][1:]])
    model(input_ids=batch, labels=batch).loss.backward()
    for table in ("before", "after", "rank"):
        grad = getattr(heads.operands, table).weight.grad
        assert grad is not None and grad.abs().sum() > 0, table


def test_the_gate_at_the_site_holds_for_the_whole_answer(llama, lib, tok):
    """nc_gate_at="site": each position's gate is the gates of the sites it answers, weighted by the site
    distribution; where every later position continues the call made at the "=", their gates are that one."""
    ids = torch.tensor([tok("81273+4406=85679")["input_ids"]])
    site = len(tok("81273+4406=")["input_ids"]) - 1
    gates = {}
    for where in ("position", "site"):
        model = NCLlamaForCausalLM.from_llama(llama, lib, design="paper", reader_tokens=reader_tokens(tok), nc_site_reader="tokens",
                                              nc_gate_at=where).eval()
        torch.manual_seed(0)
        with torch.no_grad():
            heads = model.nc_heads
            heads.gate_scale.fill_(1.0)
            heads.gate.weight.normal_(std=0.3), heads.gate.bias.zero_()
            heads.sites.token.weight.fill_(30.0)  # every position continues the answer before it ...
            heads.sites.previous.weight.fill_(0.0)
            heads.sites.token.weight[ids[0, site]] = -30.0  # ... but the "=", where an answer starts
            _, interpreted = model._run_decoder(True, None, input_ids=ids, use_cache=False)
        gates[where] = interpreted.gate[0]
        own = interpreted.state.gates[0]
        W = interpreted.site_probs.shape[-1]
        expected = [sum(float(interpreted.site_probs[0, t, j] * own[t - j]) for j in range(min(W, t + 1)))
                    for t in range(ids.shape[1])]
        if where == "site":
            assert torch.allclose(gates[where], torch.tensor(expected), atol=1e-6)
    assert torch.allclose(gates["site"][site:], gates["position"][site].expand(ids.shape[1] - site), atol=1e-6)
    assert (gates["position"][site + 1:] - gates["position"][site]).abs().max() > 1e-3  # the positions' own differ


def test_the_lm_chooses_the_opening_bracket_the_library_proposes(llama, lib, tok):
    """nc_openers_from_lm: at the "]." that ends a prompt, the library's "[" is shared between "[" and " [" as the LM
    prefers them (the text's answer is " [1, 3, 5, 9]"); without it, all of it goes to "["."""
    prompt = tok("Sort the list [5, 3, 9, 1].", return_tensors="pt")
    opener, spaced = tok.convert_tokens_to_ids("["), tok(" [")["input_ids"][-1]
    assert tok.decode([spaced]) == " [" and {opener, spaced} <= {int(t) for t in reader_tokens(tok)}
    probs = {}
    for shared in (False, True):
        model = NCLlamaForCausalLM.from_llama(llama, lib, design="paper", reader_tokens=reader_tokens(tok), nc_openers_from_lm=shared).eval()
        force(model, "insertion_sort", site=prompt["input_ids"].shape[1] - 1)
        with torch.no_grad():
            probs[shared] = torch.softmax(model(**prompt).logits[0, -1].double(), -1)
    lm = torch.softmax(llama(**prompt).logits[0, -1].double(), -1)
    assert probs[False][opener] > 0.99 and probs[False][spaced] < 1e-5
    both = probs[True][opener] + probs[True][spaced]
    assert both > 0.99 and torch.isclose(probs[True][spaced] / both, lm[spaced] / (lm[opener] + lm[spaced]), rtol=1e-3)


@pytest.mark.parametrize("settings, message", [
    ({"gate_learning_floor": 1.5}, "gate_learning_floor must be in [0, 1]"),
    ({"gate_target_weight": -0.5}, "gate_target_weight must be a number >= 0"),
    ({"gate_target_weight": True}, "gate_target_weight must be a number >= 0"),
])
def test_heads_training_refuses_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        HeadsTraining(**settings)


def test_how_the_heads_train_is_not_saved_with_the_model(model, tmp_path):
    model.heads_training = HeadsTraining(gate_learning_floor=0.1, gate_target_weight=1.0)
    model.save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text()
    assert "learning_floor" not in text and "target_weight" not in text and "sharpness" not in text
    assert NCLlamaForCausalLM.from_pretrained(tmp_path).heads_training == HeadsTraining()


def test_the_library_can_be_detached_and_attached_again(model, lib, tok):
    batch = tok(PROMPTS[:1], return_tensors="pt")
    force(model, "long_add", site=batch["input_ids"].shape[1] - 1)
    with torch.no_grad():
        answered = model(**batch).logits
        model.library = None  # the model is its LLaMA: nothing is proposed
        alone = model(**batch).logits
        with pytest.raises(LibraryError, match="no library attached"):
            model.explain(batch["input_ids"][0], 2)
        model.library = lib
        again = model(**batch).logits
    assert model.library is lib and torch.equal(again, answered) and not torch.equal(alone, answered)
