"""Tokenizer of the shipped NCLlama models (toolchain: never imported by the runtime model files).

The tokenizer is a byte-level BPE with LLaMA 3's pre-tokenization, trained here from generated text (nothing is
downloaded), so the model's compiled token-to-value reader works the same on our models and on real LLaMA 3
checkpoints:

- Pre-tokenizer: ``Split`` on LLaMA 3's regex (:data:`LLAMA3_PATTERN`, behavior ``isolated``) followed by
  ``ByteLevel(add_prefix_space=False, use_regex=False)``. The ``\\p{N}{1,3}`` alternative cuts every digit run left
  to right into chunks of 1-3 digits ("81273" -> "812", "73"), and a chunk is always its own pre-token, so no BPE
  merge can ever join a digit with anything that is not a digit.
- Digit tokens: the vocabulary holds every 1-, 2- and 3-digit string ("0".."9", "00".."99", "000".."999", leading
  zeros included, since "1007" -> "100", "7" and "1000007" -> "100", "000", "7"), so every chunk is exactly one
  token. The BPE trainer learns only the merges of non-digit text (any learned merge whose result contains an ASCII
  digit is dropped); the digit merges are then added in a canonical, corpus-independent form, so the ids and merges of
  digit tokens do not depend on the training text.
- Vocabulary layout: ids 0..255 are the 256 byte symbols in byte order (id == byte value), then the merged tokens in
  merge-rank order (the 1100 digit merges first, then the learned merges), then the special tokens
  ``<|begin_of_text|>`` (bos), ``<|end_of_text|>`` (eos), ``<|pad|>`` (pad), like LLaMA 3 puts its specials last.
- Size: 256 bytes + 1100 digit tokens + 3 specials = 1359 tokens are fixed, so ``vocab_size`` must be at least
  :data:`MIN_VOCAB_SIZE`; the default 2048 leaves 689 learned merges for words and punctuation. ``vocab_size`` counts
  everything (specials included); it is met exactly unless the corpus runs out of mergeable pairs.
- A post-processor prepends bos (``add_special_tokens=True``, the default); the ByteLevel decoder inverts the
  byte mapping, so ``decode(encode(x, add_special_tokens=False)) == x`` for every string.

API: :func:`corpus`, :func:`train_tokenizer`, :func:`save_tokenizer`, :func:`load_tokenizer`,
:func:`number_token_values`, :func:`default_tokenizer`; for any LLaMA-family tokenizer (this one, SmolLM2's
byte-level BPE, LLaMA 2's SentencePiece): :func:`reader_tokens` (the operand reader's table, checked with
:func:`writer_mismatches`), :func:`token_texts`, :func:`continuation_ids`.
"""
from __future__ import annotations

import json
import math
import os
import random
from typing import Iterable, Iterator, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ..reader import OperandReader, Style, token_roles

__all__ = [
    "BOS", "EOS", "PAD", "LLAMA3_PATTERN", "MIN_VOCAB_SIZE", "DEFAULT_VOCAB_SIZE", "corpus", "train_tokenizer",
    "save_tokenizer", "load_tokenizer", "number_token_values", "default_tokenizer", "digit_strings", "token_texts",
    "continuation_ids", "reader_tokens", "writer_mismatches",
]

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [BOS, EOS, PAD]

#: The pre-tokenization regex of LLaMA 3 (tiktoken's cl100k pattern with numbers limited to 1-3 digits).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

NUM_DIGIT_TOKENS = 10 + 100 + 1000
MIN_VOCAB_SIZE = 256 + (NUM_DIGIT_TOKENS - 10) + len(SPECIAL_TOKENS)  # 1359: the single digits are bytes
DEFAULT_VOCAB_SIZE = 2048


# ----------------------------------------------------------------------------------------------------------------
# corpus
# ----------------------------------------------------------------------------------------------------------------

