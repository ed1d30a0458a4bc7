"""What the model writes, and when it says it cannot: signed results of any length written as the tokenizer writes
them, calls the machine cannot take, step budgets that follow the operands, answers that end."""
import pytest
import torch
from transformers import DynamicCache

from modeling_nclama.calls import _plain, call_budget
from modeling_nclama.modeling_nclama import NCLlamaForCausalLM
from modeling_nclama.reader import Style
from modeling_nclama.toolchain.tokenization import default_tokenizer, reader_tokens
from modeling_nclama import standard_library

pytestmark = pytest.mark.usefixtures("one_thread")

PROGRAMS = ["long_add", "long_sub", "long_mul", "long_cmp", "long_gcd", "sort_numbers", "max_number", "sum_numbers"]


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


@pytest.fixture(scope="module")
def lib():
    return standard_library(256)


def open_model(tok, make_llama, lib, **settings):
    settings = {"nc_programs": PROGRAMS, "nc_call_reader": "keywords", "nc_operand_reader": "context",
                "nc_site_reader": "tokens", "nc_gate_at": "site", **settings}
    model = NCLlamaForCausalLM.from_llama(make_llama(tok), lib, design="paper", reader_tokens=reader_tokens(tok, words=[" yes", " no"]),
                                          **settings)
    with torch.no_grad():
        model.nc_heads.gate_scale.fill_(1.0)
        model.nc_heads.gate.bias.fill_(5.0)
    return model.eval()


def calls_at_last(model, ids):
    record = {}
    with torch.no_grad():
        model._run_decoder(True, None, record, input_ids=torch.tensor([ids]), use_cache=False)
    return record.get((0, len(ids) - 1), [])


def test_results_are_written_with_their_sign_and_the_space_before_them(tok, make_llama, lib):
    """With nc_answer_lead each result has two writings, both the tokenizer's: "-76867" after "=", " -76867" after
    "?"; a list keeps the prompt's style; result words carry their own space."""
    model = open_model(tok, make_llama, lib, nc_answer_lead=True, nc_result_words={"long_cmp": [" yes", " no", " no"]})
    eos = [tok.eos_token_id]
    plain, lead = model.calls.text_tokens("long_sub", -76867, Style())
    assert plain == tok("-76867", add_special_tokens=False)["input_ids"] + eos
    assert lead == tok(" -76867", add_special_tokens=False)["input_ids"] + eos
    plain, lead = model.calls.text_tokens("sort_numbers", [-9, -5, 1, 1200], Style(bracketed=True))
    assert plain == tok("[-9, -5, 1, 1200]", add_special_tokens=False)["input_ids"] + eos
    assert lead == tok(" [-9, -5, 1, 1200]", add_special_tokens=False)["input_ids"] + eos
    assert model.calls.text_tokens("long_cmp", 0, Style()) == (tok(" yes", add_special_tokens=False)["input_ids"] + eos,) * 2
    assert model.calls.text_tokens("long_add", None, Style()) == ([], [])  # a failed call proposes nothing


