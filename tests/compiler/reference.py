"""A symbolic reference for compiled programs: a tiny interpreter of ``program.Instruction`` lists.

It follows the conventions of ``modeling_nclama.program`` (cells r / x / constants, call/ret saving the locals, mod-V
arithmetic with ``ops.apply_int``, ``mem[0]`` the heap pointer, lists as length + items), independently of
``modeling_nclama.machine``, so the compiler is checked on its own.
"""
from __future__ import annotations

from dataclasses import dataclass

from modeling_nclama.ops import PRIMITIVES, apply_int
from modeling_nclama.program import Program


class ReferenceError_(RuntimeError):
    pass


@dataclass
class Result:
    value: object  # int, or list of ints for a list-returning function
    steps: int
    memory: list[int]
    raw: int  # x0 at the end (the address, for a list)


def run(programs: list[Program], name: str, args: list, *, max_steps: int = 2_000_000, max_depth: int = 512) -> Result:
    table = {p.name: p for p in programs}
    main = table[name]
    V, R, X = main.value_size, main.num_registers, main.num_args
    decoded = {p.name: (p.instructions(), p.consts(), p.callees) for p in programs}
    mem = [0] * V
    mem[0] = 1
    x = [0] * X
    r = [0] * R
    for i, a in enumerate(args):
        if isinstance(a, list):
            p = mem[0]
            if p + len(a) + 1 > V:
                raise ReferenceError_("inputs do not fit in memory")
            mem[p] = len(a)
            mem[p + 1 : p + 1 + len(a)] = [v % V for v in a]
            mem[0] = p + len(a) + 1
            x[i] = p
        else:
            x[i] = a % V
    stack = []
    prog, pc, steps = name, 0, 0
    code, consts, callees = decoded[prog]

    def read(cell):
        if cell < R:
            return r[cell]
        if cell < R + X:
            return x[cell - R]
        return consts[cell - R - X]

    def write(cell, value):
        if cell is None:
            return
        if cell < R:
            r[cell] = value
        else:
            x[cell - R] = value

    while True:
        if steps >= max_steps:
            raise ReferenceError_(f"no halt within {max_steps} steps")
        if not 0 <= pc < len(code):
            raise ReferenceError_(f"pc {pc} outside {prog}")
        ins = code[pc]
        steps += 1
        op = ins.op
        result = 0
        if op in PRIMITIVES:
            result = apply_int(op, read(ins.a), read(ins.b), V)
            if op != "nop":
                write(ins.dst, result)
        elif op == "load":
            result = (read(ins.a) + read(ins.b)) % V
            write(ins.dst, mem[result])
        elif op == "store":
            result = (read(ins.a) + read(ins.b)) % V
            mem[result] = read(ins.c)
        elif op == "call":
            if len(stack) >= max_depth:
                raise ReferenceError_("call stack overflow")
            stack.append((prog, pc + 1, list(r)))
            prog, pc = callees[ins.callee], 0
            code, consts, callees = decoded[prog]
            continue
        elif op == "ret":
            if not stack:
                break
            prog, pc, saved = stack.pop()
            r[:] = saved
            code, consts, callees = decoded[prog]
            continue
        elif op == "halt":
            break
        taken = ins.branch == "always" or (ins.branch == "zero" and result == 0) or (
            ins.branch == "nonzero" and result != 0
        )
        pc = ins.target if taken else pc + 1
    raw = x[0]
    if main.returns != "int":  # a list, or a number or numbers list held as one
        n = mem[raw]
        value = [mem[(raw + 1 + i) % V] for i in range(n)]
    else:
        value = raw
    return Result(value, steps, mem, raw)