_WORDS = (
    "the a an of to in is are was and or not what which how many much number numbers list lists sum largest smallest "
    "product difference times minus plus divided by compute calculate answer result question value values digit "
    "digits add subtract multiply divide sort sorted order ascending descending first last element elements count "
    "even odd prime greater less than equal maximum minimum total average each every give me find please then "
    "program algorithm step steps input output memory register call return machine library model token tokens "
    "greatest common divisor factorial fibonacci remainder quotient power square root between from with for it this "
    "that we you they can will should must if so because true false yes no zero one two three four five six seven "
    "eight nine ten hundred thousand million billion key pred insertion bubble merge quick search binary array index"
    # general English, so the learned merges also cover ordinary prose
    " about above across after again against all almost along already also always among another any anything around"
    " ask asked back be became become been before began begin behind being below best better big both bring build"
    " but came case change children city close come could country day days did different do does done down during"
    " early end enough even ever example fact family far feel few field find follow food form found friend full game"
    " general get given go going good got government group had hand hard has have he head help her here high him his"
    " home house however idea important information into its just keep kind know known large later learn left let"
    " life light like line little live long look made make making man may mean might more most move must my name near"
    " need never new next night now often old only open other our out over own part people place play point possible"
    " power problem public put read real right room run said same saw say school see seem seen several she short show"
    " side since small something sometimes soon start state still story study such system take team tell test text"
    " their them there these thing things think those though through time today together too took turn under until"
    " up us use used using very want water way well went were when where while who why work world would write year"
    " years young your simple exact exactly correct wrong check again carry borrow column row table pair sequence"
    " string integer length position left right next previous small large pointer operand operands gate loop"
).split()

_TEMPLATES_SENTENCE = (
    "The {w1} of the {w2} is the {w3}.",
    "Compute the {w1} of these numbers and give the answer.",
    "We {w1} the {w2} and then {w3} the {w4}.",
    "What is the {w1} of the {w2}?",
    "Please {w1} the {w2} of {w3} numbers.",
    "The answer is the {w1} {w2}, not the {w3}.",
    "{W1} {w2} {w3} {w4} {w5}.",
    "Each {w1} in the list is {w2} than the {w3}.",
    "If the {w1} is {w2}, the {w3} is {w4}; otherwise it's {w5}.",
    "The model calls the {w1} program and reads the {w2}.",
    "{W1} {w2} {w3} {w4} {w5} {w6} {w7}, {w8} {w9}.",
    "{W1} {w2} {w3}, {w4} {w5} {w6}!",
    "\"{W1} {w2},\" {w3} {w4} {w5}.",
    "Why {w1} {w2} {w3}?",
    "{W1} {w2} {w3} {w4} ({w5} {w6}) {w7} {w8}.",
)


def _number(rng: random.Random, max_digits: int = 40) -> int:
    """A non-negative integer whose digit count is skewed to short numbers but reaches ``max_digits``."""
    r = rng.random()
    if r < 0.35:
        digits = rng.randint(1, 3)
    elif r < 0.75:
        digits = rng.randint(1, 6)
    elif r < 0.92:
        digits = rng.randint(1, 12)
    else:
        digits = rng.randint(1, max_digits)
    if digits == 1:
        return rng.randint(0, 9)
    return rng.randint(10 ** (digits - 1), 10 ** digits - 1)


def _small_list(rng: random.Random) -> list[int]:
    n = rng.randint(1, 10)
    hi = rng.choice((9, 99, 999, 9999, 10 ** 6))
    return [rng.randint(0, hi) for _ in range(n)]


