"""Programs of the differentiable computer: the instruction set, and the two forms of a program.

A program is a sequence of lines. Its *tensor form* (what the machine runs and what gradients adapt) holds, per line,
logits over each field of the instruction; its *assembly form* (what people read) is the argmax of each field.
``assemble`` turns instructions into one-hot logits of a set sharpness, ``disassemble`` reads them back, and
``format_assembly`` writes the readable listing (``toolchain.assembly.parse_assembly`` reads it back).

Instruction fields (every line has all of them; unused ones hold a canonical value):
  op      one of ``OPS``: a primitive of ``ops.PRIMITIVES`` (the ALU), or load, store, call, ret, halt
  dst     register written by a primitive or a load (``None``: nothing is written)
  a, b, c source cells: a register or a constant of the program's pool
  branch  one of ``BRANCHES``: after the line, jump to ``target`` never, if the line's result is zero, if it is
          non-zero, or always
  target  line to jump to (a line of the same program)
  callee  for ``call``: index into the program's ``callees``

Semantics of a line: primitive ``op``: ``dst = op(a, b)`` (mod V); ``load``: ``dst = mem[a + b]``;
``store``: ``mem[a + b] = c``; ``call``: push the locals and the return line, jump to the callee's first line;
``ret``: pop them (the caller's locals come back, the argument registers do not), or halt the machine at depth 0;
``halt``: stop. The branch is decided by the line's result: the primitive's value, the loaded value, or the stored
value.

Cells, in the order a program's ``a``/``b``/``c`` logits index them:
  ``r0 .. r{R-1}``  locals, saved and restored by call/ret
  ``x0 .. x{X-1}``  arguments and result (the caller moves arguments into x, the callee's result comes back in x0)
  ``k0 .. k{K-1}``  the program's constant pool (read-only; written ``#value`` in assembly)
``dst`` indexes locals and arguments, plus one last slot meaning "no write" (written ``_``).

Memory conventions, shared by compiled programs and the runner: ``mem[0]`` is the heap pointer (next free cell);
a list at address ``p`` stores its length at ``mem[p]`` and its items at ``mem[p + 1 .. p + n]``; new lists are
bump-allocated from the heap (cells past the heap pointer are zero).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from .ops import PRIMITIVES

OPS: tuple[str, ...] = tuple(PRIMITIVES) + ("load", "store", "call", "ret", "halt")
OP_INDEX = {name: i for i, name in enumerate(OPS)}
BRANCHES: tuple[str, ...] = ("never", "zero", "nonzero", "always")
BRANCH_INDEX = {name: i for i, name in enumerate(BRANCHES)}
BRANCH_MNEMONIC = {"zero": "jz", "nonzero": "jnz", "always": "jmp"}
WRITING_OPS = frozenset(name for name in PRIMITIVES if name != "nop") | {"load"}
# Which source cells each op reads, for printing and canonical forms.
_READS = {name: ("a", "b")[:arity] for name, (_, arity) in PRIMITIVES.items()}
_READS.update({"load": ("a", "b"), "store": ("a", "b", "c"), "call": (), "ret": (), "halt": ()})

WEIGHT_NAMES: tuple[str, ...] = ("op", "dst", "a", "b", "c", "branch", "target", "callee", "consts")
# Compiled programs are exactly one-hot (chosen logit 0, others -inf), so soft execution equals hard execution.
# ``Program.soften`` gives them finite logits, so that gradients can adapt them.
DEFAULT_SHARPNESS = float("inf")
#: What a parameter or a result is: an int, a list of ints, a signed number of any length ("tape": [sign, digits
#: least significant first]) or a list of such numbers ("numbers": [w, then a sign and w digits per item]).
KINDS = ("int", "list", "tape", "numbers")


class ProgramError(ValueError):
    """A program or its assembly text is malformed."""


@dataclass(frozen=True)
class Instruction:
    op: str
    dst: Optional[int] = None
    a: int = 0
    b: int = 0
    c: int = 0
    branch: str = "never"
    target: int = 0
    callee: int = 0

    def canonical(self) -> "Instruction":
        """The same instruction with unused fields at their canonical value (so assembly round-trips)."""
        reads = _READS[self.op]
        return replace(
            self,
            dst=self.dst if self.op in WRITING_OPS else None,
            a=self.a if "a" in reads else 0,
            b=self.b if "b" in reads else 0,
            c=self.c if "c" in reads else 0,
            target=self.target if self.branch != "never" else 0,
            callee=self.callee if self.op == "call" else 0,
        )


@dataclass
class Program:
    """One compiled function: its signature and source, and its tensor form (``weights``, logits per field)."""

    name: str
    params: list[tuple[str, str]]  # (name, kind): one of KINDS
    returns: str  # one of KINDS
    callees: list[str]
    num_registers: int
    num_args: int
    value_size: int
    weights: dict[str, torch.Tensor]
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def num_lines(self) -> int:
        return self.weights["op"].shape[0]

    @property
    def num_consts(self) -> int:
        return self.weights["consts"].shape[0]

    @property
    def arity(self) -> int:
        return len(self.params)

    def instructions(self) -> list[Instruction]:
        return disassemble(self.weights, self.num_registers, self.num_args)

    def consts(self) -> list[int]:
        return self.weights["consts"].argmax(-1).tolist()

    def assembly(self) -> str:
        return format_assembly(self)

    def probabilities(self) -> dict[str, torch.Tensor]:
        """Softmax of every field: the distributions soft execution mixes."""
        return {k: torch.softmax(w, dim=-1) for k, w in self.weights.items()}

    def with_weights(self, weights: dict[str, torch.Tensor]) -> "Program":
        return replace(self, weights=dict(weights))

    def with_instructions(self, instructions: list[Instruction], sharpness: float = DEFAULT_SHARPNESS) -> "Program":
        """The same program (signature, constants, callees) with other instructions, assembled one-hot."""
        return self.with_weights(
            assemble(
                instructions,
                self.consts(),
                num_registers=self.num_registers,
                num_args=self.num_args,
                num_callees=len(self.callees),
                value_size=self.value_size,
                sharpness=sharpness,
            )
        )

    def hardened(self) -> "Program":
        """The argmax program, exactly one-hot again (after training a softened one)."""
        return self.with_instructions(self.instructions())

    def soften(self, sharpness: float) -> "Program":
        """The same program with every logit at least ``-sharpness`` below its row's maximum: trainable by gradient
        descent (an exactly one-hot program has zero gradients), still the same argmax."""
        return self.with_weights(
            {k: torch.maximum(w, w.amax(-1, keepdim=True) - sharpness) if w.numel() else w for k, w in self.weights.items()}
        )


def cell_name(cell: int, num_registers: int, num_args: int, consts: list[int]) -> str:
    if cell < num_registers:
        return f"r{cell}"
    if cell < num_registers + num_args:
        return f"x{cell - num_registers}"
    return f"#{consts[cell - num_registers - num_args]}"


def assemble(
    instructions: list[Instruction],
    consts: list[int],
    *,
    num_registers: int,
    num_args: int,
    num_callees: int,
    value_size: int,
    sharpness: float = DEFAULT_SHARPNESS,
) -> dict[str, torch.Tensor]:
    """Instructions -> one-hot logits (0 on the chosen entry, ``-sharpness`` elsewhere)."""
    n = len(instructions)
    if n == 0:
        raise ProgramError("a program needs at least one line")
    cells = num_registers + num_args + len(consts)
    writable = num_registers + num_args
    fields = {
        "op": (len(OPS), [OP_INDEX[i.op] for i in instructions]),
        "dst": (writable + 1, [writable if i.dst is None else i.dst for i in instructions]),
        "a": (cells, [i.a for i in instructions]),
        "b": (cells, [i.b for i in instructions]),
        "c": (cells, [i.c for i in instructions]),
        "branch": (len(BRANCHES), [BRANCH_INDEX[i.branch] for i in instructions]),
        "target": (n, [i.target for i in instructions]),
        "callee": (num_callees, [i.callee for i in instructions]),
        "consts": (value_size, list(consts)),
    }
    weights = {}
    for name, (width, chosen) in fields.items():
        if name == "callee" and width == 0:
            if any(i.op == "call" for i in instructions):
                raise ProgramError("a call needs a callee, and the program has none")
            weights[name] = torch.zeros(n, 0)
            continue
        for line, value in enumerate(chosen):
            if not 0 <= value < width:
                raise ProgramError(f"field {name} of entry {line} is {value}, outside [0, {width})")
        w = torch.full((len(chosen), width), -sharpness)
        w[torch.arange(len(chosen)), torch.tensor(chosen, dtype=torch.long)] = 0.0
        weights[name] = w
    return weights


def disassemble(weights: dict[str, torch.Tensor], num_registers: int, num_args: int) -> list[Instruction]:
    """Logits -> instructions, by the argmax of every field."""
    writable = num_registers + num_args
    picks = {k: (w.argmax(-1).tolist() if w.shape[-1] else [0] * w.shape[0]) for k, w in weights.items()}
    return [
        Instruction(
            op=OPS[picks["op"][i]],
            dst=None if picks["dst"][i] == writable else picks["dst"][i],
            a=picks["a"][i],
            b=picks["b"][i],
            c=picks["c"][i],
            branch=BRANCHES[picks["branch"][i]],
            target=picks["target"][i],
            callee=picks["callee"][i],
        ).canonical()
        for i in range(weights["op"].shape[0])
    ]


def format_line(op: str, dst: str, a: str, b: str, c: str, branch: str, target: object, callee: str) -> str:
    """One line of assembly from its fields as text, e.g. ``add r2, r0, #1``, ``load r3, [r1 + #1]``,
    ``lt _, r0, r1  jz 9`` (shared by the compiler's IR listings and the disassembler)."""
    arity = PRIMITIVES[op][1] if op in PRIMITIVES else None
    if op == "nop":
        text = "" if branch == "always" else "nop"
    elif arity == 1:
        text = f"{op} {dst}, {a}"
    elif arity == 2:
        text = f"{op} {dst}, {a}, {b}"
    elif op == "load":
        text = f"load {dst}, [{a} + {b}]"
    elif op == "store":
        text = f"store [{a} + {b}], {c}"
    elif op == "call":
        text = f"call {callee}"
    else:
        text = op
    if branch != "never":
        text = f"{text}  {BRANCH_MNEMONIC[branch]} {target}".strip()
    return text


def format_instruction(ins: Instruction, name_of_cell, callees: list[str]) -> str:
    """One line of assembly of an instruction, its cells named by ``name_of_cell``."""
    dst = "_" if ins.dst is None else name_of_cell(ins.dst)
    a, b, c = (name_of_cell(x) for x in (ins.a, ins.b, ins.c))
    callee = callees[ins.callee] if ins.op == "call" else ""
    return format_line(ins.op, dst, a, b, c, ins.branch, ins.target, callee)


def format_assembly(program: Program) -> str:
    """The readable listing of a program (``toolchain.assembly.parse_assembly`` reads it back)."""
    consts = program.consts()
    params = ", ".join(f"{n}: {t}" for n, t in program.params)
    lines = [f"def {program.name}({params}) -> {program.returns}"]
    if consts:
        lines.append(".consts " + " ".join(str(v) for v in consts))
    name_of_cell = lambda cell: cell_name(cell, program.num_registers, program.num_args, consts)  # noqa: E731
    for i, ins in enumerate(program.instructions()):
        lines.append(f"{i:4d}  {format_instruction(ins, name_of_cell, program.callees)}")
    return "\n".join(lines)