def test_the_call_site_token_chooses_the_writing(tok, make_llama, lib):
    """Each call's probability is split between its two writings by the lead head's probability at the call site."""
    model = open_model(tok, make_llama, lib, nc_answer_lead=True, nc_programs=["long_sub"], nc_top_k=1)
    ids = tok("What is 4406 minus 81273?")["input_ids"]
    with torch.no_grad():
        model.nc_heads.answer_lead.weight[ids[-1]] = 2.0
        _, interpreted = model._run_decoder(True, None, input_ids=torch.tensor([ids]), use_cache=False)
    tokens, probs = interpreted.state.tokens[0, -1], interpreted.state.probs[0, -1]  # [2, W], [2]
    lead = torch.sigmoid(torch.tensor(2.0))
    assert torch.allclose(probs / probs.sum(), torch.stack([1 - lead, lead]), atol=1e-6)
    for written, text in zip(tokens, ["-76867", " -76867"]):
        assert [t for t in written.tolist() if t >= 0] == tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_operands_are_passed_by_the_kinds_programs_declare(tok, make_llama, lib):
    """A number of any length or sign goes to a number parameter, a lone number is also a one-item list, an empty
    list is a list, and a list with items beyond V goes to a list-of-numbers parameter."""
    model = open_model(tok, make_llama, lib)
    names = model.config.nc_programs

    def menu(text):
        return {(names[c.call.program], c.call.arguments) for c in model.calls.menu(model.calls.operands(tok(text)["input_ids"])).choices}

    assert ("long_sub", (4406, -81273)) in menu("What is 4406 minus -81273?")
    assert ("long_gcd", (2000, 3000)) in menu("gcd(2000, 3000)=")
    assert ("sort_numbers", ((55,),)) in menu("sort: 55 ->")
    assert ("sort_numbers", ((),)) in menu("sorted([])=")
    assert ("max_number", ((5, 3, 9, 1, 1200),)) in menu("What is the largest number in [5, 3, 9, 1, 1200]?")
    assert not any(name == "long_add" for name, _ in menu("sorted([])="))  # an empty list is no number


def test_a_call_the_machine_cannot_take_keeps_its_mass_and_proposes_nothing(tok, make_llama, lib):
    """Two 130-digit operands need more memory than the V = 256 machine has for long_mul: model(...) does not raise,
    the call stays on the menu with its problem (so its probability does not move to long_add), is never run, and
    the trace says why the language model answered alone."""
    model = open_model(tok, make_llama, lib, nc_programs=["long_mul", "long_add"])
    text = "What is " + "7" * 130 + " times " + "9" * 130 + "?"
    ids = tok(text)["input_ids"]
    (choice,) = [c for c in model.calls.menu(model.calls.operands(ids)).choices if c.call.program == 0 and c.operands == (0, 1)]
    assert choice.problem is not None and "memory" in choice.problem
    with torch.no_grad():
        model.nc_heads.call.keywords.weight[:, 0] = 5.0  # every word says long_mul
        model(input_ids=torch.tensor([ids]))
    recorded = calls_at_last(model, ids)
    products = [c for c in recorded if model.config.nc_programs[c.call.program] == "long_mul"]
    assert sum(c.probability for c in products) > 0.9  # every operand pair is too large: none runs, none moves
    assert all(c.tokens == [] and "memory" in c.problem for c in products)
    top = recorded[0]
    rows = model.explain(torch.tensor(ids + tok("1", add_special_tokens=False)["input_ids"]), len(ids))
    assert rows[0]["calls"][0]["status"] == choice.problem
    assert rows[0]["no_call_reason"].startswith("the library could not answer (long_mul: not run:")


def test_no_program_for_these_operands_is_said():
    """A prompt whose operands no program takes: the row of its answer says so."""
    tok = default_tokenizer()
    lib = standard_library(256)
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, eos_token_id=tok.eos_token_id,
                                         bos_token_id=tok.bos_token_id))
    model = NCLlamaForCausalLM.from_llama(llama, lib, design="paper", reader_tokens=reader_tokens(tok), nc_programs=["gcd"]).eval()
    ids = tok("gcd([12, 18])=")["input_ids"]  # a list, where gcd takes two ints
    rows = model.explain(torch.tensor(ids + tok("6", add_special_tokens=False)["input_ids"]), len(ids))
    assert rows[0]["calls"] == []
    assert rows[0]["no_call_reason"] == ("no library program takes these operands (a list of 2 numbers): the "
                                         "language model answered alone")
    ids = tok("gcd(2000, 3000)=")["input_ids"]  # numbers, but not below V
    rows = model.explain(torch.tensor(ids + tok("1", add_special_tokens=False)["input_ids"]), len(ids))
    assert all(c["status"].startswith("not run: argument") and c["result"] is None for c in rows[0]["calls"])
    assert rows[0]["no_call_reason"].startswith("the library could not answer (gcd: not run: argument ")