def _line(rng: random.Random) -> str:
    kind = rng.randrange(24)
    a, b = _number(rng), _number(rng)
    if kind == 0:
        return f"{a}+{b}={a + b}"
    if kind == 1:
        op = rng.choice(("plus", "minus", "times"))
        val = {"plus": a + b, "minus": a - b, "times": a * b}[op]
        return f"What is {a} {op} {b}? {val}"
    if kind == 2:
        x, y = rng.randint(0, 999), rng.randint(0, 999)
        verb, val = rng.choice((("Add", x + y), ("Multiply", x * y)))
        joiner = "and" if verb == "Add" else "by"
        return f"{verb} {x} {joiner} {y}. {val}"
    if kind == 3:
        rel = rng.choice(("less", "greater"))
        ans = (a < b) if rel == "less" else (a > b)
        return f"Is {a} {rel} than {b}? {'yes' if ans else 'no'}"
    if kind == 4:
        x, y = rng.randint(0, 10 ** rng.randint(1, 6)), rng.randint(0, 10 ** rng.randint(1, 6))
        return f"gcd({x}, {y})={math.gcd(x, y)}"
    if kind == 5:
        n = rng.randint(0, 30)
        return f"{n}!={math.factorial(n)}"
    if kind == 6:
        n = rng.randint(0, 150)
        f0, f1 = 0, 1
        for _ in range(n):
            f0, f1 = f1, f0 + f1
        return f"fib({n})={f0}"
    if kind == 7:
        xs = _small_list(rng)
        return f"sort: {' '.join(map(str, xs))} -> {' '.join(map(str, sorted(xs)))}"
    if kind == 8:
        xs = _small_list(rng)
        return f"Sort the list {xs}. {sorted(xs)}"
    if kind == 9:
        xs = _small_list(rng)
        which = rng.choice(("largest", "smallest"))
        return f"What is the {which} number in {xs}? {max(xs) if which == 'largest' else min(xs)}"
    if kind == 10:
        xs = _small_list(rng)
        which = rng.choice(("sum", "product"))
        val = sum(xs)
        if which == "product":
            val = 1
            for x in xs:
                val *= x
        return f"What is the {which} of {xs}? {val}"
    if kind == 11:
        xs = _small_list(rng)
        algo = rng.choice(("insertion_sort", "bubble_sort", "merge_sort", "quicksort", "heapsort"))
        key = " ".join(map(str, xs))
        pred = " ".join(map(str, sorted(xs)))
        return f"{algo}:\nkey: [{key}]\npred:\n[{pred}]"
    if kind == 12:
        return f"{a}-{b}={a - b}"
    if kind == 13:
        x, y = _number(rng, 12), _number(rng, 12)
        return f"{x}*{y}={x * y}"
    if kind == 14:
        y = max(1, _number(rng, 8))
        return f"{a}//{y}={a // y}, {a}%{y}={a % y}"
    if kind == 15:
        op, sym = rng.choice((("sum", "+"), ("difference", "-"), ("product", "*")))
        val = {"+": a + b, "-": a - b, "*": a * b}[sym]
        return f"Compute the {op} of {a} and {b}. The answer is {val}."
    if kind == 16:
        return f"Q: What is {a} plus {b}?\nA: {a + b}"
    if kind == 17:
        return f"{a} < {b}: {'True' if a < b else 'False'}"
    if kind == 18:
        xs = _small_list(rng)
        return f"max({', '.join(map(str, xs))})={max(xs)}"
    if kind == 19:
        return f"The number {a} has {len(str(a))} digits."
    if kind == 20:
        x = rng.randint(0, 999)
        return f"{x:03d} {rng.randint(0, 99):02d} {x:0{rng.randint(4, 9)}d}"
    # plain sentences with common words
    template = rng.choice(_TEMPLATES_SENTENCE)
    words = {f"w{i}": rng.choice(_WORDS) for i in range(1, 10)}
    words["W1"] = words["w1"].capitalize()
    return template.format(**words)


def corpus(num_lines: int = 20000, seed: int = 0) -> Iterator[str]:
    """Yield ``num_lines`` deterministic lines of generated English-ish text: arithmetic prompts and answers in many
    formats (numbers of 1 to 40 digits), sorting and list questions, CLRS-style traces, and plain sentences."""
    rng = random.Random(seed)
    for _ in range(num_lines):
        yield _line(rng)


