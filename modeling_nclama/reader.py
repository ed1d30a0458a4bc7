"""The compiled token-to-value reader: finds the numbers and lists a prompt contains, from its token ids.

The interpreter heads point at operands instead of learning to parse digits (the paper blamed its weak sorting on
parsing). The reader is deterministic and exact. With LLaMA 3 pre-tokenization a number is a run of tokens of 1-3
digits each ("81273" is "812" "73"); a list is a bracketed run of numbers separated by commas and spaces
("[5, 3, 9, 1]", or "[0.5 0.25]" as CLRS-Text writes them) or a run of at least two numbers separated by spaces
only ("5 3 9 1"). With ``decimal_places`` > 0, a decimal ("0.549": digits, ".", at most that many digits) is one
number, read in fixed point (549 thousandths with 3 places) and written back the same way.

The reader knows only a table of token texts (``NCLlamaConfig.nc_reader_tokens``, built from the tokenizer by
``tokenization.reader_tokens``): digit tokens, separators (commas and spaces), list openers (a text ending in "[")
and closers (a text starting with "]", like "]" or "]."), and the decimal point.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Style:
    """How a prompt wrote an operand, so that a result computed from it is written back the same way."""

    bracketed: bool = False  # a list written "[5, 3, 9]" rather than "5 3 9"
    commas: bool = True  # a bracketed list separated by ", " rather than by spaces ("[0.5 0.25]")
    decimal: bool = False  # numbers in fixed point ("0.549" is 549 with 3 decimal places)


@dataclass(frozen=True)
class Operand:
    """A number or a list found in a prompt; ``start``/``end`` are token positions (end exclusive)."""

    kind: str  # "number" | "list"
    start: int
    end: int
    items: tuple[str, ...]  # the digit strings (fixed point for decimals): one for a number, one per item for a list
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
        self.closers: set[int] = set()
        for token, text in reader_tokens.items():
            token = int(token)
            if text.isascii() and text.isdigit():
                self.digits[token] = text
            elif text.endswith("["):
                self.openers.add(token)
            elif text.lstrip().startswith("]"):
                self.closers.add(token)
            elif text == ".":
                self.points.add(token)
            elif text and not text.strip(", "):
                self.separators[token] = text
                if not text.strip(" "):
                    self.spaces.add(token)
        self.token_of_digits = {text: token for token, text in self.digits.items()}
        # Only these tokens change what a prefix holds: appending any other token leaves ``read`` unchanged (a
        # number ends where a non-digit comes, a list is complete at its last number or its closer, a decimal point
        # counts only once a digit follows it).
        self.triggers = set(self.digits) | self.closers
        self.token_of_text: dict[str, int] = {}  # what results are written with: "[", ",", " ", "]", ".", words
        for token, text in sorted(reader_tokens.items(), key=lambda kv: -int(kv[0])):
            self.token_of_text[text] = int(token)

    def numbers(self, ids: Sequence[int]) -> list[Operand]:
        """Maximal runs of digit tokens, and decimals when ``decimal_places`` > 0."""
        out, i = [], 0
        while i < len(ids):
            if ids[i] in self.digits:
                j = self._digit_run_end(ids, i)
                whole = "".join(self.digits[t] for t in ids[i:j])
                if self.decimal_places and j + 1 < len(ids) and ids[j] in self.points and ids[j + 1] in self.digits:
                    k = self._digit_run_end(ids, j + 1)
                    fraction = "".join(self.digits[t] for t in ids[j + 1 : k])
                    if len(fraction) <= self.decimal_places:
                        fixed = int(whole) * 10**self.decimal_places + int(fraction.ljust(self.decimal_places, "0"))
                        out.append(Operand("number", i, k, (str(fixed),), Style(decimal=True)))
                        i = k
                        continue
                out.append(Operand("number", i, j, (whole,)))
                i = j
            else:
                i += 1
        return out

    def _digit_run_end(self, ids: Sequence[int], i: int) -> int:
        while i < len(ids) and ids[i] in self.digits:
            i += 1
        return i

    def read(self, ids: Sequence[int]) -> list[Operand]:
        """Every number, and every bracketed or space-separated list of numbers, in order of position."""
        ids = [int(t) for t in ids]
        numbers = self.numbers(ids)
        lists = []
        k = 0
        while k < len(numbers):
            # bracketed: opener, number (separator number)*, closer
            first = numbers[k]
            if first.start > 0 and ids[first.start - 1] in self.openers:
                run, m = [first], k
                while m + 1 < len(numbers) and self._only(ids, numbers[m].end, numbers[m + 1].start, self.separators):
                    m += 1
                    run.append(numbers[m])
                if run[-1].end < len(ids) and ids[run[-1].end] in self.closers:
                    commas = len(run) == 1 or any(
                        "," in self.separators[t] for a, b in zip(run, run[1:]) for t in ids[a.end : b.start])
                    style = Style(True, commas, all(n.style.decimal for n in run))
                    lists.append(Operand("list", first.start - 1, run[-1].end + 1, tuple(n.items[0] for n in run), style))
                    k = m + 1
                    continue
            # spaced: two or more numbers separated by spaces only
            run, m = [first], k
            while m + 1 < len(numbers) and self._only(ids, numbers[m].end, numbers[m + 1].start, self.spaces):
                m += 1
                run.append(numbers[m])
            if len(run) >= 2:
                style = Style(decimal=all(n.style.decimal for n in run))
                lists.append(Operand("list", first.start, run[-1].end, tuple(n.items[0] for n in run), style))
            k = m + 1 if len(run) >= 2 else k + 1
        return sorted(numbers + lists, key=lambda o: (o.start, o.kind))

    @staticmethod
    def _only(ids: Sequence[int], start: int, end: int, allowed) -> bool:
        return end > start and all(t in allowed for t in ids[start:end])

    def number_tokens(self, digits: str) -> list[int]:
        """Token ids of a digit string, split like LLaMA 3: chunks of 3 digits from the left."""
        if not digits.isdigit():
            raise ValueError(f"not a digit string: {digits!r}")
        chunks = [digits[i : i + 3] for i in range(0, len(digits), 3)]
        missing = [c for c in chunks if c not in self.token_of_digits]
        if missing:
            raise ValueError(f"the reader has no token for {missing[0]!r}: rebuild nc_reader_tokens from the tokenizer")
        return [self.token_of_digits[c] for c in chunks]

    def value_tokens(self, value: int, decimal: bool = False) -> list[int]:
        """Token ids of a non-negative value: its digits, or in fixed point the way Python's ``str`` writes a float
        (549 with 3 places is "0.549", 430 is "0.43", 0 is "0.0")."""
        if not decimal:
            return self.number_tokens(str(value))
        if not self.decimal_places or not self.points:
            raise ValueError("decimals need decimal_places > 0 and a '.' token in nc_reader_tokens")
        whole, fraction = divmod(value, 10**self.decimal_places)
        fraction = f"{fraction:0{self.decimal_places}d}".rstrip("0") or "0"
        return self.number_tokens(str(whole)) + [min(self.points)] + self.number_tokens(fraction)

    def list_tokens(self, items: Sequence[int], style: Style) -> list[int]:
        """Token ids of a list as the prompt wrote its list: "[1, 3, 5, 9]", "[0.1 0.3]" or "1 3 5 9"."""
        pieces = (["[", ",", " ", "]"] if style.commas else ["[", " ", "]"]) if style.bracketed else [" "]
        missing = [p for p in pieces if p not in self.token_of_text]
        if missing:
            raise ValueError(f"the reader has no token for {missing[0]!r}: rebuild nc_reader_tokens from the tokenizer")
        separator = [self.token_of_text[p] for p in pieces[1:-1]] if style.bracketed else [self.token_of_text[" "]]
        out = [self.token_of_text["["]] if style.bracketed else []
        for i, item in enumerate(items):
            out += (separator if i else []) + self.value_tokens(item, style.decimal)
        return out + ([self.token_of_text["]"]] if style.bracketed else [])