def test_step_budgets_follow_the_operands(lib):
    """1000 + 64 s^2 steps for operands of size s, capped; the standard programs finish within theirs."""
    assert call_budget(["tape", "tape"], (12345, 678), 10**9) == 1000 + 64 * (6 + 4) ** 2
    assert call_budget(["int"], (30,), 10**9) == 1000 + 64 * 900
    assert call_budget(["numbers"], ((5, -1200, 7),), 10**9) == 1000 + 64 * (1 + 3 * 5) ** 2
    assert call_budget(["list"], ((1, 2, 3),), 500) == 500
    big = standard_library(1024)
    cases = [("long_mul", (int("7" * 40), int("9" * 40))), ("sort_numbers", (list(range(999, 935, -1)),)),
             ("fib_tape", (120,)), ("long_add", (int("8" * 40), -int("3" * 40))), ("long_gcd", (987654321012, 123456789012))]
    for name, args in cases:
        kinds = [kind for _, kind in big[name].params]
        run = big.run_batch(name, [list(args)], max_steps=call_budget(kinds, args, 10**9))
        assert run.status == ["ok"], (name, run.steps)


def _sites(model, ids):
    with torch.no_grad():
        _, interpreted = model._run_decoder(True, None, input_ids=torch.tensor([ids]), use_cache=False)
    return interpreted


def test_no_call_starts_at_an_answers_last_token(tok, make_llama, lib):
    """Once the text after a call site holds that call's whole result, the position that wrote its last token goes
    on answering it and proposes the end, even where its token would start a new answer (" no" read as a new call
    site would answer again); in one pass or token by token the same. What follows the end reads as usual."""
    model = open_model(tok, make_llama, lib, nc_programs=["long_cmp", "long_add"],
                       nc_result_words={"long_cmp": [" yes", " no", " no"]})
    with torch.no_grad():
        model.nc_heads.sites.token.weight.fill_(-30.0)  # every position would start a new answer
        model.nc_heads.call.keywords.weight.fill_(0.0)
        model.nc_heads.call.keywords.weight[tok(" smaller", add_special_tokens=False)["input_ids"][0], 0] = 5.0
    prompt = tok("Is 15 smaller than 7?")["input_ids"]
    ids = prompt + tok(" no 7", add_special_tokens=False)["input_ids"]
    interpreted = _sites(model, ids)
    last = len(prompt)  # " no", the whole result of the call at "?"
    assert float(interpreted.site_probs[0, last, 1]) > 0.99  # it goes on answering "?" ...
    assert float(interpreted.proposal[0, last, tok.eos_token_id]) > 0.25  # ... and proposes the end
    assert torch.isclose(interpreted.proposal[0, last, tok.eos_token_id], interpreted.mass[0, last])
    assert float(interpreted.site_probs[0, last + 1, 0]) > 0.99  # the text after the end starts anew
    model.train()  # training reads every position as it is (its answers end with the end of text)
    assert float(_sites(model, ids).site_probs[0, last, 0]) > 0.99
    model.eval()
    stepped = []
    cache = DynamicCache()
    for t in range(len(ids)):
        with torch.no_grad():
            model(input_ids=torch.tensor([ids[t : t + 1]]), cache=cache, use_cache=True)
        stepped.append(cache.nc_state.last_sites[0])
    assert int(stepped[last].argmax()) == last - 1 and int(stepped[last + 1].argmax()) == last + 1


