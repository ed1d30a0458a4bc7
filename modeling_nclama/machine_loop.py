"""Hard execution one machine at a time: the step of ``Machine.run_hard``'s batched torch loop, written for one
machine, for the small batches of generation and ``Library.run``, where a batched step's fixed cost (a dozen tensor
operations, tens of microseconds) is paid thousands of times for one machine.

The loop below is plain Python over integer arrays (the linked image's per-line fields, the primitives' lookup
table, the machine's cells): numba compiles it to machine code where numba is installed (``pip install numba``, the
``fast`` extra), and it runs as written otherwise, on lists. Either way it reads the same integer tensors the
batched path reads and executes no text from a library file. Results, step counts, statuses and faults are those of
the batched path, bit for bit (tests/test_machine_paths.py).
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

# Kinds of line and statuses, as in machine.py (repeated here, not imported: machine.py imports this module).
_KIND_LOAD, _KIND_STORE, _KIND_CALL, _KIND_RET = 1, 2, 3, 4
_OK, _MAX_STEPS, _STACK_OVERFLOW, _MEMORY_FAULT = 0, 1, 2, 3
# Fields per line: a, b, c, dst, table row, kind, next if zero, next if nonzero, address limit, op (below)
WIDTH = 10
ADDRESS_OP = 20  # the op of a load or store: its address, a + b clamped to V (ops 0-19: ops.PRIMITIVES in order)


def looked_up(fields, table, base, a, b, value_size):
    """The result of line ``base``'s primitive on ``a`` and ``b``, from the lookup table (the plain loop's way:
    one index into a list-like table is the cheapest step in Python)."""
    return table[fields[base + 4] + a * value_size + b]


def computed(fields, table, base, a, b, value_size):
    """The same result computed (the compiled loop's way: the V x V tables of a large V do not stay in the CPU's
    caches, so a lookup costs a memory access, the arithmetic a few cycles). Equal to ``ops.apply_int`` on every
    pair of values (tests/test_machine_paths.py checks each op on all of [0, V)^2); Python's and numba's ``%`` agree
    on negative numbers."""
    op = fields[base + 9]
    if op == 20:
        return min(a + b, value_size)
    if op == 0:
        return 0
    if op == 1:
        return a
    if op == 2:
        return (a + b) % value_size
    if op == 3:
        return (a - b) % value_size
    if op == 4:
        return (a * b) % value_size
    if op == 5:
        return a // b if b != 0 else 0
    if op == 6:
        return a % b if b != 0 else a
    if op == 7:
        return 1 if a < b else 0
    if op == 8:
        return 1 if a <= b else 0
    if op == 9:
        return 1 if a > b else 0
    if op == 10:
        return 1 if a >= b else 0
    if op == 11:
        return 1 if a == b else 0
    if op == 12:
        return 1 if a != b else 0
    if op == 13:
        return min(a, b)
    if op == 14:
        return max(a, b)
    if op == 15:
        return 1 if a != 0 and b != 0 else 0
    if op == 16:
        return 1 if a != 0 or b != 0 else 0
    if op == 17:
        return 1 if a == 0 else 0
    if op == 18:
        return (a + 1) % value_size
    return (a - 1) % value_size  # 19: dec


def run_machine(fields, table, cells, pc, settings, logs):
    """Run one machine from line ``pc`` until it halts, faults or has run ``max_steps`` steps; ``cells`` (locals,
    arguments, constants, the write sink, memory) is updated in place. ``fields``: the linked image's per-line fields,
    flat (``WIDTH`` per line); ``table``: the primitives' lookup tables, flat; ``settings``: max_steps, registers,
    halt line, stack depth, memory base, value size, writable cells, memory size (one array: each argument of a
    compiled call costs a type check). ``logs``: where ``record`` writes each step (line executed, writable cells
    and memory after it), as the batched loop's trace does; of capacity 0, nothing is recorded.
    Returns (status, steps used)."""
    max_steps, registers, halt_line = settings[0], settings[1], settings[2]
    stack_depth, memory_base, value_size = settings[3], settings[4], settings[5]
    return_lines = scratch(stack_depth)
    saved_registers = scratch(stack_depth * registers)
    depth = 0
    for t in range(max_steps):
        if pc == halt_line:  # fell through the image's last line: it rests there until max_steps, as in a batch
            for rest in range(t, max_steps):
                record(logs, rest, pc, cells, settings)
            return _MAX_STEPS, max_steps
        base = pc * WIDTH
        result = primitive(fields, table, base, cells[fields[base]], cells[fields[base + 1]], value_size)
        if result >= fields[base + 8]:  # a load or store at an address >= memory_size
            record(logs, t, pc, cells, settings)
            return _MEMORY_FAULT, t + 1
        kind = fields[base + 5]
        if kind == _KIND_LOAD:
            value = cells[result + memory_base]
            cells[fields[base + 3]] = value
        elif kind == _KIND_STORE:
            value = cells[fields[base + 2]]
            cells[result + memory_base] = value
        else:
            value = result
            cells[fields[base + 3]] = value
        following = fields[base + 6] if value == 0 else fields[base + 7]
        if kind >= _KIND_CALL:
            if kind == _KIND_CALL:
                if depth >= stack_depth:
                    record(logs, t, pc, cells, settings)
                    return _STACK_OVERFLOW, t + 1
                return_lines[depth] = pc + 1
                for r in range(registers):
                    saved_registers[depth * registers + r] = cells[r]
                depth += 1
            elif kind == _KIND_RET:
                if depth == 0:
                    record(logs, t, pc, cells, settings)
                    return _OK, t + 1
                depth -= 1
                for r in range(registers):
                    cells[r] = saved_registers[depth * registers + r]
                following = return_lines[depth]
            else:  # halt
                record(logs, t, pc, cells, settings)
                return _OK, t + 1
        record(logs, t, pc, cells, settings)
        pc = following
    return _MAX_STEPS, max_steps


def no_record(logs, t, pc, cells, settings):
    """An untraced run records nothing (a traced run takes the batched loop where numba is missing)."""


def array_record(logs, t, pc, cells, settings):
    """Step ``t`` into ``logs`` = (lines [T], cells [T, writable], memory [T, M]) while it has room."""
    lines, registers, memory = logs
    if t < lines.shape[0]:
        lines[t] = pc
        for r in range(settings[6]):
            registers[t, r] = cells[r]
        base = settings[4]
        for m in range(settings[7]):
            memory[t, m] = cells[base + m]


def run_machines(fields, table, cells, pcs, settings, logs, status, steps):
    """``run_machine`` for every row of ``cells`` [B, cells] from its line ``pcs[b]``, writing ``status`` and
    ``steps`` [B]."""
    for b in range(cells.shape[0]):
        status[b], steps[b] = run_machine(fields, table, cells[b], pcs[b], settings, logs)


def list_scratch(size):
    return [0] * size


def array_scratch(size):
    return np.zeros(size, np.int64)


class Compiled:
    """``run_machine`` and ``run_machines`` compiled by ``numba`` (compilation takes seconds, once per process, or is
    read from numba's cache beside this file). A large batch runs in slices on Python threads, one per core: the
    compiled loop releases the GIL, and numba's own parallel loops would set OpenMP's thread count under torch."""

    PARALLEL_MIN_BATCH = 64  # below this a thread pool's start costs more than it saves

    def __init__(self, numba):
        def bound(function, name, **names):
            """``function`` with some of its globals bound to compiled ones, under its own name: numba's cache
            files are named by a function's qualified name, so two variants of one function must not share it."""
            variant = type(function)(function.__code__, dict(function.__globals__, **names), name)
            variant.__qualname__ = name
            return variant

        jit = numba.njit(cache=True, nogil=True)
        self.computed = jit(computed)
        machine = dict(primitive=self.computed, scratch=jit(array_scratch))
        # two variants: recording nothing (the empty call compiles away) and recording every step
        self.run_machine = jit(bound(run_machine, "run_machine_untraced", record=jit(no_record), **machine))
        self.trace_machine = jit(bound(run_machine, "run_machine_traced", record=jit(array_record), **machine))
        self.run_serial = jit(bound(run_machines, "run_machines_untraced", run_machine=self.run_machine))
        self.threads = min(os.cpu_count() or 1, 8)
        self._pool = None

    def run_machines(self, fields, table, cells, pcs, settings, logs, status, steps) -> None:
        """``run_machines`` (``logs``: of capacity 0), in ``threads`` slices of the batch at once where the batch is
        large."""
        B = cells.shape[0]
        if B < self.PARALLEL_MIN_BATCH or self.threads == 1:
            self.run_serial(fields, table, cells, pcs, settings, logs, status, steps)
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="nclama-machine")
        bounds = np.linspace(0, B, self.threads + 1).astype(np.int64)
        jobs = [self._pool.submit(self.run_serial, fields, table, cells[a:b], pcs[a:b], settings, logs, status[a:b],
                                  steps[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        for job in jobs:
            job.result()


def compiled() -> Optional[Compiled]:
    """The compiled loop, or None where numba is not installed (or ``NCLAMA_NO_NUMBA=1``: the plain loop)."""
    global _COMPILED
    if _COMPILED is None:
        try:  # optional: transformers' check of a Hub repo's imports skips what a try block imports
            import numba
        except ImportError:
            numba = None
        wanted = os.environ.get("NCLAMA_NO_NUMBA", "") in ("", "0")
        _COMPILED = Compiled(numba) if numba is not None and wanted else False
    return _COMPILED or None


primitive = looked_up  # the plain loop's; the compiled one binds computed
record = no_record  # the plain loop's; the compiled trace_machine binds array_record
scratch = list_scratch  # the plain loop's; the compiled one binds array_scratch
_COMPILED = None  # not compiled yet (False: numba is missing)
