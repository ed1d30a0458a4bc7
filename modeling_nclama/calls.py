"""The call table: which library calls a position can make and what they answer. The reader finds the operands
(numbers and lists) before a position; the calls that fit them (each program whose parameters' kinds they have) form
a menu, memoized by the operands' contents; the chosen calls run on the library (hard: exactly, each distinct call
once, cached; soft: on the differentiable machine, with the probability of its result); each result is written as
the tokens the tokenizer gives for its text, then the end of text."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .configuration_nclama import NCLlamaConfig
from .library import Library
from .reader import Operand, OperandReader, Style

RESULT_CACHE_SIZE = 100_000  # executed calls kept (their result tokens)
MENU_CACHE_SIZE = 20_000  # operand sets whose fitting calls are kept in tensor form
UNLIKELY = "not run: its proposal would weigh less than nc_min_call_probability"


def call_budget(kinds: Sequence[str], arguments: Sequence, max_steps: int) -> int:
    """The step budget of one call: ``1000 + 64 s^2`` steps for operands of size ``s`` (an int parameter counts its
    value, a list or a number of any length its machine cells), at most ``max_steps``. The standard library's
    programs are at most quadratic in that size (the costliest per cell, long_gcd, takes about 23 s^2: 15,000 steps
    for two 12-digit numbers), so a call that runs out was not going to answer, and a wrong call on small operands
    stops early instead of running to ``max_steps``."""
    size = 0
    for kind, argument in zip(kinds, arguments):
        if kind == "int":
            size += argument
        elif kind == "tape":
            size += len(str(abs(argument))) + 1
        elif kind == "numbers":
            size += 1 + len(argument) * (1 + max((len(str(abs(v))) for v in argument), default=1))
        else:
            size += 1 + len(argument)
    return int(min(max_steps, 1000 + 64 * size * size))


def library_settings(library: Library, reader_tokens: dict, **nc_settings) -> dict:
    """The ``nc_*`` configuration of a model that calls ``library``: its programs, machine, fingerprint and operand
    slots, plus the reader's table; ``nc_settings`` override or add to them. What each program takes and returns
    (an int, a list of values, a number of any length, a list of such numbers) is read from its compiled signature."""
    programs = nc_settings.pop("nc_programs", library.names)
    settings = {
        "nc_programs": programs,
        "nc_value_size": library.value_size,
        "nc_memory_size": library.machine.memory_size,
        "nc_stack_depth": library.machine.stack_depth,
        "nc_max_operands": max(library[p].arity for p in programs),
        "nc_library_fingerprint": library.fingerprint(),
        "nc_reader_tokens": reader_tokens,
    }
    return {**settings, **nc_settings}


@dataclass(frozen=True)
class LibraryCall:
    """A call the interpreter can make: a program (index in ``nc_programs``) on arguments (ints, and tuples of ints
    for lists); a result is written the way its operands were written."""

    program: int
    arguments: tuple
    style: Style


@dataclass(frozen=True)
class _Choice:
    call: LibraryCall
    operands: tuple[int, ...]  # per parameter: the index of the operand it reads
    problem: Optional[str] = None  # why the machine cannot take this call (it is then never run)


class _Menu:
    """The calls that fit one set of operands: programs [C], operand slots [C, S] (-1: unused slot) and the programs
    among all P that have a call here [P] for scoring, and the result tokens [C, variants, W] of those executed so
    far."""

    def __init__(self, choices: list[_Choice], slots: int, window: int, num_programs: int, variants: int = 1):
        self.choices = choices
        self.programs = torch.tensor([c.call.program for c in choices])
        self.fits = torch.zeros(num_programs, dtype=torch.bool).index_fill(0, self.programs, True)
        self.slots = torch.tensor([list(c.operands) + [-1] * (slots - len(c.operands)) for c in choices]).view(len(choices), slots)
        self.tokens = torch.full((len(choices), variants, window), -1, dtype=torch.long)
        self.done = [False] * len(choices)


class CallTable:
    """The calls of a model configured by ``config`` on its attached ``library`` (None until one is attached):
    its reader, its menus and its executed calls' results (cleared when the library or the step budget changes)."""

    def __init__(self, config: NCLlamaConfig):
        self.config = config
        self.reader = OperandReader(config.nc_reader_tokens, config.nc_decimal_places)
        self.slots = config.nc_max_operands
        self.library: Optional[Library] = None
        self.clear()

    def clear(self) -> None:
        """Forget every menu and result (a new library, reader or step budget)."""
        self.results: dict = {}  # hard calls' result tokens
        self.outcomes: dict = {}  # hard calls' (value, steps, status, step budget), for the trace
        self.menus: dict = {}  # per operands: the calls that fit and the results run so far
        self.budget = (self.config.nc_max_steps, self.config.nc_answer_window)

    def check_budget(self) -> None:
        """A saved model's step budget may differ from training's: calls that ran out may now finish, so no cached
        result stays when it changes."""
        if (self.config.nc_max_steps, self.config.nc_answer_window) != self.budget:
            self.clear()

    def operands(self, ids: list[int]) -> list[Operand]:
        """The operands a call may read: what the reader finds, a list's items read only as the list (a 64-item list
        offers one operand, not 65), the last ``nc_max_candidates`` of them (so the calls that fit stay few however
        many numbers came before, an answer's own numbers included)."""
        found = self.reader.read(ids)
        lists = [(o.start, o.end) for o in found if o.kind == "list"]
        found = [o for o in found if o.kind == "list" or not any(a <= o.start < b for a, b in lists)]
        return found[-self.config.nc_max_candidates:]

    @property
    def variants(self) -> int:
        """How many ways each call's result is written: with and without the space before it (``nc_answer_lead``)."""
        return 2 if self.config.nc_answer_lead else 1

    def menu(self, operands: list[Operand]) -> Optional["_Menu"]:
        """Every call that fits these operands, in tensor form (memoized by the operands' contents: consecutive
        positions mostly see the same operands), or None if there is none."""
        key = tuple((o.kind, o.items, o.style) for o in operands)
        if key not in self.menus:
            if len(self.menus) >= MENU_CACHE_SIZE:
                self.menus.clear()
            choices = self.enumerate(operands)
            self.menus[key] = (_Menu(choices, self.slots, self.config.nc_answer_window, len(self.config.nc_programs),
                                      self.variants) if choices else None)
        return self.menus[key]

    def enumerate(self, operands: list[Operand]) -> list["_Choice"]:
        """The calls whose parameters' kinds these operands have: an int or number (``tape``) parameter takes a
        number, a list or ``numbers`` parameter a list, and a number that is the only operand is also a one-item
        list ("sort: 55 ->"; among several numbers, one of them is not read as a list).
        A call of the right kinds that the machine cannot take (a value outside [0, V) for an int, operands that
        need more memory than the machine has) stays on the menu with its problem: it takes its share of the call
        head's probability and proposes nothing, so that its mass does not go to a call that fits but computes
        something else ("gcd(2000, 3000)=" on a machine of values below 1024 is not answered with gcd(3000, 3000))."""
        library, config = self.library, self.config
        alone = len(operands) == 1
        out = []
        for program_index, name in enumerate(config.nc_programs):
            program = library[name]
            if program.arity > config.nc_max_operands:
                continue
            fits_per_param = [[(i, value) for i, o in enumerate(operands)
                               if (value := _argument(kind, o, alone)) is not None] for _, kind in program.params]
            for picked in itertools.product(*fits_per_param):
                # a result is written the way its operands were (a list operand's way first)
                style = max((operands[i].style for i, _ in picked), key=lambda s: s.bracketed, default=Style())
                arguments = tuple(v for _, v in picked)
                problem = library.call_problem(name, _plain(arguments))
                out.append(_Choice(LibraryCall(program_index, arguments, style), tuple(i for i, _ in picked),
                                   None if problem is None else f"not run: {problem}"))
        return out

    def fill_menus(self, menus: list["_Menu"], site_menu: list[int], top: list[list[int]], run: list[list[bool]]) -> None:
        """Execute the chosen calls (those ``run`` marks) whose results the menus do not hold yet."""
        missing = {}
        for e, chosen, go in zip(site_menu, top, run):
            menu = menus[e]
            for c, ok in zip(chosen, go):
                if ok and c < len(menu.choices) and not menu.done[c] and menu.choices[c].problem is None:
                    missing[(e, c)] = menu.choices[c].call
        if missing:
            for (e, c), variants in zip(missing, self.token_lists(list(missing.values()))):
                for v, tokens in enumerate(variants):
                    menus[e].tokens[c, v, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
                menus[e].done[c] = True

    def token_lists(self, calls: list["LibraryCall"]) -> list[tuple[list[int], ...]]:
        """Result tokens (at most the answer window; one list per way of writing it) of hard calls: cached, the
        rest run as vectorized batches, one per step budget (``call_budget``)."""
        names = self.config.nc_programs
        todo = [call for call in dict.fromkeys(calls) if call not in self.results]
        if len(self.results) + len(todo) > RESULT_CACHE_SIZE:  # full: start over (these calls all run again)
            self.results.clear(), self.outcomes.clear()
            todo = list(dict.fromkeys(calls))
        by_budget: dict[int, list] = {}
        for call in todo:
            kinds = [kind for _, kind in self.library[names[call.program]].params]
            by_budget.setdefault(call_budget(kinds, call.arguments, self.config.nc_max_steps), []).append(call)
        for budget, group in by_budget.items():
            result = self.library.run_calls([(names[c.program], _plain(c.arguments)) for c in group], max_steps=budget)
            for call, value, steps, status in zip(group, result.values, result.steps, result.status):
                written = self.text_tokens(names[call.program], value, call.style)  # a failed call: nothing
                self.results[call] = tuple(tokens[: self.config.nc_answer_window] for tokens in written)
                self.outcomes[call] = (value, steps, status, budget)
        return [self.results[call] for call in calls]

    def soft_results(self, picked: list[list[Optional["LibraryCall"]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft execution of the chosen calls (each distinct call once, one batched soft run per program): the
        tokens of each call's most likely result [G, k, variants, W] and that result's probability [G, k] under the
        differentiable machine (its cells' probabilities times the probability of halting), through which gradients
        reach the program weights."""
        W, R, M = self.config.nc_answer_window, self.library.machine.num_registers, self.library.machine.memory_size
        by_program: dict[str, list] = {}
        for call in dict.fromkeys(call for row in picked for call in row if call is not None):
            by_program.setdefault(self.config.nc_programs[call.program], []).append(call)
        token_lists, probability = {}, {}
        for name, calls in by_program.items():
            program = self.library[name]
            args, memory = self.library.encode_soft(program, [_plain(c.arguments) for c in calls])
            entry = torch.zeros(len(calls), len(self.library))
            entry[:, self.library.machine.index[name]] = 1.0
            run = self.library.run_soft(entry, args, memory, max_steps=self.config.nc_max_steps)
            p_result, results = run.cells[:, R].max(-1)
            for i, call in enumerate(calls):
                value, p = int(results[i]), run.halted[i] * p_result[i]
                if program.returns != "int":  # the list the result points at, read at its most likely length
                    p_length, length = run.memory[i, min(value, M - 1)].max(-1)
                    if value + 1 + int(length) > M:
                        value, p = None, p * 0.0
                    else:
                        p_items, items = run.memory[i, value + 1 : value + 1 + int(length)].max(-1)
                        value, p = self.library.from_cells(program.returns, items.tolist()), p * p_length * p_items.prod()
                written = self.text_tokens(name, value, call.style)
                token_lists[call] = tuple(tokens[:W] for tokens in written)
                probability[call] = p
        flat = [call for row in picked for call in row]
        empty = ((),) * self.variants
        tokens = torch.stack([_token_tensor(list(token_lists[c] if c is not None else empty), W) for c in flat])
        factor = torch.stack([probability[c] if c is not None else torch.zeros(()) for c in flat])
        return tokens.view(len(picked), -1, self.variants, W), factor.view(len(picked), -1)

    def text_tokens(self, name: str, value, style: Style) -> tuple[list[int], ...]:
        """The tokens of a result, then the end of text, as the tokenizer writes its text: without the space before
        it, and with it (``nc_answer_lead``). A failed call (None), or an int result of a program with result words
        that has no word, proposes nothing."""
        eos = self.config.eos_token_id
        eos = [eos[0] if isinstance(eos, list) else eos] if eos is not None else []
        eos = [token for token in eos if token < self.config.vocab_size]  # resize_token_embeddings may drop it
        if value is None:
            return ([],) * self.variants
        if name in self.config.nc_result_words:  # a word per value (the word carries its own space)
            words = self.config.nc_result_words[name]
            if not (isinstance(value, int) and 0 <= value < len(words)) or words[value] not in self.reader.token_of_text:
                return ([],) * self.variants
            spaced = words[value]
            # without the lead, the word without its space where the table has it ("no" beside " no": a chat answer
            # starts on a new line); else the word as given, either way
            bare = spaced.lstrip(" ") if spaced.lstrip(" ") in self.reader.token_of_text else spaced
            written = [self.reader.token_of_text[spaced]] + eos
            return (written,) if self.variants == 1 else ([self.reader.token_of_text[bare]] + eos, written)
        if isinstance(value, int):
            text = self.reader.value_text(value, style.decimal)
        else:
            text = self.reader.list_text(value, style)
        try:
            return tuple(self.reader.text_tokens(lead + text) + eos for lead in ("", " ")[: self.variants])
        except ValueError:  # a token it needs is not in the vocabulary (resize_token_embeddings removed it)
            return ([],) * self.variants


def _describe(operand: Operand) -> str:
    """An operand in a sentence: "a 12-digit number", "a list of 3 numbers"."""
    if operand.kind == "list":
        return f"a list of {len(operand.items)} number{'s' if len(operand.items) != 1 else ''}"
    digits = len(operand.items[0].lstrip("-"))
    return f"a {'negative ' if operand.items[0].startswith('-') else ''}{digits}-digit number"


def _argument(kind: str, operand: Operand, alone: bool):
    """What a parameter of ``kind`` receives from ``operand`` (an int or a number parameter a number, a list or
    numbers parameter a list, or the number when it is ``alone``, the only operand: a one-item list), or None if
    the operand is not of that kind. Whether the machine can hold it (an int parameter takes values in [0, V)) is
    ``Library.call_problem``'s to say."""
    if kind in ("int", "tape"):
        return operand.number if operand.kind == "number" else None
    if operand.kind == "list":
        return tuple(operand.values)
    return (operand.number,) if alone else None


def _plain(arguments: tuple) -> list:
    return [list(a) if isinstance(a, tuple) else a for a in arguments]


def _token_tensor(token_lists: list[list[int]], window: int) -> torch.Tensor:
    out = torch.full((len(token_lists), window), -1, dtype=torch.long)
    for i, tokens in enumerate(token_lists):
        out[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return out


def _real(tokens: torch.Tensor) -> list[int]:
    return [t for t in tokens.tolist() if t >= 0]