def test_positions_whose_calls_do_not_run_start_no_answer(tok, make_llama, lib):
    """Inside a long answer every separator keeps a little new-site mass; its calls weigh too little to run, so it
    starts no answer and the answer's site keeps its whole mass (else it would drain by that little at every item)."""
    arrow = tok(" ->", add_special_tokens=False)["input_ids"][-1]
    model = open_model(tok, make_llama, lib, nc_programs=["sort_numbers"], nc_min_call_probability=0.05)
    with torch.no_grad():
        model.nc_heads.sites.token.weight.fill_(4.6)  # every position continues the answer before it with c = 0.99,
        model.nc_heads.sites.token.weight[arrow] = -30.0  # but the arrow starts one
    prompt = tok("sort: 5 3 9 1 ->")["input_ids"]
    assert prompt[-1] == arrow
    ids = prompt + tok(" 1 3 5 9", add_special_tokens=False)["input_ids"]
    site = len(prompt) - 1
    answered = [float(_sites(model, ids).site_probs[0, t, t - site]) for t in range(len(prompt), len(ids))]
    assert min(answered) > 0.999
    model.config.nc_min_call_probability = 0.0  # every call runs: each position starts an answer with 1 - c
    drained = [float(_sites(model, ids).site_probs[0, t, t - site]) for t in range(len(prompt), len(ids))]
    assert drained[-1] == pytest.approx(0.99 ** len(drained), rel=1e-2) and drained[-1] < 0.95


def test_an_answer_runs_to_its_end(tok, make_llama, lib):
    """While the text after a site holds the first tokens of its call's result, no new answer starts before the
    result's end, however much new-site mass the separators keep and whatever calls the new sites would make: a
    64-item sort's site fell to about half by its last items and the LM's guess won. Where the text departs from
    the result the rule lets go, and training reads every position as it is."""
    arrow = tok(" ->", add_special_tokens=False)["input_ids"][-1]
    model = open_model(tok, make_llama, lib, nc_programs=["sort_numbers"], nc_min_call_probability=0.0,
                       nc_answer_lead=True)  # (half the call's mass writes " 1 3 ...", half "1 3 ...")
    with torch.no_grad():
        model.nc_heads.sites.token.weight.fill_(2.2)  # every position continues the answer before it with c = 0.9,
        model.nc_heads.sites.token.weight[arrow] = -30.0  # but the arrow starts one
    prompt = tok("sort: 5 3 9 1 12 7 ->")["input_ids"]
    site = len(prompt) - 1

    def answered(text):
        ids = prompt + tok(text, add_special_tokens=False)["input_ids"]
        return [float(_sites(model, ids).site_probs[0, t, t - site]) for t in range(len(prompt), len(ids))], ids

    held, ids = answered(" 1 3 5 7 9 12")
    assert min(held) > 0.999
    cache, stepped = DynamicCache(), []  # token by token the same: each position continues from what the rule held
    for t in range(len(ids)):
        with torch.no_grad():
            model(input_ids=torch.tensor([ids[t : t + 1]]), cache=cache, use_cache=True)
        if t >= len(prompt):
            stepped.append(float(cache.nc_state.last_sites[0, site]))
    assert stepped == pytest.approx(held, abs=1e-5)
    departed, _ = answered(" 1 3 8 8 8 8")  # the text leaves the result at "8": from there on it drains
    assert departed[3] > 0.999 and departed[-1] < 0.9 * departed[4]
    model.train()
    with torch.no_grad():
        _, interpreted = model._run_decoder(True, None, input_ids=torch.tensor([ids]), use_cache=False)
    drained = [float(interpreted.site_probs[0, t, t - site]) for t in range(len(prompt), len(ids))]
    assert drained[-1] < 0.5


def test_a_prompt_that_goes_on_past_a_calls_result_is_read_as_usual(tok, make_llama, lib):
    """"1+2=": the call at "+" reads 1 + 1, whose result "2" the prompt then happens to write; the prompt goes on,
    and "=" starts the answer that is asked for."""
    model = open_model(tok, make_llama, lib, nc_programs=["long_add"])
    with torch.no_grad():
        model.nc_heads.sites.token.weight.fill_(-30.0)  # every position starts a new answer ...
        model.nc_heads.sites.token.weight[-1] = 30.0  # ... but digits continue one
    ids = tok("1+2=")["input_ids"]
    interpreted = _sites(model, ids)
    plus = ids.index(tok("+", add_special_tokens=False)["input_ids"][0])
    assert float(interpreted.site_probs[0, plus + 1, 1]) > 0.99  # "2" answers "+"
    assert float(interpreted.site_probs[0, len(ids) - 1, 0]) > 0.99  # "=" starts a new answer
    assert int(interpreted.proposal[0, -1].argmax()) == tok("3", add_special_tokens=False)["input_ids"][0]