# ----------------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------------

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (what ``pre_tokenizers.ByteLevel`` uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def digit_strings() -> list[str]:
    """All 1-, 2- and 3-digit strings, leading zeros included: "0".."9", "00".."99", "000".."999" (1110)."""
    return [f"{i:0{n}d}" for n in (1, 2, 3) for i in range(10 ** n)]


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])


def _has_ascii_digit(token: str) -> bool:
    return any("0" <= ch <= "9" for ch in token)


def _digit_merges() -> list[tuple[str, str]]:
    """Canonical merges producing every 2- and 3-digit string: all "ab" = (a, b) first (in numeric order), then each
    "abc" from whichever of "ab" / "bc" the BPE applies first (the lower rank), so every 3-digit chunk ends as one
    token. (The single digits are byte symbols: ByteLevel maps ASCII digits to themselves.)"""
    merges = [(s[0], s[1]) for s in (f"{i:02d}" for i in range(100))]
    rank = {a + b: r for r, (a, b) in enumerate(merges)}
    for i in range(1000):
        s = f"{i:03d}"
        if rank[s[:2]] <= rank[s[1:]]:
            merges.append((s[:2], s[2]))
        else:
            merges.append((s[0], s[1:]))
    return merges


def train_tokenizer(lines: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE described in the module docstring on ``lines``.

    ``vocab_size`` counts every token (256 bytes, 1100 multi-digit tokens, learned merges, 3 specials) and must be at
    least :data:`MIN_VOCAB_SIZE` (1359). Deterministic: the same lines give the same vocabulary and merges.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: 256 byte tokens + 1100 multi-digit tokens + "
            f"{len(SPECIAL_TOKENS)} special tokens need at least {MIN_VOCAB_SIZE}"
        )
    byte_map = _bytes_to_unicode()
    alphabet = [byte_map[b] for b in range(256)]
    digit_merges = _digit_merges()
    num_word_merges = vocab_size - 256 - len(digit_merges) - len(SPECIAL_TOKENS)

    # 1. learn merges of the corpus (digit merges included; they are dropped below). The trainer gets room for every
    #    merge we might keep plus the digit merges it may spend budget on (a 3-digit token can cost the trainer two
    #    merges of its own, e.g. "1"+"23" after "2"+"3"); the surplus is cut off in step 2.
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = _pre_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=256 + num_word_merges + 2 * len(digit_merges),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    learner.train_from_iterator(lines, trainer=trainer)
    learned = json.loads(learner.to_str())["model"]["merges"]

    # 2. keep the learned merges whose result has no ASCII digit (any merge of a digit piece yields a digit-bearing
    #    result, so dropping by result keeps the list closed), in rank order, up to the budget
    word_merges: list[tuple[str, str]] = []
    for merge in learned:
        if len(word_merges) >= num_word_merges:
            break
        a, b = merge if isinstance(merge, (list, tuple)) else merge.split(" ", 1)
        if not _has_ascii_digit(a + b):
            word_merges.append((a, b))

    # 3. assemble: bytes (id == byte value), digit merges, word merges, then the specials as added tokens
    merges = digit_merges + word_merges
    vocab = {c: i for i, c in enumerate(alphabet)}
    for a, b in merges:
        token = a + b
        if token in vocab:  # cannot happen for a trainer's merges; kept as a guard
            raise RuntimeError(f"duplicate merge result {token!r}")
        vocab[token] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{BOS}:0 $A:0",
            pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
            special_tokens=[(BOS, bos_id)],
        ),
    ])
    return _wrap(tok)


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
    )


# ----------------------------------------------------------------------------------------------------------------
# save / load / reader table
# ----------------------------------------------------------------------------------------------------------------

def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | os.PathLike) -> list[str]:
    """``tokenizer.save_pretrained(directory)``: writes ``tokenizer.json`` and ``tokenizer_config.json`` (plus the
    special tokens map when this transformers version writes one). Returns the written file names."""
    os.makedirs(directory, exist_ok=True)
    files = tokenizer.save_pretrained(str(directory))
    return [str(f) for f in files]


