"""The tokenizer of the shipped models: LLaMA 3 pre-tokenization, byte-level BPE, every 1-3 digit chunk one token; the
operand reader's table built from it."""
import json
import random
import time

import pytest

from modeling_nclama.toolchain.tokenization import (
    BOS, DEFAULT_VOCAB_SIZE, EOS, LLAMA3_PATTERN, MIN_VOCAB_SIZE, PAD, continuation_ids, corpus, digit_strings,
    load_tokenizer, number_token_values, reader_tokens, save_tokenizer, token_texts, train_tokenizer,
)

EDGE_STRINGS = [
    "", " ", "  ", "\n", "\n\n", "\r\n", "\t", " \t \n ", "a", " a", "a ", "  a  b  ", "0", "00", "000", "0000",
    "007", " 42", "42 ", "-17", "+3", "1.5e-10", "3,141,592", "1 000 000", "x1y22z333w4444", "a1", "1a", "v2.0.1",
    "I'm", "it's", "THEY'LL", "we'VE", "don't", "'s", "''", "\"quoted\"", "(a+b)*c", "[1, 2, 3]", "{'k': [1]}",
    "héllo wörld", "naïve café", "日本語のテキスト", "Привет, мир!", "مرحبا ١٢٣", "²³ ½ Ⅻ", "👍🏽👨‍👩‍👧", "e\u0301",
    "\u200b\u200d", "\x00\x01\x7f", "tab\there", "line1\nline2\r\nline3\rline4", "   \n   ", "a\n\n\nb", "...!!!???",
    "<|begin_of_text|>", "<|end_of_text|> after", "<|pad|>", "81273+4406=85679", "What is 81273 plus 4406?",
]


def _random_unicode(rng, n, astral=True):
    """Random text from mixed scripts. ``astral=False`` leaves out the supplementary planes, where the Unicode
    versions of Oniguruma (the tokenizers library's regex engine) and Python's ``regex`` disagree on letters."""
    pools = [
        (0x20, 0x7E), (0x30, 0x39), (0x09, 0x0D), (0xA0, 0x2FF), (0x370, 0x3FF), (0x400, 0x4FF), (0x600, 0x6FF),
        (0x660, 0x669), (0x2000, 0x206F), (0x3040, 0x30FF), (0x4E00, 0x4FFF), (0x1F300, 0x1F6FF),
    ] + ([(0x10000, 0x10FFFF)] if astral else [])
    out = []
    for _ in range(n):
        lo, hi = rng.choice(pools)
        c = rng.randint(lo, hi)
        if 0xD800 <= c <= 0xDFFF:  # lone surrogates are not valid text
            c = 0x41
        out.append(chr(c))
    return "".join(out)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(corpus(20000, seed=0))


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _pieces(tok, text):
    """The decoded text of each token (bytes of a multi-byte character may be split over tokens: those are bytes)."""
    return [tok.decode([i]) for i in _ids(tok, text)]


# ------------------------------------------------------------------------------------------------------------ corpus

def test_corpus_is_deterministic_and_covers_the_formats():
    a = list(corpus(3000, seed=0))
    assert a == list(corpus(3000, seed=0))
    assert a != list(corpus(3000, seed=1))
    assert len(a) == 3000 and all(isinstance(x, str) and x for x in a)
    text = "\n".join(corpus(20000, seed=0))
    for needle in ("+", "What is", " plus ", "Add ", "Is ", " less than ", "gcd(", "!=", "fib(", "sort: ", " -> ",
                   "Sort the list [", "largest number in [", "sum of [", "insertion_sort:\nkey: [", "\npred:\n",
                   " minus ", " times ", "smallest", "product", "difference", "compute", "answer"):
        assert needle in text.lower() or needle in text, needle
    import regex

    lengths = {len(m) for m in regex.findall(r"\d+", text)}
    assert 1 in lengths and 40 in lengths and max(lengths) >= 40


# ------------------------------------------------------------------------------------------------- numbers/digits

