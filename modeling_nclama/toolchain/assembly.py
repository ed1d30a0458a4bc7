"""Assembly listings read back into programs: ``parse_assembly`` is the inverse of the runtime's
``program.format_assembly`` (for writing and testing programs by hand; a model never needs it)."""
from __future__ import annotations

import re

from ..ops import PRIMITIVES
from ..program import BRANCH_MNEMONIC, DEFAULT_SHARPNESS, KINDS, OP_INDEX, Instruction, Program, ProgramError, assemble

__all__ = ["parse_assembly"]


_HEADER = re.compile(r"^def\s+(\w+)\((.*)\)\s*->\s*(int|list|tape|numbers)\s*$")
_BRANCH = re.compile(r"^(.*?)\s*\b(jz|jnz|jmp)\s+(\d+)\s*$")
_MEM = re.compile(r"^\[\s*(\S+)\s*\+\s*(\S+)\s*\]$")


def parse_assembly(
    text: str, *, num_registers: int, num_args: int, value_size: int, sharpness: float = DEFAULT_SHARPNESS
) -> Program:
    """Read a listing made by ``format_assembly`` back into a program (callees are kept by name)."""
    rows = [ln.rstrip() for ln in text.strip().splitlines() if ln.strip()]
    header = _HEADER.match(rows[0]) if rows else None
    if not header:
        raise ProgramError(f"line 1: expected 'def name(params) -> int|list|tape|numbers', got {rows[0] if rows else ''!r}")
    name, params_text, returns = header.groups()
    params = []
    for p in filter(None, (s.strip() for s in params_text.split(","))):
        pname, _, ptype = (s.strip() for s in p.partition(":"))
        if ptype not in KINDS:
            raise ProgramError(f"line 1: parameter {pname!r} has kind {ptype!r}, not one of {', '.join(KINDS)}")
        params.append((pname, ptype))
    body = rows[1:]
    consts: list[int] = []
    if body and body[0].startswith(".consts"):
        consts = [int(v) for v in body[0].split()[1:]]
        body = body[1:]
    callees: list[str] = []
    mnemonic_branch = {v: k for k, v in BRANCH_MNEMONIC.items()}

    def cell(tok: str, lineno: int) -> int:
        m = re.fullmatch(r"([rx])(\d+)|#(\d+)", tok)
        if not m:
            raise ProgramError(f"line {lineno}: bad operand {tok!r}")
        if m.group(3) is not None:
            value = int(m.group(3))
            if value not in consts:
                raise ProgramError(f"line {lineno}: constant {value} is not in .consts")
            return num_registers + num_args + consts.index(value)
        index = int(m.group(2))
        limit = num_registers if m.group(1) == "r" else num_args
        if index >= limit:
            raise ProgramError(f"line {lineno}: {tok} is out of range ({limit} available)")
        return index if m.group(1) == "r" else num_registers + index

    instructions = []
    for lineno, row in enumerate(body, start=2):
        parts = row.strip().split(None, 1)
        if not parts[0].isdigit() or int(parts[0]) != len(instructions):
            raise ProgramError(f"line {lineno}: expected line number {len(instructions)}, got {parts[0]!r}")
        rest = parts[1] if len(parts) > 1 else ""
        branch, target = "never", 0
        m = _BRANCH.match(rest)
        if m:
            rest, branch, target = m.group(1).strip(), mnemonic_branch[m.group(2)], int(m.group(3))
        if not rest:
            instructions.append(Instruction("nop", branch=branch, target=target))
            continue
        op, _, args_text = rest.partition(" ")
        args = [s.strip() for s in re.split(r",(?![^\[]*\])", args_text)] if args_text.strip() else []
        if op not in OP_INDEX:
            raise ProgramError(f"line {lineno}: unknown op {op!r}")
        fields: dict = {"op": op, "branch": branch, "target": target}
        if op == "call":
            if args_text.strip() not in callees:
                callees.append(args_text.strip())
            fields["callee"] = callees.index(args_text.strip())
        elif op in ("load", "store"):
            mem_arg = args[1] if op == "load" else args[0]
            mm = _MEM.match(mem_arg)
            if not mm:
                raise ProgramError(f"line {lineno}: expected [base + offset], got {mem_arg!r}")
            fields["a"], fields["b"] = cell(mm.group(1), lineno), cell(mm.group(2), lineno)
            if op == "load":
                fields["dst"] = None if args[0] == "_" else cell(args[0], lineno)
            else:
                fields["c"] = cell(args[1], lineno)
        elif op in PRIMITIVES and op != "nop":
            arity = PRIMITIVES[op][1]
            if len(args) != arity + 1:
                raise ProgramError(f"line {lineno}: {op} takes {arity + 1} operands, got {len(args)}")
            fields["dst"] = None if args[0] == "_" else cell(args[0], lineno)
            for key, tok in zip("ab", args[1:]):
                fields[key] = cell(tok, lineno)
        instructions.append(Instruction(**fields).canonical())
    weights = assemble(
        instructions,
        consts,
        num_registers=num_registers,
        num_args=num_args,
        num_callees=len(callees),
        value_size=value_size,
        sharpness=sharpness,
    )
    return Program(name, params, returns, callees, num_registers, num_args, value_size, weights)