def load_tokenizer(directory: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a saved tokenizer with ``AutoTokenizer`` (works offline on a local folder)."""
    return AutoTokenizer.from_pretrained(str(directory))


def number_token_values(tokenizer) -> dict[int, str]:
    """Token id -> digit string for every vocabulary token that is a pure ASCII digit string ("7", "042", "999").

    This is the table of the model's compiled token-to-value reader. It works for any byte-level BPE tokenizer whose
    digits map to themselves (ours, LLaMA 3's): special/added tokens are skipped.
    """
    added = set(getattr(tokenizer, "added_tokens_encoder", {}) or {})
    out: dict[int, str] = {}
    for token, idx in tokenizer.get_vocab().items():
        if token in added:
            continue
        if token and token.isascii() and token.isdigit():
            out[idx] = token
    return dict(sorted(out.items()))


def token_texts(tokenizer) -> dict[int, str]:
    """Token id -> the text the token stands for inside a text, for every vocabulary token that is not an added
    (special) token. Each token is decoded after the token of "0" and that "0" cut off: SentencePiece decoders drop
    the "▁" of a text's first token ("▁-" alone decodes as "-", after "0" as " -"), byte-level ones write any token
    as is. Tokens that are part of a character's bytes read as "\ufffd"."""
    added = set(getattr(tokenizer, "added_tokens_encoder", {}) or {})
    ids = sorted(idx for token, idx in tokenizer.get_vocab().items() if token not in added)
    anchor = tokenizer("0", add_special_tokens=False)["input_ids"][-1]  # SentencePiece's "0" is "▁" "0"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the Rust decoder in one batch: a vocabulary of 50k tokens in a fraction of a second
        anchor_text = backend.decode([anchor], skip_special_tokens=False)
        texts = backend.decode_batch([[anchor, idx] for idx in ids], skip_special_tokens=False)
    else:
        anchor_text = tokenizer.decode([anchor], clean_up_tokenization_spaces=False)
        texts = [tokenizer.decode([anchor, idx], clean_up_tokenization_spaces=False) for idx in ids]
    if anchor_text != "0":
        raise ValueError(f"this tokenizer decodes the token of '0' as {anchor_text!r}")
    return {idx: text[1:] for idx, text in zip(ids, texts) if text.startswith("0")}


def _special_anchor(tokenizer) -> tuple[str, int] | None:
    """A special token that the tokenizer finds in text, as one token: its text and id (None if it has none)."""
    for special in getattr(tokenizer, "all_special_tokens", ()):
        ids = tokenizer(special, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            return special, ids[0]
    return None


def continuation_ids(tokenizer, text: str) -> list[int]:
    """The ids of ``text`` where it continues other text, as a model writes its answer after a prompt. Byte-level
    tokenizers (LLaMA 3's, SmolLM2's) give ``encode(text)``; SentencePiece ones (LLaMA 2's) put a "▁" (a space) before
    the start of a text, so "-5" alone is "▁-" "5", but after "=" it is "-" "5". The text is encoded after a special
    token, where such tokenizers begin a new piece of text without that space, and the special token dropped."""
    anchor = _special_anchor(tokenizer)
    if anchor is not None:
        special, special_id = anchor
        ids = tokenizer(special + text, add_special_tokens=False)["input_ids"]
        if ids[:1] == [special_id]:
            return ids[1:]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _probe_texts(reader: OperandReader) -> list[str]:
    """Every kind of text the writer writes (signed numbers of 1-7 digits, lists in each style with 0-3 items, and
    decimals when the reader reads them), with and without the space before it."""
    values = [0, 7, -7, 42, -1234567, 1000007]
    lists = [[], [5], [-5], [3, -4], [-3, 4, 12], [1000, -7, 0]]
    texts = [reader.value_text(v) for v in values]
    for style in (Style(bracketed=True), Style(bracketed=True, commas=False), Style()):
        texts += [reader.list_text(items, style) for items in lists if items or style.bracketed]
    if reader.decimal_places:
        texts += [reader.value_text(v, decimal=True) for v in (549, -5, 1000, 12345)]
        for style in (Style(True, False, True), Style(True, True, True), Style(decimal=True)):
            texts += [reader.list_text(items, style) for items in ([549, -50], [-1000, 5])]
    return [lead + text for text in texts for lead in ("", " ")]


def writer_mismatches(tokenizer, table: dict) -> list[tuple[str, object, list[int]]]:
    """The probe texts (``_probe_texts``) that the writer of ``OperandReader(table)`` does not write as the tokenizer
    does, as (text, the writer's ids or its error, the tokenizer's ids from ``continuation_ids``). Empty when every
    kind of result is written exactly as the tokenizer writes it."""
    readers = [OperandReader(table)]
    if any("point" in token_roles(text) for text in table.values()):
        readers.append(OperandReader(table, decimal_places=3))
    out = []
    for reader in readers:
        for text in _probe_texts(reader):
            expected = continuation_ids(tokenizer, text)
            try:
                written = reader.text_tokens(text)
            except ValueError as error:
                written = str(error)
            if written != expected:
                out.append((text, written, expected))
    return out


def reader_tokens(tokenizer, words: Sequence[str] = (), check: bool = True) -> dict[str, str]:
    """The table of the model's operand reader (``NCLlamaConfig.nc_reader_tokens``): token id (as a string, for JSON)
    -> its text (``token_texts``), for every token the reader has a role for (``reader.token_roles``): digit tokens,
    list punctuation (separators, openers like "[", " [", "([", empty lists like " []", closers like "]", "].", "])"),
    minus signs ("-", " -", "[-", "(-"), the punctuation that ends a sentence ("?", ".", "].") and the decimal point.
    Where several tokens have the same text (LLaMA 2's byte tokens: "<0x30>" is "0" too), only the one the tokenizer
    writes that text with is kept, so that the writer writes it (all are kept if it writes that text with none of
    them alone). ``words``: the texts results are written as (``nc_result_words``), each of which must be one token.

    With ``check``, the table's writer must write every kind of result (``writer_mismatches``) as the tokenizer
    does, else ValueError: its tokens are what the model writes, and a tokenizer that cuts numbers or lists another
    way would read them back differently."""
    texts = token_texts(tokenizer)
    table = {idx: text for idx, text in texts.items() if token_roles(text)}
    by_text: dict[str, list[int]] = {}
    for idx, text in table.items():
        by_text.setdefault(text, []).append(idx)
    for text, ids in by_text.items():
        written = continuation_ids(tokenizer, text) if len(ids) > 1 else ids
        if len(written) == 1 and written[0] in ids:
            for idx in ids:
                if idx != written[0]:
                    del table[idx]
    for word in words:
        ids = continuation_ids(tokenizer, word)
        if len(ids) != 1 or texts.get(ids[0]) != word:
            raise ValueError(f"result word {word!r} is not one token of this tokenizer: {ids}")
        table[ids[0]] = word
    table = {str(idx): text for idx, text in sorted(table.items())}
    if check:
        wrong = writer_mismatches(tokenizer, table)
        if wrong:
            text, written, expected = wrong[0]
            raise ValueError(
                f"the reader would write {text!r} as {written}, the tokenizer writes it as {expected} ({len(wrong)} "
                "probe texts differ): this tokenizer cuts numbers or list punctuation in a way the reader does not "
                "know")
    return table


def default_tokenizer(num_lines: int = 20000, seed: int = 0,
                      vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """The tokenizer of the shipped models: :func:`train_tokenizer` on :func:`corpus` (deterministic)."""
    return train_tokenizer(corpus(num_lines, seed), vocab_size=vocab_size)