def test_numbers_split_like_llama3(tok):
    ids = tok("81273+4406=")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == [BOS, "812", "73", "+", "440", "6", "="]
    assert _pieces(tok, "What is 81273 plus 4406?") == ["What", " is", " ", "812", "73", " plus", " ", "440", "6", "?"]
    assert _pieces(tok, "1000007") == ["100", "000", "7"]
    assert _pieces(tok, "007") == ["007"]


def test_long_numbers_are_left_to_right_chunks_of_three(tok):
    rng = random.Random(1)
    for _ in range(500):
        n = rng.randint(1, 40)
        s = "".join(rng.choice("0123456789") for _ in range(n))
        assert _pieces(tok, s) == [s[i:i + 3] for i in range(0, n, 3)], s


def test_every_digit_string_of_length_1_to_3_is_one_token(tok):
    strings = digit_strings()
    assert len(strings) == 1110 and len(set(strings)) == 1110
    vocab = tok.get_vocab()
    for s in strings:
        assert s in vocab, s
        assert _ids(tok, s) == [vocab[s]], s
        assert tok.decode([vocab[s]]) == s


def test_number_token_values_is_exactly_the_digit_strings(tok):
    table = number_token_values(tok)
    assert sorted(table.values()) == sorted(digit_strings())
    vocab = tok.get_vocab()
    assert all(vocab[s] == i for i, s in table.items())
    assert list(table) == sorted(table)  # ordered by id
    for special in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id):
        assert special not in table


def test_no_token_mixes_digits_with_anything_else(tok):
    for token in tok.get_vocab():
        if any("0" <= ch <= "9" for ch in token):
            assert token.isascii() and token.isdigit() and 1 <= len(token) <= 3, token
    # and in use: on corpus lines and random text, every token holding a digit is a pure 1-3 digit chunk
    rng = random.Random(2)
    texts = list(corpus(2000, seed=7)) + [_random_unicode(rng, 40) for _ in range(300)] + EDGE_STRINGS
    for text in texts:
        for token in tok.convert_ids_to_tokens(_ids(tok, text)):
            if any("0" <= ch <= "9" for ch in token):
                assert token.isdigit() and 1 <= len(token) <= 3, (text, token)


def test_pre_tokenization_is_llama3_regex(tok):
    import regex

    pattern = regex.compile(LLAMA3_PATTERN)
    pre = tok.backend_tokenizer.pre_tokenizer
    byte_decoder = {c: b for b, c in _byte_map().items()}
    rng = random.Random(3)
    texts = list(corpus(500, seed=5)) + [_random_unicode(rng, 30, astral=False) for _ in range(500)] + EDGE_STRINGS
    for text in texts:
        got = [bytes(byte_decoder[c] for c in piece).decode("utf-8") for piece, _ in pre.pre_tokenize_str(text)]
        assert got == pattern.findall(text), text


def _byte_map():
    from modeling_nclama.toolchain.tokenization import _bytes_to_unicode

    return _bytes_to_unicode()


def test_byte_symbols_have_byte_ids(tok):
    vocab = tok.get_vocab()
    for b, ch in _byte_map().items():
        assert vocab[ch] == b


# ---------------------------------------------------------------------------------------------------- round trips

def test_decode_encode_round_trip(tok):
    rng = random.Random(4)
    texts = list(corpus(3000, seed=11)) + EDGE_STRINGS + [_random_unicode(rng, rng.randint(0, 60)) for _ in range(1000)]
    for text in texts:
        ids = _ids(tok, text)
        assert tok.decode(ids) == text, text
        with_bos = tok(text)["input_ids"]
        assert with_bos == [tok.bos_token_id] + ids
        assert tok.decode(with_bos) == BOS + text
        if not any(sp in text for sp in (BOS, EOS, PAD)):
            assert tok.decode(with_bos, skip_special_tokens=True) == text


