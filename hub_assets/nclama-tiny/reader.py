"""The compiled token-to-value reader and result writer: the numbers and lists a prompt contains, from its token ids,
and the token ids of a result, as the tokenizer writes its text.

The interpreter heads point at operands instead of learning to parse digits (the paper blamed its weak sorting on
parsing). The reader is deterministic and exact. A number is a run of digit tokens: with LLaMA 3 pre-tokenization
tokens of 1-3 digits each ("81273" is "812" "73"), with SmolLM2's or LLaMA 2's tokenizer one digit each ("8" "1" "2"
"7" "3"). A list is a bracketed run of numbers separated by commas and spaces ("[5, 3, 9, 1]", "[7]", "[]", or
"[0.5 0.25]" as CLRS-Text writes them) or a run of at least two numbers separated by spaces only ("5 3 9 1"). With
``decimal_places`` > 0, a decimal ("0.549": digits, ".", at most that many digits) is one number, read in fixed point
(549 thousandths with 3 places) and written back the same way.

Signs. A minus token directly before a number's digits ("-", " -", "[-", "(-", "=-") is the number's sign, except
where it is glued to a digit on its left as well: "7-10=" is seven minus ten (a bare "-" between two digits is the
operator), while "-5 + 12", "What is -81273 plus 4406?", "7 -10" (the minus carries a space), "[-3, 4]" and
"gcd(-4, 6)" read -5, -81273, -10, -3 and -4. "4406 - 81273" is a subtraction: that minus is not attached to the
digits.

Brackets and separators merge with their neighbours in many tokenizers (SmolLM2 writes "max([5, -3])" as "max" "(["
"5" "," " -" "3" "])" and "sorted([])" as "sorted" "([])"), so the reader knows tokens by what their text is made of
(:func:`token_roles`), from a table of token texts (``NCLlamaConfig.nc_reader_tokens``, built from the tokenizer by
``tokenization.reader_tokens``): digit tokens; separators (commas and spaces); list openers (a text ending in "["
after at most spaces and the punctuation that comes before an operand: "[", " [", "([", "=["); empty lists ("[]",
" []", "([])"); closers (a text starting with "]", like "]", "].", "])"); minus signs (a text ending in "-" after at
most that same punctuation: "-", " -", "[-", ",-", "(-"); the decimal point; the punctuation that ends a sentence ("?",
".", "].": the call head reads the words of the sentence it answers) and the result words.

Writing. A result is written as the tokenizer writes its text where it continues other text: digit runs cut from the
left into chunks as long as the table's longest digit token (3 for LLaMA 3's tokenizers, 1 for those that split
every digit), and each run of punctuation (with the space before it: " -", " [", ", -" is "," " -") by the longest
tokens of the table. ``tokenization.reader_tokens`` checks, on the tokenizer itself, that this writes every kind of
result exactly as the tokenizer does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

# How a tokenizer of the LLaMA family cuts the punctuation and spaces of a result's text before its merges: a run of
# punctuation with at most one space before it, or a run of spaces (digits are cut apart by ``number_tokens``). LLaMA
# 3's and GPT-2's pre-tokenization regexes cut them so, and SentencePiece's "▁" pieces start at each space.
_PRE_TOKEN = re.compile(r" ?[^\sA-Za-z0-9]+|\s+|[A-Za-z]+")

# What may stand before an operand's opening bracket or minus sign in the same token: spaces, separators, opening
# brackets and the operators after which a minus is a sign (" [", "([", "=[", ",-", "(-", "*-"). Not a digit or a
# closing bracket (after those a minus is the subtraction), nor "-" itself ("--").
_BEFORE_OPERAND = frozenset(" ,;([{=+*/")


def _before_operand(text: str) -> bool:
    return all(ch in _BEFORE_OPERAND for ch in text)


def _ends_sentence(text: str) -> bool:
    """Whether a token's text is punctuation that ends a sentence ("?", ".", "].", ")?\n"; not "!", which is
    also the factorial sign)."""
    stripped = text.strip()
    return bool(stripped) and stripped[-1] in "?." and not any(ch.isalnum() for ch in stripped)


def token_roles(text: str) -> frozenset[str]:
    """What a token's text is to the reader: "digits", "sign", "opener" (an opener that ends in a minus, "[-", is a
    sign too), "empty_list", "closer", "point", "separator" ("space" too when it holds only spaces) and
    "sentence_end" (with "point", for "."): empty for any other text. ``tokenization.reader_tokens`` keeps exactly
    the tokens with a role (and the result words)."""
    roles = set()
    stripped = text.strip()
    if _ends_sentence(text):
        roles.add("sentence_end")
    if text.isascii() and text.isdigit():
        roles.add("digits")
    elif text.endswith("-") and _before_operand(text[:-1]):
        roles.add("sign")
        if text[:-1].endswith("["):
            roles.add("opener")
    elif text.endswith("[") and _before_operand(text[:-1]):
        roles.add("opener")
    elif "[]" in text and _before_operand(text.split("[]", 1)[0]) and \
            not any(ch.isalnum() or ch in "[]" for ch in text.split("[]", 1)[1]):
        roles.add("empty_list")
    elif stripped.startswith("]") and not any(ch.isalnum() for ch in stripped):
        roles.add("closer")
    elif text == ".":
        roles.add("point")
    elif text and not text.strip(", "):
        roles.add("separator")
        if not text.strip(" "):
            roles.add("space")
    return frozenset(roles)


@dataclass(frozen=True)
class Style:
    """How a prompt wrote an operand, so that a result computed from it is written back the same way."""

    bracketed: bool = False  # a list written "[5, 3, 9]" rather than "5 3 9"
    commas: bool = True  # a bracketed list separated by ", " rather than by spaces ("[0.5 0.25]")
    decimal: bool = False  # numbers in fixed point ("0.549" is 549 with 3 decimal places)


@dataclass(frozen=True)
class Operand:
    """A number or a list found in a prompt; ``start``/``end`` are token positions (end exclusive, the sign
    included)."""

    kind: str  # "number" | "list"
    start: int
    end: int
    items: tuple[str, ...]  # signed integer strings (fixed point for decimals): one for a number, one per list item
    style: Style = Style()  # how the prompt wrote it; results computed from it are written the same way

    @property
    def number(self) -> int:
        if self.kind != "number":
            raise ValueError("a list has no single value")
        return int(self.items[0])

    @property
    def values(self) -> list[int]:
        return [int(x) for x in self.items]


class OperandReader:
    def __init__(self, reader_tokens: dict, decimal_places: int = 0):
        if isinstance(decimal_places, bool) or not isinstance(decimal_places, int) or not 0 <= decimal_places <= 3:
            raise ValueError(f"decimal_places must be an int in [0, 3], got {decimal_places!r}")
        self.decimal_places = decimal_places
        self.points: set[int] = set()
        self.digits: dict[int, str] = {}
        self.separators: dict[int, str] = {}  # token -> its text (commas and spaces)
        self.spaces: set[int] = set()
        self.openers: set[int] = set()
        self.empty_lists: set[int] = set()  # "[]", " []", "([])": a whole list in one token
        self.closers: set[int] = set()
        self.signs: dict[int, str] = {}  # minus tokens -> their text ("-", " -", "[-")
        self.sentence_ends: set[int] = set()  # "?", ".", "]."; a question or a sentence ends there
        for token, text in reader_tokens.items():
            token, roles = int(token), token_roles(text)
            if "sentence_end" in roles and not (text == "." and decimal_places):  # with decimals "." is their point
                self.sentence_ends.add(token)
            if "digits" in roles:
                self.digits[token] = text
            if "sign" in roles:
                self.signs[token] = text
            if "opener" in roles:
                self.openers.add(token)
            if "empty_list" in roles:
                self.empty_lists.add(token)
            if "closer" in roles:
                self.closers.add(token)
            if "point" in roles:
                self.points.add(token)
            if "separator" in roles:
                self.separators[token] = text
            if "space" in roles:
                self.spaces.add(token)
        self.token_of_digits = {text: token for token, text in sorted(self.digits.items(), reverse=True)}  # lowest id
        # How the tokenizer cuts a run of digits: from the left, into chunks as long as its longest digit token (3 for
        # LLaMA 3's tokenizers, whose vocabularies hold every 1-3 digit string; 1 for SmolLM2's and LLaMA 2's).
        self.digit_chunk = max(map(len, self.token_of_digits), default=1)
        # Only these tokens change what a prefix holds: appending any other token leaves ``read`` unchanged (a
        # number ends where a non-digit comes, a list is complete at its last number, its closer or its one
        # empty-list token, a decimal point counts only once a digit follows it, a sign once its digits do).
        self.triggers = set(self.digits) | self.closers | self.empty_lists
        self.token_of_text: dict[str, int] = {}  # what results are written with: "[", ",", " ", "]", " -", words
        for token, text in sorted(reader_tokens.items(), key=lambda kv: -int(kv[0])):
            self.token_of_text[text] = int(token)
        self._longest_piece = max(map(len, self.token_of_text), default=1)

    # ------------------------------------------------------------------ reading
    def numbers(self, ids: Sequence[int]) -> list[Operand]:
        """Maximal runs of digit tokens with their sign, and decimals when ``decimal_places`` > 0."""
        out, i = [], 0
        while i < len(ids):
            if ids[i] in self.digits:
                j = self._digit_run_end(ids, i)
                whole = "".join(self.digits[t] for t in ids[i:j])
                start, sign = (i - 1, "-") if self._is_sign(ids, i - 1) else (i, "")
                if self.decimal_places and j + 1 < len(ids) and ids[j] in self.points and ids[j + 1] in self.digits:
                    k = self._digit_run_end(ids, j + 1)
                    fraction = "".join(self.digits[t] for t in ids[j + 1 : k])
                    if len(fraction) <= self.decimal_places:
                        fixed = int(whole) * 10**self.decimal_places + int(fraction.ljust(self.decimal_places, "0"))
                        out.append(Operand("number", start, k, (sign + str(fixed),), Style(decimal=True)))
                        i = k
                        continue
                out.append(Operand("number", start, j, (sign + whole,)))
                i = j
            else:
                i += 1
        return out

    def _is_sign(self, ids: Sequence[int], i: int) -> bool:
        """Whether token ``i`` (just before a digit) is a minus sign: a bare "-" glued to a digit on its left is the
        subtraction operator ("7-10")."""
        if i < 0 or ids[i] not in self.signs:
            return False
        return self.signs[ids[i]] != "-" or i == 0 or ids[i - 1] not in self.digits

    def _digit_run_end(self, ids: Sequence[int], i: int) -> int:
        while i < len(ids) and ids[i] in self.digits:
            i += 1
        return i

    def _joined(self, ids: Sequence[int], left: Operand, right: Operand, bracketed: bool) -> bool:
        """Whether only separators (in a bracketed list: commas and spaces; else spaces) stand between two numbers. A
        sign that carries the separator counts as one ("5 -3", "[1, -3]", "[1,-3]"), but not one that carries
        anything else: "3-8=-5" is no list, nor is "5 [-3, 4]" (its " [-" opens a list)."""
        if right.start == left.end:
            carried = self.signs.get(ids[right.start], "-")[:-1]
            return bool(carried) and not carried.strip(" ," if bracketed else " ")
        allowed = self.separators if bracketed else self.spaces
        return all(t in allowed for t in ids[left.end : right.start])

    def _opened(self, ids: Sequence[int], number: Operand) -> int:
        """The position of the opening bracket just before ``number`` (or merged with its sign), else -1."""
        if number.start < len(ids) and ids[number.start] in self.openers:  # "[-" opens the list and signs its item
            return number.start
        return number.start - 1 if number.start > 0 and ids[number.start - 1] in self.openers else -1

    def read(self, ids: Sequence[int]) -> list[Operand]:
        """Every number, and every bracketed or space-separated list of numbers, in order of position."""
        ids = [int(t) for t in ids]
        numbers = self.numbers(ids)
        lists = [Operand("list", i, i + 2, (), Style(bracketed=True))  # "[" "]": an empty list
                 for i in range(len(ids) - 1) if ids[i] in self.openers and ids[i + 1] in self.closers
                 and ids[i] not in self.signs]
        lists += [Operand("list", i, i + 1, (), Style(bracketed=True))  # "[]", " []", "([])": one token
                  for i, t in enumerate(ids) if t in self.empty_lists]
        k = 0
        while k < len(numbers):
            # bracketed: opener, number (separator number)*, closer
            first = numbers[k]
            opener = self._opened(ids, first)
            if opener >= 0:
                run, m = [first], k
                while m + 1 < len(numbers) and self._joined(ids, numbers[m], numbers[m + 1], True):
                    m += 1
                    run.append(numbers[m])
                if run[-1].end < len(ids) and ids[run[-1].end] in self.closers:
                    commas = len(run) == 1 or any(
                        "," in (self.separators.get(t) or self.signs.get(t, ""))
                        for a, b in zip(run, run[1:]) for t in ids[a.end : b.start + 1])
                    style = Style(True, commas, all(n.style.decimal for n in run))
                    lists.append(Operand("list", opener, run[-1].end + 1, tuple(n.items[0] for n in run), style))
                    k = m + 1
                    continue
            # spaced: two or more numbers separated by spaces only
            run, m = [first], k
            while m + 1 < len(numbers) and self._joined(ids, numbers[m], numbers[m + 1], False):
                m += 1
                run.append(numbers[m])
            if len(run) >= 2:
                style = Style(decimal=all(n.style.decimal for n in run))
                lists.append(Operand("list", first.start, run[-1].end, tuple(n.items[0] for n in run), style))
            k = m + 1 if len(run) >= 2 else k + 1
        return sorted(numbers + lists, key=lambda o: (o.start, o.kind))

    # ------------------------------------------------------------------ writing
    def number_tokens(self, digits: str) -> list[int]:
        """Token ids of a digit string as the tokenizer cuts it: chunks of ``digit_chunk`` digits from the left
        ("81273" is "812" "73" with LLaMA 3's tokenizers, "8" "1" "2" "7" "3" with those that split every digit)."""
        if not digits.isdigit():
            raise ValueError(f"not a digit string: {digits!r}")
        chunks = [digits[i : i + self.digit_chunk] for i in range(0, len(digits), self.digit_chunk)]
        missing = [c for c in chunks if c not in self.token_of_digits]
        if missing:
            raise ValueError(f"the reader has no token for {missing[0]!r}: rebuild nc_reader_tokens from the tokenizer")
        return [self.token_of_digits[c] for c in chunks]

    def text_tokens(self, text: str) -> list[int]:
        """Token ids of a result's text as the tokenizer writes it where it continues other text: digit runs cut as
        ``number_tokens`` cuts them, and each run of punctuation (with the space before it: " -", " [", ", -" is ","
        " -") by the longest tokens of the table."""
        out = []
        for match in re.finditer(r"\d+|[^\d]+", text):
            piece = match.group()
            if piece[0].isdigit():
                out += self.number_tokens(piece)
                continue
            for pre in _PRE_TOKEN.findall(piece):
                out += self._longest_match(pre)
        return out

    def _longest_match(self, text: str) -> list[int]:
        out, i = [], 0
        while i < len(text):
            for j in range(min(len(text), i + self._longest_piece), i, -1):
                if text[i:j] in self.token_of_text:
                    out.append(self.token_of_text[text[i:j]])
                    i = j
                    break
            else:
                raise ValueError(f"the reader has no token for {text[i]!r}: rebuild nc_reader_tokens from the tokenizer")
        return out

    def value_text(self, value: int, decimal: bool = False) -> str:
        """A value's text: its digits with its sign, or in fixed point the way Python's ``str`` writes a float (549
        with 3 places is "0.549", 430 is "0.43", 0 is "0.0")."""
        if not decimal:
            return str(value)
        if not self.decimal_places or not self.points:
            raise ValueError("decimals need decimal_places > 0 and a '.' token in nc_reader_tokens")
        whole, fraction = divmod(abs(value), 10**self.decimal_places)
        fraction = f"{fraction:0{self.decimal_places}d}".rstrip("0") or "0"
        return ("-" if value < 0 else "") + f"{whole}.{fraction}"

    def list_text(self, items: Sequence[int], style: Style) -> str:
        """A list's text as the prompt wrote its list: "[1, 3, 5, 9]", "[0.1 0.3]" or "1 3 5 9"."""
        texts = [self.value_text(item, style.decimal) for item in items]
        if not style.bracketed:
            return " ".join(texts)
        return "[" + (", " if style.commas else " ").join(texts) + "]"

    def value_tokens(self, value: int, decimal: bool = False) -> list[int]:
        """Token ids of a value (see ``value_text``)."""
        return self.text_tokens(self.value_text(value, decimal))

    def list_tokens(self, items: Sequence[int], style: Style) -> list[int]:
        """Token ids of a list (see ``list_text``)."""
        return self.text_tokens(self.list_text(items, style))