def test_a_call_answers_only_while_the_text_agrees_with_its_result(tok, make_llama, lib):
    """A call made one position early ("81273-4406" at its last digit) proposes its first result token where the
    prompt says "=": continued into the answer it would write long_sub(4406, 81273) = -76867 without its sign, which
    is 81273 - 4406 with the operands reversed. Its first token disagrees with the text, so no later position takes
    the call on: every call pays for each token it proposes."""
    model = open_model(tok, make_llama, lib, nc_programs=["long_sub"])
    with torch.no_grad():
        heads = model.nc_heads
        heads.sites.token.weight.fill_(-30.0)  # every position starts a new answer ...
        heads.sites.previous.weight.fill_(0.0)
        heads.sites.token.weight[tok("=", add_special_tokens=False)["input_ids"][0]] = 30.0  # ... but "=" continues one
    prompt = tok("81273-4406=")["input_ids"]
    answer = tok("76867", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + answer])
    record = {}
    with torch.no_grad():
        _, interpreted = model._run_decoder(True, None, record, input_ids=ids, use_cache=False)
    early, equals = len(prompt) - 2, len(prompt) - 1
    calls = {tuple(_plain(c.call.arguments)): c.tokens for c in record[(0, early)]}
    assert calls[(4406, 81273)] == tok("-76867", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert interpreted.site_probs[0, equals, 1] > 0.99  # "=" answers the call made at "6", one token further ...
    assert interpreted.mass[0, early] > 0.5  # ... whose first tokens were proposed where the prompt goes on
    assert float(interpreted.mass[0, equals]) < 1e-6  # but the text said "=", not "-": nothing goes on from there


def test_no_answer_starts_at_a_minus_sign(tok, make_llama, lib):
    """A sign is the first token of the number it writes: at "-" the answer of the position before goes on, so that
    "-76867" cannot be the LM's "-" followed by a new call for 76867 (long_sub with its operands reversed)."""
    model = open_model(tok, make_llama, lib, nc_programs=["long_sub"])
    with torch.no_grad():
        model.nc_heads.sites.token.weight.fill_(-30.0)  # every other position starts a new answer
    prompt = tok("4406-81273=")["input_ids"]
    ids = torch.tensor([prompt + tok("-76867", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        _, interpreted = model._run_decoder(True, None, input_ids=ids, use_cache=False)
    equals, sign = len(prompt) - 1, len(prompt)
    assert tok.decode(ids[0, sign]) == "-"
    assert float(interpreted.site_probs[0, sign, 1]) == 1.0  # "-" answers the call made at "=", one token further
    assert float(interpreted.site_probs[0, equals, 0]) > 0.99  # "=" starts it
    assert float(interpreted.site_probs[0, len(prompt) - 4, 0]) == 0.0  # nor is the operator "-" a call site


def test_the_gate_opens_where_the_words_of_the_sentence_ask(tok, make_llama, lib):
    """nc_gate_reader "words": the gate is the hidden state's opening times the sentence's: the mean of a learned
    score per word over the position's sentence, plus a bias. A sentence of words with no score (never trained)
    stays as closed as the bias says, whatever the hidden state makes of it; a new sentence reads its own words; the
    same token by token as in one pass."""
    from modeling_nclama.heads import WORDS_GATE_PRIOR

    model = open_model(tok, make_llama, lib, nc_programs=["long_add"], nc_gate_reader="words")
    assert float(model.nc_heads.gate_reader.bias) == WORDS_GATE_PRIOR < 0  # a sentence asks nothing at first
    assert not model.nc_heads.gate_reader.words.weight.any()
    what = tok("What", add_special_tokens=False)["input_ids"][0]
    question = tok("What is 3 plus 4?")["input_ids"]
    # a statement that shares a word with the question (" is"): a max over its words would open, their mean does not
    statement = tok(" The bus is at 5 from stop 12.", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        model.nc_heads.gate_reader.bias.fill_(-10.0)
        model.nc_heads.gate_reader.words.weight[question] = 20.0  # its digits and BOS too: they are no words
    assert set(question) & set(statement)
    ids = question + statement
    with torch.no_grad():
        _, interpreted = model._run_decoder(True, None, input_ids=torch.tensor([ids]), use_cache=False)
    gate_logits = interpreted.gate_logits[0]
    hidden_open = torch.sigmoid(torch.tensor(5.0))  # open_model's gate bias (the tiny LLaMA's hidden map is small)
    asks = float(torch.sigmoid(gate_logits[len(question) - 1]))
    assert asks == pytest.approx(float(hidden_open * torch.sigmoid(torch.tensor(10.0))), abs=0.02)
    assert float(torch.sigmoid(gate_logits[-1])) < 1e-3  # the statement after the question asks nothing
    assert float(torch.sigmoid(gate_logits[question.index(what)])) > 0.9  # "What" opens its sentence at once
    cache = DynamicCache()
    for t in range(len(ids)):
        with torch.no_grad():
            model(input_ids=torch.tensor([ids[t : t + 1]]), cache=cache, use_cache=True)
    assert cache.nc_state.gates[0].tolist() == pytest.approx(torch.sigmoid(gate_logits).tolist(), abs=1e-5)
    logits = torch.tensor([-3.0, 0.0, 4.0])
    asks_logit = model.nc_heads.gate_reader.bias.detach() + 0.0
    product = torch.sigmoid(logits) * torch.sigmoid(asks_logit)
    with torch.no_grad():
        combined = model.nc_heads.gate_reader(logits.unsqueeze(0), torch.tensor([[statement[0]] * 3]), 0)[0]
    assert torch.sigmoid(combined) == pytest.approx(product, rel=1e-4)


def test_the_call_head_reads_the_words_of_its_own_sentence(tok, make_llama, lib):
    """Keyword evidence restarts after a sentence's end ("?", "."): in "What is 3 plus 4? What is 9 minus 2?" the call at
    the second "?" reads " minus", not " plus"; in one pass or token by token the same."""
    model = open_model(tok, make_llama, lib, nc_programs=["long_add", "long_sub"])
    heads = model.nc_heads
    with torch.no_grad():
        heads.call.keywords.weight.fill_(0.0)
        heads.call.keywords.weight[tok(" plus", add_special_tokens=False)["input_ids"][0]] = torch.tensor([5.0, 0.0])
        heads.call.keywords.weight[tok(" minus", add_special_tokens=False)["input_ids"][0]] = torch.tensor([0.0, 5.0])
    ids = torch.tensor([tok("What is 3 plus 4? What is 9 minus 2?")["input_ids"]])
    evidence = heads.call.evidence(ids)
    first_end = tok("What is 3 plus 4?")["input_ids"].__len__() - 1
    assert evidence[0, first_end].tolist() == [5.0, 0.0]  # the first question's "?" still reads " plus"
    assert evidence[0, -1].tolist() == [0.0, 5.0]  # the second reads its own words only
    stepped = [heads.call.evidence(ids[:, :1])]
    for t in range(1, ids.shape[1]):
        after_end = torch.isin(ids[:, t - 1], torch.tensor(heads.sentences.ends))
        stepped.append(heads.call.evidence(ids[:, t : t + 1], stepped[-1][:, -1], after_end))
    assert torch.equal(torch.cat(stepped, 1), evidence)