def test_special_tokens_and_size(tok):
    assert len(tok) == DEFAULT_VOCAB_SIZE == 2048
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (BOS, EOS, PAD)
    ids = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
    assert len(ids) == 3 and ids == {2045, 2046, 2047}  # specials last, like LLaMA 3
    assert tok("hi")["input_ids"][0] == tok.bos_token_id
    assert tok("")["input_ids"] == [tok.bos_token_id]
    assert _ids(tok, "a <|end_of_text|>")[-1] == tok.eos_token_id  # specials are matched in text
    batch = tok(["a 1", "bb 22 333"], padding=True)
    assert batch["input_ids"][0][-1] == tok.pad_token_id and batch["attention_mask"][0][-1] == 0


def test_vocab_size_must_hold_the_digit_tokens():
    assert MIN_VOCAB_SIZE == 256 + 1100 + 3
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(corpus(100), vocab_size=1024)
    small = train_tokenizer(corpus(2000), vocab_size=MIN_VOCAB_SIZE)
    assert len(small) == MIN_VOCAB_SIZE
    assert len(number_token_values(small)) == 1110
    assert _ids(small, "81273") == [small.get_vocab()["812"], small.get_vocab()["73"]]


def test_save_and_load_with_auto_tokenizer(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    files = save_tokenizer(tok, tmp_path / "tok")
    names = {p.split("/")[-1] for p in files}
    assert {"tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert config["bos_token"] == BOS and config["eos_token"] == EOS and config["pad_token"] == PAD
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert loaded.get_vocab() == tok.get_vocab()
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert number_token_values(loaded) == number_token_values(tok)
    rng = random.Random(5)
    texts = list(corpus(1000, seed=13)) + EDGE_STRINGS + [_random_unicode(rng, 30) for _ in range(200)]
    for text in texts:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"], text
        assert loaded.decode(loaded(text, add_special_tokens=False)["input_ids"]) == text
    assert load_tokenizer(tmp_path / "tok").get_vocab() == tok.get_vocab()


def test_training_is_deterministic(tok):
    again = train_tokenizer(corpus(20000, seed=0))
    assert again.get_vocab() == tok.get_vocab()
    merges_a = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    merges_b = json.loads(again.backend_tokenizer.to_str())["model"]["merges"]
    assert merges_a == merges_b
    # the digit tokens do not depend on the corpus at all
    other = train_tokenizer(corpus(3000, seed=9))
    assert number_token_values(other) == number_token_values(tok)


def test_training_20k_lines_is_fast():
    start = time.perf_counter()
    t = train_tokenizer(corpus(20000, seed=0))
    elapsed = time.perf_counter() - start
    assert len(t) == DEFAULT_VOCAB_SIZE
    assert elapsed < 30, elapsed


# ---------------------------------------------------------------------------------------------- the reader's table

def test_token_texts_and_continuations_are_the_plain_ones_for_a_byte_level_tokenizer(tok):
    """Byte-level BPE puts nothing before the start of a text: a token's text is its string, a text's ids where it
    continues other text are ``encode(text)`` (SentencePiece differs: tests/test_tokenizer_kinds.py)."""
    texts = token_texts(tok)
    vocab = tok.get_vocab()
    assert len(texts) == len(tok) - 3  # every token but the specials
    assert all(texts[i] == tok.convert_tokens_to_string([token]) for token, i in vocab.items() if i in texts)
    for text in ["-5", " [-3, 4]", "[]", "81273", " 0.549", "Sort the list [5, 3]."]:
        assert continuation_ids(tok, text) == _ids(tok, text), text


def test_reader_tokens_holds_digits_punctuation_and_words(tok):
    table = reader_tokens(tok, words=[" yes", " no"])
    texts = set(table.values())
    assert set(digit_strings()) <= texts and {"-", " -", "=-", "[", " [", "]", "].", ",", " ", ".", "?"} <= texts
    assert {" yes", " no"} <= texts and "yes" not in texts
    assert table == dict(sorted(table.items(), key=lambda kv: int(kv[0])))  # ordered by id, keys are strings
    with pytest.raises(ValueError, match="is not one token"):
        reader_tokens(tok, words=["no way"])
