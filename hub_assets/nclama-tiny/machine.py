"""The differentiable computer: a library's programs linked into one image, executed hard or soft.

Linking concatenates the programs' lines (each program's jumps stay inside it, calls go to a callee's first line),
gives every program's constant pool its own cells, and appends one *halt line* (``nop jmp <itself>``), where a
machine rests once it has halted.

``hard`` mode runs integers, one torch step for the whole batch: the state of a machine is one row of cells
(locals, arguments, constants, a write sink, memory) and a step is a handful of gathers and one scatter, so the cost
of a step does not depend on the program. Calls, returns and faults take a slower path only when they happen.

``soft`` mode runs distributions (the paper's mode, after Adaptive Neural Compilation): the program counter is a
distribution over lines, every register and memory cell a distribution over values. A step reads the instruction
fields as the pc-weighted mixture of the lines' field distributions, applies every primitive by its exact
pushforward kernel, blends writes by their probabilities, and moves the pc line by line (each line's own branch,
decided by the probability that the result is zero). The call stack is a distribution over depths holding saved
frames. Everything is differentiable with respect to the input distributions and to the programs' logits. On
one-hot inputs and programs the two modes agree.

Both modes stop when every machine has halted or at ``max_steps``, and report the steps each machine used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from .machine_loop import ADDRESS_OP, compiled, run_machine
from .ops import PRIMITIVES, address_distribution, hard_table, pushforward
from .program import BRANCH_INDEX, OP_INDEX, Program, cell_name, format_instruction

KIND_PRIM, KIND_LOAD, KIND_STORE, KIND_CALL, KIND_RET, KIND_HALT = range(6)
_KIND_OF_OP = {"load": KIND_LOAD, "store": KIND_STORE, "call": KIND_CALL, "ret": KIND_RET, "halt": KIND_HALT}

_PRIMITIVE_INDEX = {name: i for i, name in enumerate(PRIMITIVES)}

STATUS_OK, STATUS_MAX_STEPS, STATUS_STACK_OVERFLOW, STATUS_MEMORY_FAULT = range(4)
STATUS_NAMES = ("ok", "max_steps", "stack_overflow", "memory_fault")

# Columns of the hard machine's per-line field table (``_OP``: the primitive's index in PRIMITIVES, or ADDRESS_OP).
_A, _B, _C, _DST, _ROW, _KIND, _NEXT_IF_ZERO, _NEXT_IF_NONZERO, _LIMIT, _OP = range(10)


class MachineError(RuntimeError):
    """A machine did not finish normally (too many steps, stack overflow, memory fault)."""


@dataclass
class HardRun:
    """Result of hard execution for a batch of machines."""

    cells: torch.Tensor  # [B, R + X] final locals and arguments
    memory: torch.Tensor  # [B, M]
    steps: torch.Tensor  # [B] steps used
    status: torch.Tensor  # [B] one of STATUS_*
    trace_lines: Optional[torch.Tensor] = None  # [T, B] line executed at each step
    trace_cells: Optional[torch.Tensor] = None  # [T, B, R + X] after each step
    trace_memory: Optional[torch.Tensor] = None  # [T, B, M] after each step


@dataclass
class SoftRun:
    """Result of soft execution: distributions, differentiable."""

    cells: torch.Tensor  # [B, R + X, V] final locals and arguments (x0 holds the result)
    memory: torch.Tensor  # [B, M, V]
    halted: torch.Tensor  # [B] probability that the machine halted
    steps: torch.Tensor  # [B] expected number of steps used
    fault: torch.Tensor  # [B] probability of a memory fault or a stack overflow (that mass stops running)
    trace_pc: Optional[torch.Tensor] = None  # [T, B, L + 1] pc distribution before each step
    trace_cells: Optional[torch.Tensor] = None  # [T, B, R + X, V] after each step
    trace_memory: Optional[torch.Tensor] = None  # [T, B, M, V] after each step


class Machine:
    """Programs linked into one image, with hard and soft execution."""

    def __init__(self, programs: Sequence[Program], *, memory_size: int, stack_depth: int = 32):
        if not programs:
            raise ValueError("a machine needs at least one program")
        first = programs[0]
        for p in programs:
            if (p.value_size, p.num_registers, p.num_args) != (first.value_size, first.num_registers, first.num_args):
                raise ValueError(
                    f"program {p.name} has value_size/registers/args {(p.value_size, p.num_registers, p.num_args)},"
                    f" {first.name} has {(first.value_size, first.num_registers, first.num_args)}"
                )
        self.programs = list(programs)
        self.index = {p.name: i for i, p in enumerate(self.programs)}
        self.value_size = first.value_size
        self.num_registers = first.num_registers
        self.num_args = first.num_args
        if not 2 <= memory_size < self.value_size:
            # The heap pointer (cell 0) points one past the last list, so it must be able to hold memory_size.
            raise ValueError(f"memory_size must be in [2, value_size - 1 = {self.value_size - 1}], got {memory_size}")
        if stack_depth < 1:
            raise ValueError(f"stack_depth must be at least 1, got {stack_depth}")
        self.memory_size = memory_size
        self.stack_depth = stack_depth
        for p in self.programs:
            for callee in p.callees:
                if callee not in self.index:
                    raise ValueError(f"program {p.name} calls {callee}, which is not in the library")
        self.entry_lines = []
        self.const_offsets = []
        lines = consts = 0
        for p in self.programs:
            self.entry_lines.append(lines)
            self.const_offsets.append(consts)
            lines += p.num_lines
            consts += p.num_consts
        self.halt_line = lines
        self.num_lines = lines + 1
        self.num_consts = consts
        self.writable = self.num_registers + self.num_args
        self._link_hard()

    # ------------------------------------------------------------------ linking
    def _global_cell(self, program_index: int, cell: int) -> int:
        if cell < self.writable:
            return cell
        return self.writable + self.const_offsets[program_index] + cell - self.writable

    def _link_hard(self) -> None:
        """Per-line integer fields, the constant cells and the primitive lookup table of hard execution."""
        V = self.value_size
        self.sink = self.writable + self.num_consts
        self.memory_base = self.sink + 1
        self.num_cells = self.memory_base + V + 1  # memory addresses are a + b clamped to V: never wrap
        used = {"nop"}
        listings = [p.instructions() for p in self.programs]
        for listing in listings:
            used.update(ins.op for ins in listing if ins.op in PRIMITIVES)
        self._rows = {name: i for i, name in enumerate(sorted(used, key=list(PRIMITIVES).index))}
        grid = torch.arange(V)
        address_row = (grid[:, None] + grid[None, :]).clamp(max=V).reshape(1, -1)
        self._table = torch.cat([hard_table(list(self._rows), V), address_row]).reshape(-1).contiguous()
        self.primitives_used = list(self._rows)  # (the address row comes after them)
        address_base = len(self._rows) * V * V
        rows = []
        for pi, (p, listing) in enumerate(zip(self.programs, listings)):
            base = self.entry_lines[pi]
            for li, ins in enumerate(listing):
                line = base + li
                kind = _KIND_OF_OP.get(ins.op, KIND_PRIM)
                row_op = ins.op if kind == KIND_PRIM else "nop"
                target = base + ins.target
                nz, nnz = {
                    "never": (line + 1, line + 1),
                    "zero": (target, line + 1),
                    "nonzero": (line + 1, target),
                    "always": (target, target),
                }[ins.branch]
                if kind == KIND_CALL:
                    nz = nnz = self.entry_lines[self.index[p.callees[ins.callee]]]
                elif kind == KIND_HALT:
                    nz = nnz = self.halt_line
                rows.append(
                    [
                        self._global_cell(pi, ins.a),
                        self._global_cell(pi, ins.b),
                        self._global_cell(pi, ins.c),
                        self.sink if ins.dst is None else ins.dst,
                        address_base if kind in (KIND_LOAD, KIND_STORE) else self._rows[row_op] * V * V,
                        kind,
                        nz,
                        nnz,
                        self.memory_size if kind in (KIND_LOAD, KIND_STORE) else V,
                        ADDRESS_OP if kind in (KIND_LOAD, KIND_STORE) else _PRIMITIVE_INDEX[row_op],
                    ]
                )
        h = self.halt_line
        rows.append([0, 0, 0, self.sink, self._rows["nop"] * V * V, KIND_PRIM, h, h, V, _PRIMITIVE_INDEX["nop"]])
        self.line_info = []  # (program, local line, assembly) of each linked line, for traces
        for p, listing in zip(self.programs, listings):
            consts = p.consts()
            name_of = lambda c, p=p, consts=consts: cell_name(c, p.num_registers, p.num_args, consts)  # noqa: E731
            self.line_info += [(p.name, li, format_instruction(ins, name_of, p.callees)) for li, ins in enumerate(listing)]
        self.line_info.append(("", 0, "halted"))
        self._fields = torch.tensor(rows, dtype=torch.long)
        self._const_values = torch.tensor([v for p in self.programs for v in p.consts()], dtype=torch.long)
        self._entry = torch.tensor(self.entry_lines, dtype=torch.long)
        self._plain_image = None  # the image as Python ints, built on the plain loop's first run
        self._compiled_image = None  # the image as numpy arrays and a machine's initial cells, for the compiled loop
        self._no_logs = (np.zeros(0, np.int64), np.zeros((0, self.writable), np.int32),
                         np.zeros((0, self.memory_size), np.int32))  # a compiled run that records nothing

    # ------------------------------------------------------------------ hard execution
    def run_hard(
        self,
        entry: torch.Tensor,
        args: torch.Tensor,
        memory: torch.Tensor,
        *,
        max_steps: int,
        trace: bool = False,
        path: Optional[str] = None,
    ) -> HardRun:
        """Run machines exactly. ``entry`` [B]: program index; ``args`` [B, X]; ``memory`` [B, M] initial cells (int
        tensors, or numpy arrays).

        ``path``, a name of ``HARD_PATHS`` (default: ``hard_path``'s choice) says how; every path gives the same
        cells, memory, steps, statuses and traces. ``"plain"`` records no trace."""
        path = path or self.hard_path(len(entry), trace)
        if trace and path == "plain":
            raise ValueError("the plain path records no trace: the batched path does (or the compiled one, for one machine)")
        if path not in HARD_PATHS:
            raise ValueError(f"path must be one of {sorted(HARD_PATHS)}, got {path!r}")
        if path != "compiled":
            entry, args, memory = torch.as_tensor(entry), torch.as_tensor(args), torch.as_tensor(memory)
        return HARD_PATHS[path](self, entry, args, memory, max_steps, trace)

    @staticmethod
    def hard_path(batch: int, trace: bool = False) -> str:
        """How ``run_hard`` runs a batch by default: the compiled per-machine loop where numba is installed (a
        trace: of one machine; the batched torch loop traces more); else the plain per-machine loop for up to
        ``PLAIN_LOOP_MAX_BATCH`` machines untraced and the batched torch loop otherwise (BENCHMARKS.md: a batched
        step costs about as much as that many machines' plain steps)."""
        if compiled() is not None and (batch == 1 or not trace):
            return "compiled"
        if trace:
            return "batched"
        return "plain" if batch <= PLAIN_LOOP_MAX_BATCH else "batched"

    def _initial_cells(self, entry: torch.Tensor, args: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """[B, cells] int32: locals at 0, the arguments, every program's constants, the sink, then memory."""
        R, X, M = self.num_registers, self.num_args, self.memory_size
        S = torch.zeros(entry.shape[0], self.num_cells, dtype=torch.int32)  # int32: half the traffic of int64
        S[:, R : R + X] = args
        S[:, self.writable : self.sink] = self._const_values
        S[:, self.memory_base : self.memory_base + M] = memory
        return S

    def _run_compiled(self, entry, args, memory, max_steps: int, trace: bool) -> HardRun:
        loop = compiled()
        if loop is None:
            raise ValueError("the compiled path needs numba (pip install numba)")
        if self._compiled_image is None:
            blank = self._initial_cells(torch.zeros(1, dtype=torch.long), torch.zeros(1, self.num_args, dtype=torch.long),
                                        torch.zeros(1, self.memory_size, dtype=torch.long)).numpy()[0]
            self._compiled_image = (self._fields.reshape(-1).numpy(), self._table.numpy(), self._entry.numpy(), blank)
        fields, table, entries, blank = self._compiled_image
        R, X, M, mb = self.num_registers, self.num_args, self.memory_size, self.memory_base
        B = len(entry)
        if trace and B != 1:
            raise ValueError(f"the compiled path traces one machine at a time, got {B}")
        cells = blank[None].copy() if B == 1 else np.broadcast_to(blank, (B, len(blank))).copy()
        cells[:, R : R + X] = args  # numpy throughout: torch's per-operation cost is microseconds
        cells[:, mb : mb + M] = memory
        settings = np.array([max_steps, R, self.halt_line, self.stack_depth, mb, self.value_size, self.writable, M],
                            np.int64)
        if B == 1:  # no thread pool for one machine
            start = cells[0].copy() if trace else None
            pc = entries[int(entry[0])]
            outcome = loop.run_machine(fields, table, cells[0], pc, settings, self._no_logs)
            logs = None
            if trace:  # again, now that its length is known, recording every step
                steps = outcome[1]
                logs = (np.zeros(steps, np.int64), np.zeros((steps, self.writable), np.int32), np.zeros((steps, M), np.int32))
                cells[0] = start
                outcome = loop.trace_machine(fields, table, cells[0], pc, settings, logs)
            outcome = torch.from_numpy(np.array(outcome))
            status, steps = outcome[:1], outcome[1:]
        else:
            status, steps = np.zeros(B, np.int64), np.zeros(B, np.int64)
            loop.run_machines(fields, table, cells, entries[np.asarray(entry)], settings, self._no_logs, status, steps)
            status, steps = torch.from_numpy(status), torch.from_numpy(steps)
        S = torch.from_numpy(cells)
        run = HardRun(S[:, : self.writable], S[:, mb : mb + M], steps, status)
        if trace:
            run.trace_lines, run.trace_cells, run.trace_memory = (torch.from_numpy(log).unsqueeze(1) for log in logs)
        return run

    def _run_plain(self, entry, args, memory, max_steps: int, trace: bool) -> HardRun:
        if self._plain_image is None:  # Python ints: the plain loop's indexing is fastest on lists
            self._plain_image = (self._fields.reshape(-1).tolist(), memoryview(self._table.numpy()))
        fields, table = self._plain_image
        settings = [max_steps, self.num_registers, self.halt_line, self.stack_depth, self.memory_base, self.value_size,
                    self.writable, self.memory_size]
        rows, status, steps = self._initial_cells(entry, args, memory).tolist(), [], []
        for row, pc in zip(rows, self._entry[entry].tolist()):
            outcome = run_machine(fields, table, row, pc, settings, None)
            status.append(outcome[0]), steps.append(outcome[1])
        S, mb = torch.tensor(rows, dtype=torch.int32), self.memory_base
        return HardRun(S[:, : self.writable], S[:, mb : mb + self.memory_size], torch.tensor(steps), torch.tensor(status))

    def _run_batched(self, entry, args, memory, max_steps: int, trace: bool) -> HardRun:
        """All machines in one torch loop: a step is a handful of gathers and one scatter for the whole batch."""
        B = entry.shape[0]
        R, X, V, M, D = self.num_registers, self.num_args, self.value_size, self.memory_size, self.stack_depth
        mb, sink, H = self.memory_base, self.sink, self.halt_line
        S = self._initial_cells(entry, args, memory)
        pc = self._entry[entry]
        sp = torch.zeros(B, dtype=torch.long)
        ret_stack = torch.zeros(B, D, dtype=torch.long)
        reg_stack = torch.zeros(B, D, R, dtype=torch.int32)
        status = torch.full((B,), STATUS_MAX_STEPS, dtype=torch.long)
        steps = torch.full((B,), max_steps, dtype=torch.long)
        fields, table = self._fields, self._table
        lines_log, cells_log, memory_log = [], [], []
        for t in range(max_steps):
            F = fields.index_select(0, pc)
            src = S.gather(1, F[:, _A:_DST])
            index = F[:, _ROW] + src[:, 1]
            index.add_(src[:, 0], alpha=V)
            result = table.take(index)  # int64
            kind = F[:, _KIND]
            address = result + mb
            loaded = S.gather(1, address.unsqueeze(1)).squeeze(1)
            is_store = kind == KIND_STORE
            value = torch.where(kind == KIND_LOAD, loaded, result.to(torch.int32))
            value = torch.where(is_store, src[:, 2], value)
            where = torch.where(is_store, address, F[:, _DST])
            nxt = torch.where(value == 0, F[:, _NEXT_IF_ZERO], F[:, _NEXT_IF_NONZERO])
            stopped = False
            bad = result >= F[:, _LIMIT]  # a load or store at an address >= memory_size
            if bool(bad.any()):
                where = torch.where(bad, sink, where)
                nxt = torch.where(bad, H, nxt)
                status[bad], steps[bad] = STATUS_MEMORY_FAULT, t + 1
                stopped = True
            S.scatter_(1, where.unsqueeze(1), value.unsqueeze(1))
            if bool((kind >= KIND_CALL).any()):
                special = (kind >= KIND_CALL).nonzero().squeeze(1)
                k = kind[special]
                calls = special[k == KIND_CALL]
                if calls.numel():
                    depth = sp[calls]
                    over = calls[depth >= D]
                    if over.numel():
                        nxt[over], status[over], steps[over] = H, STATUS_STACK_OVERFLOW, t + 1
                        calls, depth = calls[depth < D], depth[depth < D]
                    ret_stack[calls, depth] = pc[calls] + 1
                    reg_stack[calls, depth] = S[calls, :R]
                    sp[calls] = depth + 1
                rets = special[k == KIND_RET]
                if rets.numel():
                    depth = sp[rets]
                    done = rets[depth == 0]
                    nxt[done], status[done], steps[done] = H, STATUS_OK, t + 1
                    inner, depth = rets[depth > 0], depth[depth > 0] - 1
                    S[inner, :R] = reg_stack[inner, depth]
                    nxt[inner] = ret_stack[inner, depth]
                    sp[inner] = depth
                halts = special[k == KIND_HALT]
                status[halts], steps[halts] = STATUS_OK, t + 1
                stopped = True
            if trace:
                lines_log.append(pc.clone())
                cells_log.append(S[:, : self.writable].clone())
                memory_log.append(S[:, mb : mb + M].clone())
            pc = nxt
            if stopped and bool((pc == H).all()):
                break
        run = HardRun(S[:, : self.writable].clone(), S[:, mb : mb + M].clone(), steps, status)
        if trace:
            run.trace_lines = torch.stack(lines_log)
            run.trace_cells = torch.stack(cells_log)
            run.trace_memory = torch.stack(memory_log)
        return run

    # ------------------------------------------------------------------ soft execution
    def _link_soft(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Linked field distributions, built from the programs' logits (so gradients reach them)."""
        L, RX, K, H = self.num_lines, self.writable, self.num_consts, self.halt_line
        cells = RX + K
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("op", "dst", "a", "b", "c", "branch", "target", "call")}
        consts = []
        for pi, p in enumerate(self.programs):
            probs = {k: torch.softmax(w.to(dtype), dim=-1) for k, w in p.weights.items()}
            n, base, koff = p.num_lines, self.entry_lines[pi], self.const_offsets[pi]
            parts["op"].append(probs["op"])
            parts["dst"].append(probs["dst"])
            for key in ("a", "b", "c"):
                local = probs[key]
                parts[key].append(
                    torch.cat(
                        [
                            local[:, :RX],
                            local.new_zeros(n, koff),
                            local[:, RX:],
                            local.new_zeros(n, K - koff - p.num_consts),
                        ],
                        dim=1,
                    )
                )
            parts["branch"].append(probs["branch"])
            parts["target"].append(
                torch.cat([probs["target"].new_zeros(n, base), probs["target"], probs["target"].new_zeros(n, L - base - n)], 1)
            )
            entries = torch.zeros(len(p.callees), L, dtype=dtype)
            for ci, callee in enumerate(p.callees):
                entries[ci, self.entry_lines[self.index[callee]]] = 1.0
            parts["call"].append(probs["callee"] @ entries)
            consts.append(probs["consts"])

        def one_hot(width: int, index: int) -> torch.Tensor:
            row = torch.zeros(1, width, dtype=dtype)
            row[0, index] = 1.0
            return row

        halt_row = {
            "op": one_hot(len(OP_INDEX), OP_INDEX["nop"]),
            "dst": one_hot(RX + 1, RX),
            "a": one_hot(cells, 0),
            "b": one_hot(cells, 0),
            "c": one_hot(cells, 0),
            "branch": one_hot(4, BRANCH_INDEX["always"]),
            "target": one_hot(L, H),
            "call": torch.zeros(1, L, dtype=dtype),
        }
        linked = {k: torch.cat(v + [halt_row[k]], 0) for k, v in parts.items()}
        linked["consts"] = torch.cat(consts, 0) if consts else torch.zeros(0, self.value_size, dtype=dtype)
        return linked

    def run_soft(
        self,
        entry: torch.Tensor,
        args: torch.Tensor,
        memory: torch.Tensor,
        *,
        max_steps: int,
        trace: bool = False,
        prune: float = 0.0,
        halt_tolerance: float = 1e-6,
    ) -> SoftRun:
        """Run machines on distributions.

        ``entry`` [B, P]: distribution over programs to call; ``args`` [B, X, V]: argument distributions;
        ``memory`` [B, M, V]: initial memory distributions. Work whose probability is at most ``prune`` for every
        machine of the batch is skipped (an error of at most that mass, for a large saving on sharp programs); with
        ``prune=0`` only work of exactly zero mass that needs no gradient is skipped, so results and gradients are exact.
        Where the pc sits entirely on call/return lines, the branch probability (a ratio of two zero masses) is
        defined by continuity, and autograd returns one of its directional derivatives there.
        """
        dtype = args.dtype
        B = entry.shape[0]
        R, V, M, D = self.num_registers, self.value_size, self.memory_size, self.stack_depth
        RX, L, H = self.writable, self.num_lines, self.halt_line
        W = self._link_soft(dtype)
        op_p = W["op"]
        kinds = {name: op_p[:, OP_INDEX[name]] for name in ("load", "store", "call", "ret", "halt")}
        normal_line = 1.0 - kinds["call"] - kinds["ret"] - kinds["halt"]
        branch_taken_always = W["branch"][:, BRANCH_INDEX["always"]]
        branch_zero = W["branch"][:, BRANCH_INDEX["zero"]]
        branch_nonzero = W["branch"][:, BRANCH_INDEX["nonzero"]]
        mix = torch.cat([op_p, W["dst"], W["a"], W["b"], W["c"]], dim=1)
        splits = [op_p.shape[1], RX + 1, RX + self.num_consts, RX + self.num_consts, RX + self.num_consts]
        consts = W["consts"].unsqueeze(0).expand(B, -1, -1)
        halt_one_hot = torch.zeros(L, dtype=dtype)
        halt_one_hot[H] = 1.0

        entries = torch.zeros(len(self.programs), L, dtype=dtype)
        entries[torch.arange(len(self.programs)), self._entry] = 1.0
        pc = entry.to(dtype) @ entries
        locals_at_zero = torch.zeros(B, R, V, dtype=dtype)
        locals_at_zero[:, :, 0] = 1.0
        regs = torch.cat([locals_at_zero, args], dim=1)
        mem = memory
        sp = torch.zeros(B, D + 1, dtype=dtype)
        sp[:, 0] = 1.0
        ret_frames = reg_frames = None
        steps = torch.zeros(B, dtype=dtype)
        fault = torch.zeros(B, dtype=dtype)
        pc_log, cells_log, memory_log = [], [], []
        prim_names = list(PRIMITIVES)

        def live(mass: torch.Tensor) -> bool:
            # Zero mass can still carry gradient (the derivative of a term whose weight is 0): with prune == 0 and
            # gradients on, nothing that requires grad is skipped, so autograd gives the full derivative.
            return bool(mass.max() > prune) or (prune == 0 and mass.requires_grad)

        for _ in range(max_steps):
            steps = steps + pc[:, :H].sum(-1)  # the mass still running
            f_op, f_dst, f_a, f_b, f_c = torch.split(pc @ mix, splits, dim=1)
            cells = torch.cat([regs, consts], dim=1)
            A, Bv, Cv = torch.bmm(torch.stack([f_a, f_b, f_c], 1), cells).unbind(1)
            result = torch.zeros(B, V, dtype=dtype)  # unnormalised distribution of the line's result
            written = torch.zeros(B, V, dtype=dtype)  # what is written to dst, weighted by the write probability
            for k, name in enumerate(prim_names):
                mass = f_op[:, k]
                if not live(mass):
                    continue
                out = mass.unsqueeze(1) * pushforward(name, A, Bv)
                result = result + out
                if name != "nop":
                    written = written + out
            p_load, p_store = f_op[:, OP_INDEX["load"]], f_op[:, OP_INDEX["store"]]
            out_of_memory = torch.zeros(B, dtype=dtype)  # probability that this step's address is >= M
            if live(p_load) or live(p_store):
                address = address_distribution(A, Bv, M)
                at, out_of_memory = address[:, :M], address[:, M]
                if live(p_load):
                    loaded = p_load.unsqueeze(1) * torch.einsum("bm,bmv->bv", at, mem)
                    result, written = result + loaded, written + loaded
                if live(p_store):
                    result = result + p_store.unsqueeze(1) * Cv
                    w = (p_store.unsqueeze(1) * at).unsqueeze(2)
                    mem = mem * (1.0 - w) + w * Cv.unsqueeze(1)
            p_write = written.sum(-1)
            d = f_dst[:, :RX].unsqueeze(2)
            regs = regs * (1.0 - d * p_write.view(B, 1, 1)) + d * written.unsqueeze(1)
            # Control: each line moves its own pc mass by its own branch, decided by P(result == 0).
            p_normal = result.sum(-1)
            zero = (result[:, 0] / p_normal.clamp_min(1e-30)).unsqueeze(1)
            # pc mass of a load/store whose address is out of memory leaves the machine as a fault.
            faulted = pc * (kinds["load"] + kinds["store"]) * out_of_memory.unsqueeze(1)
            fault = fault + faulted.sum(-1)
            pc_normal = pc * normal_line - faulted
            to_target = pc_normal * (branch_taken_always + branch_zero * zero + branch_nonzero * (1.0 - zero))
            to_next = pc_normal - to_target
            nxt = torch.cat([to_next.new_zeros(B, 1), to_next[:, :-1]], dim=1) + to_target @ W["target"]
            pc_call = pc * kinds["call"]
            c = pc_call.sum(-1)
            pc_ret = pc * kinds["ret"]
            r = pc_ret.sum(-1)
            new_sp = sp
            if live(c):
                nxt = nxt + (pc_call @ W["call"]) * (1.0 - sp[:, D:])  # a call at full depth overflows: a fault
                if ret_frames is None:
                    ret_frames = torch.zeros(B, D, L, dtype=dtype)
                    reg_frames = torch.zeros(B, D, R, V, dtype=dtype)
                w = c.unsqueeze(1) * sp[:, :D]
                return_line = torch.cat([pc_call.new_zeros(B, 1), pc_call[:, :-1]], dim=1)
                ret_frames = ret_frames * (1.0 - w.unsqueeze(2)) + sp[:, :D].unsqueeze(2) * return_line.unsqueeze(1)
                reg_frames = reg_frames * (1.0 - w.view(B, D, 1, 1)) + w.view(B, D, 1, 1) * regs[:, None, :R]
                fault = fault + c * sp[:, D]
                up = torch.cat([sp.new_zeros(B, 1), sp[:, : D - 1], sp[:, D - 1 :].sum(-1, keepdim=True)], dim=1)
                new_sp = new_sp + c.unsqueeze(1) * (up - sp)
            if live(r):
                popped_line = sp[:, :1] * halt_one_hot
                popped_regs = sp[:, 0].view(B, 1, 1) * regs[:, :R]
                if ret_frames is not None:
                    popped_line = popped_line + torch.einsum("bd,bdl->bl", sp[:, 1:], ret_frames)
                    popped_regs = popped_regs + torch.einsum("bd,bdrv->brv", sp[:, 1:], reg_frames)
                nxt = nxt + r.unsqueeze(1) * popped_line
                rv = r.view(B, 1, 1)
                regs = torch.cat([regs[:, :R] * (1.0 - rv) + rv * popped_regs, regs[:, R:]], dim=1)
                down = torch.cat([sp[:, :2].sum(-1, keepdim=True), sp[:, 2:], sp.new_zeros(B, 1)], dim=1)
                new_sp = new_sp + r.unsqueeze(1) * (down - sp)
            sp = new_sp
            nxt = nxt + (pc * kinds["halt"]).sum(-1, keepdim=True) * halt_one_hot
            if trace:
                pc_log.append(pc.detach().clone())
                cells_log.append(regs.detach().clone())
                memory_log.append(mem.detach().clone())
            pc = nxt
            if bool(pc[:, :H].sum(-1).max() < halt_tolerance):
                break
        run = SoftRun(regs, mem, pc[:, H], steps, fault)
        if trace:
            run.trace_pc, run.trace_cells, run.trace_memory = (torch.stack(x) for x in (pc_log, cells_log, memory_log))
        return run


# How ``Machine.run_hard`` runs a batch, by name (``Machine.hard_path`` picks one).
HARD_PATHS = {"batched": Machine._run_batched, "compiled": Machine._run_compiled, "plain": Machine._run_plain}
PLAIN_LOOP_MAX_BATCH = 32
