"""A library of compiled programs: run them (hard or soft), trace them, save and load them.

Files (format version 2): ``library.safetensors`` holds every program's logits (``<program>.<field>``) and nothing
else; ``library.json`` holds the format version, the machine settings, per program its signature, source, assembly,
callees and the name, shape and sha256 of each of its tensors, and per primitive the programs use the sha256 of its
lookup table (``op_table_sha256``). The tables themselves are not stored (at V = 1024 each is a 4 MB V x V table):
``load`` rebuilds them from ``ops`` and refuses a library whose recorded hashes differ, i.e. one made with other
definitions of the primitives. ``load`` checks all of it and refuses a corrupted, truncated or mismatched library, or
one of another format version (version 1 stored the tables as ``op.<name>`` tensors), with a ``LibraryError``.
Nothing is pickled.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .machine import STATUS_MEMORY_FAULT, STATUS_OK, HardRun, Machine, MachineError, SoftRun
from .machine import STATUS_NAMES as MACHINE_STATUS_NAMES
from .ops import PRIMITIVES, hard_table
from .program import KINDS, OPS, WEIGHT_NAMES, Program, format_assembly

FORMAT_VERSION = 2  # 1: op tables stored as tensors in library.safetensors; 2: only their sha256, in library.json
LIBRARY_JSON = "library.json"
LIBRARY_TENSORS = "library.safetensors"
ListOrInt = Union[int, Sequence[int]]
# The machine's statuses, plus one the library's decoding sets: the program halted, but its result is no valid
# number of its declared kind (a "tape" without digits, a sign or digit cell out of range), e.g. max of [].
STATUS_BAD_RESULT = len(MACHINE_STATUS_NAMES)
STATUS_NAMES = (*MACHINE_STATUS_NAMES, "bad_result")


class LibraryError(ValueError):
    """A library file is missing, corrupted, truncated, or does not match this runtime or model."""


@dataclass
class TraceStep:
    step: int
    program: str
    line: int
    instruction: str
    probability: float  # 1.0 in hard mode; the pc mass of the line in soft mode
    registers: dict[str, Any]  # name -> value (hard) or (most likely value, its probability) (soft)
    memory: list  # values (hard) or most likely values (soft), cells [0, heap pointer)


@dataclass
class Trace:
    mode: str
    steps: list[TraceStep]

    def format(self, max_rows: Optional[int] = None) -> str:
        """A readable step table."""
        rows = self.steps if max_rows is None else self.steps[:max_rows]
        head = f"{'step':>5}  {'program':<16}{'line':>5}  {'instruction':<32}registers"
        out = [head, "-" * len(head)]
        for s in rows:
            where = s.program if self.mode == "hard" else f"{s.program} ({s.probability:.2f})"
            regs = " ".join(
                f"{k}={v}" if self.mode == "hard" else f"{k}={v[0]}({v[1]:.2f})" for k, v in s.registers.items()
            )
            out.append(f"{s.step:>5}  {where:<16}{s.line:>5}  {s.instruction:<32}{regs}")
        if max_rows is not None and len(self.steps) > max_rows:
            out.append(f"... {len(self.steps) - max_rows} more steps")
        return "\n".join(out)


@dataclass
class BatchResult:
    values: list  # decoded results (None where the machine failed)
    steps: list[int]
    status: list[str]  # "ok", "max_steps", "stack_overflow", "memory_fault", "bad_result" (see STATUS_NAMES)


class Library:
    """Compiled programs plus the machine that runs them."""

    def __init__(
        self,
        programs: Sequence[Program],
        *,
        memory_size: Optional[int] = None,
        stack_depth: int = 32,
        max_steps: int = 200_000,
    ):
        if not programs:
            raise ValueError("a library needs at least one program")
        names = [p.name for p in programs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate program names in {names}")
        self.value_size = programs[0].value_size
        self.max_steps = max_steps
        memory_size = self.value_size - 1 if memory_size is None else memory_size
        self.machine = Machine(programs, memory_size=memory_size, stack_depth=stack_depth)

    # ------------------------------------------------------------------ access
    @property
    def programs(self) -> list[Program]:
        return self.machine.programs

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.programs]

    def __getitem__(self, name: str) -> Program:
        if name not in self.machine.index:
            raise KeyError(f"no program {name!r} in the library (it has: {', '.join(self.names)})")
        return self.programs[self.machine.index[name]]

    def __contains__(self, name: str) -> bool:
        return name in self.machine.index

    def __len__(self) -> int:
        return len(self.programs)

    def __repr__(self) -> str:
        return f"Library({len(self)} programs, value_size={self.value_size}: {', '.join(self.names)})"

    def with_programs(self, programs: Sequence[Program]) -> "Library":
        """A library of the same settings with some programs replaced (by name) or added."""
        replaced = {p.name: p for p in programs}
        merged = [replaced.pop(p.name, p) for p in self.programs] + list(replaced.values())
        m = self.machine
        return Library(merged, memory_size=m.memory_size, stack_depth=m.stack_depth, max_steps=self.max_steps)

    # ------------------------------------------------------------------ running
    def _steps(self, max_steps: Optional[int]) -> int:
        steps = self.max_steps if max_steps is None else max_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
        return steps

    def run(self, name: str, *args: ListOrInt, mode: str = "hard", trace: bool = False, max_steps: Optional[int] = None):
        """Run program ``name`` on ints and lists of ints; returns its result (and the ``Trace`` if ``trace``).

        A ``tape`` parameter takes a Python int of any sign and size and a ``numbers`` parameter a list of them; such
        results come back as an int and a list of ints (``lib.run("long_sub", 4406, 81273)`` is -76867)."""
        if mode == "hard":
            limit = self._steps(max_steps)
            run, values = self._run_hard(name, [args], trace, limit)
            self._raise_on_failure(name, run.status[0].item(), run.steps[0].item(), limit)
            return (values[0], self._hard_trace(run, 0)) if trace else values[0]
        if mode == "soft":
            program = self[name]
            entry = torch.zeros(1, len(self))
            entry[0, self.machine.index[name]] = 1.0
            x, memory = self.encode_soft(program, [args])
            run = self.run_soft(entry, x, memory, trace=trace, max_steps=max_steps)
            if run.fault[0] > 0.5:
                raise MachineError(
                    f"{name}: memory fault or stack overflow (probability {run.fault[0]:.2f}; memory_size "
                    f"{self.machine.memory_size}, stack depth {self.machine.stack_depth}), soft mode"
                )
            if run.halted[0] < 0.5:
                raise MachineError(f"{name} did not halt within {self._steps(max_steps)} steps (max_steps), soft mode")
            value = self.decode_soft(program, run)[0]
            value = value.argmax(-1).item() if program.returns == "int" else self.from_cells(program.returns, value.argmax(-1).tolist())
            if program.returns in ("tape", "numbers") and value is None:
                raise MachineError(f"{name}: its result is not a valid {program.returns}, soft mode")
            return (value, self._soft_trace(run, 0)) if trace else value
        raise ValueError(f"mode must be 'hard' or 'soft', got {mode!r}")

    def run_batch(self, name: str, batch: Sequence[Sequence[ListOrInt]], *, max_steps: Optional[int] = None) -> BatchResult:
        """Run ``name`` in hard mode on many argument tuples at once (one vectorized machine). A machine that fails
        gets value None and its status ("max_steps", "stack_overflow", "memory_fault"); the others are unaffected."""
        return self.run_calls([(name, args) for args in batch], max_steps=max_steps)

    def run_calls(self, calls: Sequence[tuple[str, Sequence[ListOrInt]]], *, max_steps: Optional[int] = None,
                  path: Optional[str] = None) -> BatchResult:
        """Run calls of any programs, ``(name, arguments)``, in hard mode, together. Failures as in ``run_batch``.
        ``path``: how (a name of ``machine.HARD_PATHS``; default: ``Machine.hard_path``'s choice for the batch)."""
        limit = self._steps(max_steps)
        groups: dict[str, list[int]] = {}
        for i, (name, _) in enumerate(calls):
            groups.setdefault(name, []).append(i)
        if len(groups) == 1:  # (the usual case: one call, or a batch of one program)
            name = calls[0][0]
            entry = np.full(len(calls), self.machine.index[name], np.int64)
            args, memory = self._layout(self[name], [arguments for _, arguments in calls])
        else:
            entry = np.zeros(len(calls), np.int64)
            args = np.zeros((len(calls), self.machine.num_args), np.int64)
            memory = np.zeros((len(calls), self.machine.memory_size), np.int64)
            for name, where in groups.items():
                entry[where] = self.machine.index[name]
                args[where], memory[where] = self._layout(self[name], [calls[i][1] for i in where])
        run = self.machine.run_hard(entry, args, memory, max_steps=limit, path=path)
        values: list = [None] * len(calls)
        for name, where in groups.items():
            if len(groups) == 1:  # decode marks a list result that runs past memory in the run's own status
                part = run
            else:
                part = HardRun(run.cells[where], run.memory[where], run.steps[where], run.status[where])
            for i, value in zip(where, self.decode(self[name], part)):
                values[i] = value
            if part is not run:
                run.status[where] = part.status
        return BatchResult(values, run.steps.tolist(), [STATUS_NAMES[s] for s in run.status.tolist()])

    def _run_hard(self, name: str, batch: Sequence[Sequence[ListOrInt]], trace: bool, max_steps: int) -> tuple[HardRun, list]:
        program = self[name]
        args, memory = self.encode(program, batch)
        entry = torch.full((len(batch),), self.machine.index[name], dtype=torch.long)
        run = self.machine.run_hard(entry, args, memory, max_steps=max_steps, trace=trace)
        return run, self.decode(program, run)

    def run_soft(self, entry: torch.Tensor, args: torch.Tensor, memory: torch.Tensor, *, trace: bool = False, max_steps: Optional[int] = None, prune: float = 0.0) -> SoftRun:
        """Soft execution on distributions: the differentiable, lower-level call.

        ``entry`` [B, P] is a distribution over the library's programs (in ``names`` order), ``args`` [B, X, V]
        the argument registers' distributions, ``memory`` [B, M, V] the memory's; ``encode_soft`` builds the last two
        from ints, lists and distributions. The result's ``cells[:, R]`` is the distribution of the result
        (``decode_soft`` reads lists); gradients flow to all inputs and to the programs' weights.
        """
        return self.machine.run_soft(entry, args, memory, max_steps=self._steps(max_steps), trace=trace, prune=prune)

    # ------------------------------------------------------------------ encoding
    def _check_args(self, program: Program, args: Sequence[ListOrInt]) -> None:
        if len(args) != program.arity:
            raise TypeError(f"{program.name} takes {program.arity} arguments ({_signature(program)}), got {len(args)}")
        for (pname, ptype), value in zip(program.params, args):
            not_int = isinstance(value, bool) or not isinstance(value, int)
            is_list = isinstance(value, (list, tuple))
            wrong = {"int": not_int, "list": not is_list, "tape": not_int and not is_list, "numbers": not is_list}[ptype]
            if wrong:
                what = {"int": "an int", "list": "a list", "tape": "an int (a number of any length)",
                        "numbers": "a list of ints"}[ptype]
                raise TypeError(f"argument {pname} of {program.name} must be {what}")

    def call_problem(self, name: str, args: Sequence[Any]) -> Optional[str]:
        """Why ``run_calls`` cannot take this call (a wrong arity or type, a value outside [0, V), arguments that do
        not fit in memory), or None if it can."""
        if name not in self:
            return f"no program {name!r}"
        try:
            self.encode(self[name], [args])
        except (TypeError, ValueError) as error:
            return str(error)
        return None

    @staticmethod
    def to_cells(kind: str, value: Any) -> Any:
        """An argument as the machine holds it: a ``tape`` int as [sign, digits least significant first], a
        ``numbers`` list packed as [w, then per item its sign and w digits]; other kinds (and tapes given as lists)
        unchanged."""
        if kind == "tape" and not isinstance(value, (list, tuple)):
            if isinstance(value, bool) or not isinstance(value, int):
                return value  # _check_args names the problem
            return [int(value < 0)] + [int(d) for d in reversed(str(abs(value)))]
        if kind == "numbers" and isinstance(value, (list, tuple)):
            if any(isinstance(v, bool) or not isinstance(v, int) for v in value):
                raise TypeError(f"a numbers argument holds ints only, got {list(value)!r}")
            width = max((len(str(abs(v))) for v in value), default=1)
            cells = [width]
            for v in value:
                cells += [int(v < 0)] + [int(d) for d in reversed(str(abs(v)).rjust(width, "0"))]
            return cells
        return value

    @staticmethod
    def from_cells(kind: str, cells: Sequence[int]) -> Any:
        """A result as Python sees it (the inverse of ``to_cells``): an int for a ``tape``, a list of ints for
        ``numbers``, the list itself otherwise; None for cells that are no valid number (no digit, a sign other
        than 0 or 1, a digit above 9, a ragged list)."""
        cells = list(cells)
        if kind == "tape":
            return _tape_value(cells)
        if kind == "numbers":
            if not cells or cells[0] < 1 or (len(cells) - 1) % (cells[0] + 1):
                return None
            r = cells[0] + 1
            items = [_tape_value(cells[i : i + r]) for i in range(1, len(cells), r)]
            return None if any(v is None for v in items) else items
        return cells

    def _check_value(self, program: Program, pname: str, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"argument {pname} of {program.name}: {value!r} is not an int")
        if not 0 <= value < self.value_size:
            raise ValueError(f"argument {pname} of {program.name}: {value} is outside [0, {self.value_size})")

    def encode(self, program: Program, batch: Sequence[Sequence[ListOrInt]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Ints go to argument registers; lists are laid out in memory (heap pointer at cell 0, lists from cell 1)."""
        args, memory = self._layout(program, batch)
        return torch.from_numpy(args), torch.from_numpy(memory)

    def _layout(self, program: Program, batch: Sequence[Sequence[ListOrInt]]) -> tuple[np.ndarray, np.ndarray]:
        """``encode`` in numpy (a torch tensor's per-element writes cost microseconds each, more than a small call
        runs)."""
        M, X = self.machine.memory_size, self.machine.num_args
        args = np.zeros((len(batch), X), np.int64)
        memory = np.zeros((len(batch), M), np.int64)
        for b, example in enumerate(batch):
            self._check_args(program, example)
            example = [self.to_cells(kind, value) for (_, kind), value in zip(program.params, example)]
            heap, cells = 1, [0]
            for i, ((pname, ptype), value) in enumerate(zip(program.params, example)):
                if ptype == "int":
                    self._check_value(program, pname, value)
                    args[b, i] = value
                    continue
                if not all(type(v) is int for v in value) or value and not 0 <= min(value) <= max(value) < self.value_size:
                    for v in value:  # name the first bad item
                        self._check_value(program, pname, v)
                if len(value) >= self.value_size:
                    raise ValueError(f"argument {pname} of {program.name}: a list of {len(value)} cells does not fit (at most {self.value_size - 1})")
                args[b, i] = heap
                cells += [len(value), *value]
                heap += len(value) + 1
            if heap > M:
                raise ValueError(f"arguments of {program.name} need {heap} memory cells, memory_size is {M}")
            cells[0] = heap
            memory[b, : len(cells)] = cells
        return args, memory

    def encode_soft(self, program: Program, batch: Sequence[Sequence[Any]], dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Like ``encode``, but ints and list items may also be distributions (tensors of shape [V])."""
        V = self.value_size
        hard_batch = [[_hard_view(v) for v in example] for example in batch]
        args, memory = self.encode(program, hard_batch)
        x = torch.nn.functional.one_hot(args, V).to(dtype)
        mem = torch.nn.functional.one_hot(memory, V).to(dtype)
        for b, example in enumerate(batch):
            for i, ((_, ptype), value) in enumerate(zip(program.params, example)):
                if ptype == "int" and torch.is_tensor(value):
                    x = _replace(x, (b, i), value.to(dtype))
                elif ptype == "list":
                    start = args[b, i].item() + 1
                    for j, item in enumerate(value):
                        if torch.is_tensor(item):
                            mem = _replace(mem, (b, start + j), item.to(dtype))
        return x, mem

    def decode(self, program: Program, run: HardRun) -> list:
        """Each machine's result as Python sees it (None where it failed); a list result that runs past memory marks
        its machine's status a memory fault, cells that are no valid number a bad result."""
        R, M = self.machine.num_registers, self.machine.memory_size
        status, results = run.status.tolist(), run.cells[:, R].tolist()
        memory = run.memory.numpy()  # numpy indexing: a torch element read costs microseconds
        out = []
        for b, (state, value) in enumerate(zip(status, results)):
            if state != STATUS_OK:
                out.append(None)
                continue
            if program.returns == "int":
                out.append(value)
                continue
            n = int(memory[b, value]) if value < M else -1
            if n < 0 or value + 1 + n > M:  # the list runs past memory: not a valid answer
                run.status[b] = STATUS_MEMORY_FAULT
                out.append(None)
                continue
            result = self.from_cells(program.returns, memory[b, value + 1 : value + 1 + n].tolist())
            if result is None:
                run.status[b] = STATUS_BAD_RESULT
            out.append(result)
        return out

    def decode_soft(self, program: Program, run: SoftRun) -> list[torch.Tensor]:
        """Per example: the result's distribution [V] (int), or its items' distributions [n, V] (list; the list's
        address and length are read at their most likely values)."""
        R = self.machine.num_registers
        result = run.cells[:, R]
        if program.returns == "int":
            return list(result)
        out = []
        for b in range(result.shape[0]):
            pointer = result[b].argmax().item()
            n = run.memory[b, pointer].argmax().item()
            out.append(run.memory[b, pointer + 1 : pointer + 1 + n])
        return out

    # ------------------------------------------------------------------ traces and errors
    def _raise_on_failure(self, name: str, status: int, steps: int, max_steps: int) -> None:
        if status == STATUS_OK:
            return
        reason = {
            "max_steps": f"did not halt within {max_steps} steps (max_steps)",
            "stack_overflow": f"overflowed the call stack (depth {self.machine.stack_depth}) at step {steps}",
            "memory_fault": f"accessed memory beyond memory_size {self.machine.memory_size} at step {steps}",
            "bad_result": f"returned no valid {self[name].returns} (an empty list has no maximum, for one)",
        }[STATUS_NAMES[status]]
        raise MachineError(f"{name} {reason}")

    def _register_names(self) -> list[str]:
        m = self.machine
        return [f"r{i}" for i in range(m.num_registers)] + [f"x{i}" for i in range(m.num_args)]

    def _hard_trace(self, run: HardRun, b: int) -> Trace:
        names, steps = self._register_names(), []
        for t in range(int(run.steps[b])):
            program, line, text = self.machine.line_info[run.trace_lines[t, b].item()]
            memory = run.trace_memory[t, b]
            heap = min(int(memory[0]), memory.shape[0])
            steps.append(TraceStep(t, program, line, text, 1.0, dict(zip(names, run.trace_cells[t, b].tolist())), memory[:heap].tolist()))
        return Trace("hard", steps)

    def _soft_trace(self, run: SoftRun, b: int) -> Trace:
        names, steps = self._register_names(), []
        for t in range(run.trace_pc.shape[0]):
            pc = run.trace_pc[t, b]
            prob, line = pc.max(-1)
            if line.item() == self.machine.halt_line:
                break
            program, local, text = self.machine.line_info[line.item()]
            p, v = run.trace_cells[t, b].max(-1)
            memory = run.trace_memory[t, b].argmax(-1)
            heap = min(int(memory[0]), memory.shape[0])
            regs = {n: (int(vi), float(pi)) for n, vi, pi in zip(names, v, p)}
            steps.append(TraceStep(t, program, local, text, float(prob), regs, memory[:heap].tolist()))
        return Trace("soft", steps)

    # ------------------------------------------------------------------ files
    def save(self, directory: Union[str, os.PathLike]) -> None:
        """Write ``library.safetensors`` and ``library.json``; both replace old files only once fully written."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors, entries = {}, []
        for p in self.programs:
            described = {}
            for field in WEIGHT_NAMES:
                key = f"{p.name}.{field}"
                tensors[key] = p.weights[field].detach().to(torch.float32).contiguous()
                described[field] = _describe(key, tensors[key])
            entries.append(
                {
                    "name": p.name,
                    "params": [list(x) for x in p.params],
                    "returns": p.returns,
                    "callees": p.callees,
                    "source": p.source,
                    "assembly": format_assembly(p),
                    "meta": p.meta,
                    "tensors": described,
                }
            )
        m = self.machine
        meta = {
            "format_version": FORMAT_VERSION,
            "value_size": self.value_size,
            "memory_size": m.memory_size,
            "stack_depth": m.stack_depth,
            "max_steps": self.max_steps,
            "num_registers": m.num_registers,
            "num_args": m.num_args,
            "instruction_set": list(OPS),
            "ops": {name: {"sha256": op_table_sha256(name, self.value_size)} for name in m.primitives_used},
            "programs": entries,
        }
        _write_together(
            {
                directory / LIBRARY_TENSORS: lambda path: save_file(tensors, path, metadata={"format": "pt"}),
                directory / LIBRARY_JSON: lambda path: Path(path).write_text(json.dumps(meta, indent=1)),
            }
        )

    @classmethod
    def load(cls, directory: Union[str, os.PathLike]) -> "Library":
        """Load and verify a saved library; any inconsistency raises ``LibraryError``."""
        directory = Path(directory)
        meta = _read_json(directory / LIBRARY_JSON)
        try:
            _check_format_version(meta.get("format_version"), directory / LIBRARY_JSON)
            if meta["instruction_set"] != list(OPS):
                raise LibraryError(f"{directory / LIBRARY_JSON}: its instruction set differs from this runtime's")
            V, R, X = meta["value_size"], meta["num_registers"], meta["num_args"]
            tensors = _read_tensors(directory / LIBRARY_TENSORS)
            described = {d["name"] for entry in meta["programs"] for d in entry["tensors"].values()}
            if set(tensors) - described:
                extra = ", ".join(sorted(set(tensors) - described))
                raise LibraryError(f"{directory / LIBRARY_TENSORS} holds tensors that {LIBRARY_JSON} does not describe: {extra}")
            recorded_ops = meta["ops"]
            if not isinstance(recorded_ops, dict):
                raise LibraryError(f"{directory / LIBRARY_JSON}: 'ops' must map primitive names to their table's sha256")
            for name, recorded in recorded_ops.items():
                if name not in PRIMITIVES:
                    raise LibraryError(f"{directory / LIBRARY_JSON} uses primitive {name!r}, which this runtime does not define")
                if op_table_sha256(name, V) != recorded["sha256"]:
                    raise LibraryError(
                        f"op {name!r}: the lookup table this runtime builds at V = {V} does not match its sha256 in "
                        f"{directory / LIBRARY_JSON} (the library was made with another definition of the primitive)"
                    )
            programs = []
            for entry in meta["programs"]:
                weights = {field: _checked_tensor(tensors, entry["tensors"][field]) for field in WEIGHT_NAMES}
                program = Program(
                    entry["name"], [tuple(x) for x in entry["params"]], entry["returns"], list(entry["callees"]), R, X, V,
                    weights, entry["source"], dict(entry["meta"]),
                )
                _check_shapes(program)
                kinds = [kind for _, kind in program.params] + [program.returns]
                if any(kind not in KINDS for kind in kinds):
                    raise LibraryError(f"{program.name}: unknown parameter or result kind in {kinds} (known: {KINDS})")
                if format_assembly(program) != entry["assembly"]:
                    raise LibraryError(f"program {program.name}: its tensors do not match its recorded assembly")
                programs.append(program)
            library = cls(programs, memory_size=meta["memory_size"], stack_depth=meta["stack_depth"], max_steps=meta["max_steps"])
            if set(recorded_ops) != set(library.machine.primitives_used):
                raise LibraryError(
                    f"{directory / LIBRARY_JSON}: 'ops' records {sorted(recorded_ops)}, the programs use "
                    f"{sorted(library.machine.primitives_used)}"
                )
            return library
        except (KeyError, TypeError, IndexError) as error:
            raise LibraryError(f"{directory / LIBRARY_JSON}: malformed ({type(error).__name__}: {error})") from None
        except ValueError as error:
            if isinstance(error, LibraryError):
                raise
            raise LibraryError(f"{directory}: inconsistent library ({error})") from None

    def fingerprint(self) -> str:
        """sha256 over every program's tensors and the settings: what a model checks its library against."""
        h = hashlib.sha256(json.dumps([self.value_size, self.machine.memory_size, self.names]).encode())
        for p in self.programs:
            for field in WEIGHT_NAMES:
                h.update(p.weights[field].detach().to(torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()


# ---------------------------------------------------------------------- helpers
def op_table_sha256(name: str, value_size: int) -> str:
    """sha256 of the hard machine's lookup table of primitive ``name`` at ``value_size``: ``hard_table([name], V)[0]``
    (entry ``a * V + b`` is ``apply_int(name, a, b, V)``; unary ops repeat along b) as little-endian int32 bytes."""
    table = hard_table([name], value_size)[0].to(torch.int32).numpy().astype("<i4", copy=False)
    return hashlib.sha256(table.tobytes()).hexdigest()


def _check_format_version(version: Any, path: Path) -> None:
    if version == FORMAT_VERSION and type(version) is int:
        return
    if isinstance(version, int) and not isinstance(version, bool) and 0 < version < FORMAT_VERSION:
        raise LibraryError(
            f"{path}: format_version {version} was written by an older nclama (format 1 stored every primitive's "
            f"lookup table in {LIBRARY_TENSORS}); this runtime reads format_version {FORMAT_VERSION} only: compile "
            f"the library again with this version"
        )
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise LibraryError(f"{path}: format_version {version} was written by a newer nclama; this runtime reads format_version {FORMAT_VERSION}")
    raise LibraryError(f"{path}: format_version {version!r} is not a library format; this runtime reads format_version {FORMAT_VERSION}")


def _tape_value(cells: list[int]) -> Optional[int]:
    """[sign, digits least significant first] -> the int, or None if that is no number."""
    if len(cells) < 2 or cells[0] not in (0, 1) or any(not 0 <= d <= 9 for d in cells[1:]):
        return None
    value = int("".join(str(d) for d in reversed(cells[1:])))
    return -value if cells[0] else value


def _signature(program: Program) -> str:
    return ", ".join(f"{n}: {t}" for n, t in program.params)


def _hard_view(value: Any) -> Any:
    """An int or list argument whose distributions (tensors) are replaced by their most likely values."""
    if torch.is_tensor(value):
        return int(value.argmax(-1)) if value.dim() == 1 else value.argmax(-1).tolist()
    if isinstance(value, (list, tuple)):
        return [_hard_view(v) for v in value]
    return value


def _replace(t: torch.Tensor, index: tuple[int, int], row: torch.Tensor) -> torch.Tensor:
    """``t`` with ``t[index] = row``, out of place so that gradients reach ``row``."""
    mask = torch.zeros(t.shape[:2], dtype=t.dtype)
    mask[index] = 1.0
    return t * (1 - mask.unsqueeze(-1)) + mask.unsqueeze(-1) * row


def _describe(key: str, tensor: torch.Tensor) -> dict:
    return {
        "name": key,
        "shape": list(tensor.shape),
        "dtype": str(tensor.dtype).replace("torch.", ""),
        "sha256": hashlib.sha256(tensor.numpy().tobytes()).hexdigest(),
    }


def _checked_tensor(tensors: dict[str, torch.Tensor], described: dict) -> torch.Tensor:
    key = described["name"]
    if key not in tensors:
        raise LibraryError(f"tensor {key} is missing from {LIBRARY_TENSORS}")
    t = tensors[key]
    if list(t.shape) != described["shape"]:
        raise LibraryError(f"tensor {key} has shape {list(t.shape)}, {LIBRARY_JSON} says {described['shape']}")
    if hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest() != described["sha256"]:
        raise LibraryError(f"tensor {key} does not match its sha256 in {LIBRARY_JSON} (corrupted file?)")
    return t


def _check_shapes(p: Program) -> None:
    n, cells = p.num_lines, p.num_registers + p.num_args + p.num_consts
    expected = {
        "op": (n, len(OPS)), "dst": (n, p.num_registers + p.num_args + 1), "a": (n, cells), "b": (n, cells),
        "c": (n, cells), "branch": (n, 4), "target": (n, n), "callee": (n, len(p.callees)), "consts": (p.num_consts, p.value_size),
    }
    for field, shape in expected.items():
        if tuple(p.weights[field].shape) != shape:
            raise LibraryError(f"program {p.name}: tensor {field} has shape {tuple(p.weights[field].shape)}, expected {shape}")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise LibraryError(f"{path} does not exist")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LibraryError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(meta, dict):
        raise LibraryError(f"{path} does not hold a library description")
    return meta


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise LibraryError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as error:  # safetensors raises its own error types for truncated or garbled files
        raise LibraryError(f"{path} is not a readable safetensors file ({error})") from None


def _write_together(writers: dict) -> None:
    """Write every file to a temporary name, then move them in place; if anything fails, the files that were
    already replaced get their previous versions back, so a saved library is never left half old, half new."""
    temporary, backups = {}, {}
    try:
        for path, write in writers.items():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            os.close(fd)
            temporary[path] = tmp
            write(tmp)
        try:
            for path, tmp in temporary.items():
                if path.exists():
                    backups[path] = f"{tmp}.previous"
                    os.replace(path, backups[path])
                os.replace(tmp, path)
        except BaseException:
            for path, previous in backups.items():
                os.replace(previous, path)
            backups.clear()
            raise
    finally:
        for leftover in [*temporary.values(), *backups.values()]:
            if os.path.exists(leftover):
                os.unlink(leftover)
