"""Pass 3: register allocation, jump clean-up, label resolution and constant pools.

Input: an :class:`~.lower.IRFunction` (virtual registers, symbolic labels). Output: an :class:`AllocatedFunction`:
ops on physical cells only (locals ``r0..``, argument registers ``x0..``, constants), jump targets resolved to line
numbers, the function's constant pool, its callees, and ``num_registers``, the number of locals it needs.
``AllocatedFunction.instructions(R, X)`` gives the final ``program.Instruction`` list for a library with ``R``
locals and ``X`` argument registers.

What this pass adds
  1. dead code removal: unreachable ops; ops whose result is never read (a branching op keeps its branch and loses
     its ``dst``).
  2. liveness analysis (backward dataflow over the control-flow graph). ``call`` reads ``x0..x{nargs-1}`` and
     clobbers every argument register; ``ret`` reads ``x0``.
  3. an interference graph over virtual registers plus the argument registers (pre-coloured); moves are coalesced
     when their ends do not interfere (this is how arguments get computed straight into ``x_i``, results read
     straight from ``x0`` and parameters used in place, when that is safe), then virtual registers are coloured
     greedily, argument registers first (free scratch cells when no call intervenes), then ``r0, r1, ...``.
  4. self-moves are deleted; jumps are threaded, a jump to the next line is dropped, ``op jz A; jmp B; A:`` becomes
     ``op jnz B``, and a lone ``jmp`` is fused into the op before it (any non-call op may branch always).
  5. labels become line numbers; constants become a pool (distinct values in order of first use).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

from ...program import Instruction
from .lower import ALU, Const, Entry, IRFunction, Label, Op, Operand, Reg, RReg, VReg, XReg


# ---------------------------------------------------------------------------------------------------------------
# control flow and liveness
# ---------------------------------------------------------------------------------------------------------------
def label_positions(body: list[Entry]) -> dict[str, int]:
    return {e.name: i for i, e in enumerate(body) if isinstance(e, Label)}


def successors(body: list[Entry], i: int, labels: dict[str, int]) -> list[int]:
    e = body[i]
    if isinstance(e, Label):
        return [i + 1] if i + 1 < len(body) else []
    if e.op in ("ret", "halt"):
        return []
    out = []
    if e.branch != "always":
        if i + 1 < len(body):
            out.append(i + 1)
    if e.branch != "never":
        out.append(labels[e.target])
    return out


def uses(e: Entry) -> list[Reg]:
    if isinstance(e, Label):
        return []
    regs = [o for o in e.sources() if o is not None and not isinstance(o, Const)]
    if e.op == "call":
        regs += [XReg(i) for i in range(e.nargs)]
    elif e.op == "ret":
        regs.append(XReg(0))
    return regs


def defs(e: Entry, num_args: int) -> list[Reg]:
    if isinstance(e, Label):
        return []
    if e.op == "call":
        return [XReg(i) for i in range(num_args)]
    return [e.dst] if e.dst is not None else []


def remove_unreachable(body: list[Entry]) -> list[Entry]:
    labels = label_positions(body)
    seen, stack = set(), [0] if body else []
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        stack.extend(successors(body, i, labels))
    return [e for i, e in enumerate(body) if i in seen]


def liveness(body: list[Entry], num_args: int) -> list[set]:
    """Registers live after each entry."""
    labels = label_positions(body)
    n = len(body)
    succ = [successors(body, i, labels) for i in range(n)]
    use = [set(uses(e)) for e in body]
    dfn = [set(defs(e, num_args)) for e in body]
    live_in = [set() for _ in range(n)]
    live_out = [set() for _ in range(n)]
    changed = True
    while changed:
        changed = False
        for i in range(n - 1, -1, -1):
            out = set()
            for s in succ[i]:
                out |= live_in[s]
            inn = use[i] | (out - dfn[i])
            if out != live_out[i] or inn != live_in[i]:
                live_out[i], live_in[i] = out, inn
                changed = True
    return live_out


def remove_dead(body: list[Entry], num_args: int) -> list[Entry]:
    """Drop ops whose only effect is a write nobody reads; keep branches (without the write)."""
    while True:
        live = liveness(body, num_args)
        out, changed = [], False
        for e, after in zip(body, live):
            if isinstance(e, Op) and e.dst is not None and e.dst not in after and e.op in ALU | {"load"}:
                changed = True
                if e.branch == "never":
                    continue
                if e.branch == "always":  # `mov r, r  jmp L` is a plain jump (which may fuse into the op before)
                    out.append(Op("nop", branch="always", target=e.target))
                    continue
                e = replace(e, dst=None)
            out.append(e)
        body = out
        if not changed:
            return body


# ---------------------------------------------------------------------------------------------------------------
# interference, coalescing, colouring
# ---------------------------------------------------------------------------------------------------------------
class _Graph:
    def __init__(self):
        self.adj: dict[Reg, set] = {}
        self.parent: dict[Reg, Reg] = {}

    def node(self, r: Reg) -> None:
        if r not in self.adj:
            self.adj[r] = set()
            self.parent[r] = r

    def find(self, r: Reg) -> Reg:
        while self.parent[r] != r:
            self.parent[r] = self.parent[self.parent[r]]
            r = self.parent[r]
        return r

    def edge(self, a: Reg, b: Reg) -> None:
        a, b = self.find(a), self.find(b)
        if a == b or (isinstance(a, XReg) and isinstance(b, XReg)):
            return
        self.adj[a].add(b)
        self.adj[b].add(a)

    def merge(self, keep: Reg, gone: Reg) -> None:
        for n in self.adj.pop(gone):
            self.adj[n].discard(gone)
            if n != keep:
                self.adj[n].add(keep)
                self.adj[keep].add(n)
        self.parent[gone] = keep


def allocate_registers(body: list[Entry], num_args: int) -> tuple[dict[VReg, Reg], int]:
    """Map every virtual register to ``XReg`` or ``RReg``; return the map and the number of locals used."""
    live = liveness(body, num_args)
    g = _Graph()
    for i in range(num_args):
        g.node(XReg(i))
    for e in body:
        for r in uses(e) + defs(e, num_args):
            g.node(r)
    moves = []
    for e, after in zip(body, live):
        ds = defs(e, num_args)
        src = None
        if isinstance(e, Op) and e.op == "mov" and e.dst is not None and not isinstance(e.a, Const):
            src = e.a
            moves.append((e.dst, e.a))
        for d in ds:
            for other in after:
                if other != d and other != src:
                    g.edge(d, other)
    for a, b in moves:
        ra, rb = g.find(a), g.find(b)
        if ra == rb or rb in g.adj[ra]:
            continue
        if isinstance(ra, XReg) and isinstance(rb, XReg):
            continue
        if isinstance(rb, XReg):
            ra, rb = rb, ra
        g.merge(ra, rb)
    roots = [r for r in g.adj if isinstance(r, VReg)]
    best = None
    for order in (sorted(roots, key=lambda r: (-len(g.adj[r]), r.id)), sorted(roots, key=lambda r: r.id)):
        color = _color(g, order, num_args)
        used = max((c.index + 1 for c in color.values() if isinstance(c, RReg)), default=0)
        if best is None or used < best[1]:
            best = (color, used)
    color, used = best
    mapping = {}
    for r in g.parent:
        if isinstance(r, VReg):
            root = g.find(r)
            mapping[r] = root if isinstance(root, XReg) else color[root]
    return mapping, used


def _color(g: _Graph, order: list[VReg], num_args: int) -> dict[VReg, Reg]:
    color: dict[VReg, Reg] = {}
    for r in order:
        taken = set()
        for n in g.adj[r]:
            if isinstance(n, XReg):
                taken.add(n)
            elif n in color:
                taken.add(color[n])
        choice = next((XReg(i) for i in range(num_args) if XReg(i) not in taken), None)
        if choice is None:
            k = 0
            while RReg(k) in taken:
                k += 1
            choice = RReg(k)
        color[r] = choice
    return color


def rewrite(body: list[Entry], mapping: dict[VReg, Reg]) -> list[Entry]:
    def m(o):
        return mapping.get(o, o) if isinstance(o, VReg) else o

    out = []
    for e in body:
        if isinstance(e, Op):
            e = replace(e, dst=m(e.dst), a=m(e.a), b=m(e.b), c=m(e.c))
            if e.op == "mov" and e.dst == e.a and e.dst is not None:
                prev = out[-1] if out else None
                if e.branch == "never":
                    continue
                if e.branch == "always":  # `mov r, r  jmp L` is a plain jump (which may fuse into the op before)
                    out.append(Op("nop", branch="always", target=e.target))
                    continue
                # `op r, ..; mov r, r jz L`: the branch moves onto the op that computed r
                if isinstance(prev, Op) and prev.op in ALU and prev.dst == e.dst and prev.branch == "never":
                    out[-1] = replace(prev, branch=e.branch, target=e.target)
                    continue
        out.append(e)
    return out


# ---------------------------------------------------------------------------------------------------------------
# jumps
# ---------------------------------------------------------------------------------------------------------------
def _is_jump(e: Entry) -> bool:
    return isinstance(e, Op) and e.op == "nop" and e.branch == "always"


def optimize_jumps(body: list[Entry]) -> list[Entry]:
    for _ in range(100):
        before = [str(e) for e in body]
        labels = label_positions(body)

        def first_op(label: str) -> Optional[int]:
            i = labels[label]
            while i < len(body) and isinstance(body[i], Label):
                i += 1
            return i if i < len(body) else None

        # thread jumps to jumps
        new = []
        for e in body:
            if isinstance(e, Op) and e.branch != "never":
                target, hops = e.target, 0
                while hops < 20:
                    j = first_op(target)
                    if j is None or not _is_jump(body[j]) or body[j].target == target:
                        break
                    target, hops = body[j].target, hops + 1
                e = replace(e, target=target)
            new.append(e)
        body = new
        # drop branches to the very next op; invert `op jz A; jmp B; A:`; fuse lone jumps
        out: list[Entry] = []
        i = 0
        while i < len(body):
            e = body[i]
            if isinstance(e, Op) and e.branch != "never":
                j = i + 1
                while j < len(body) and isinstance(body[j], Label):
                    if body[j].name == e.target:
                        break
                    j += 1
                if j < len(body) and isinstance(body[j], Label) and body[j].name == e.target:
                    e = replace(e, branch="never", target=None)
                    if e.op == "nop" or (e.dst is None and e.op in ALU):
                        i += 1
                        continue
            if (
                isinstance(e, Op)
                and e.branch in ("zero", "nonzero")
                and i + 2 < len(body)
                and _is_jump(body[i + 1])
                and isinstance(body[i + 2], Label)
                and body[i + 2].name == e.target
            ):
                e = replace(e, branch="nonzero" if e.branch == "zero" else "zero", target=body[i + 1].target)
                out.append(e)
                i += 2
                continue
            if (
                _is_jump(e)
                and out
                and isinstance(out[-1], Op)
                and out[-1].branch == "never"
                and out[-1].op not in ("call", "ret", "halt")
            ):
                out[-1] = replace(out[-1], branch="always", target=e.target)
                i += 1
                continue
            out.append(e)
            i += 1
        body = remove_unreachable(out)
        used = {e.target for e in body if isinstance(e, Op) and e.branch != "never"}
        body = [e for e in body if not isinstance(e, Label) or e.name in used]
        if [str(e) for e in body] == before:
            break
    return body


# ---------------------------------------------------------------------------------------------------------------
# the result
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class AllocatedFunction:
    """A function on physical cells: ops with line-number targets, its constant pool and callees."""

    name: str
    params: list[tuple[str, str]]
    returns: str
    ops: list[Op]  # targets are line numbers (as ints); operands RReg / XReg / Const
    consts: list[int]
    callees: list[str]
    num_registers: int
    source: str = ""
    lineno: int = 1
    meta: dict = field(default_factory=dict)

    def instructions(self, num_registers: int, num_args: int) -> list[Instruction]:
        """``program.Instruction``\\ s for a library with ``num_registers`` locals and ``num_args`` argument cells."""
        if num_registers < self.num_registers:
            raise ValueError(f"{self.name} needs {self.num_registers} registers, got {num_registers}")
        pool = {v: i for i, v in enumerate(self.consts)}

        def cell(o: Optional[Operand]) -> int:
            if o is None:
                return 0
            if isinstance(o, RReg):
                return o.index
            if isinstance(o, XReg):
                return num_registers + o.index
            return num_registers + num_args + pool[o.value]

        out = []
        for e in self.ops:
            out.append(
                Instruction(
                    op=e.op,
                    dst=None if e.dst is None else cell(e.dst),
                    a=cell(e.a),
                    b=cell(e.b),
                    c=cell(e.c),
                    branch=e.branch,
                    target=e.target if e.branch != "never" else 0,
                    callee=self.callees.index(e.callee) if e.op == "call" else 0,
                ).canonical()
            )
        return out

    def listing(self) -> str:
        lines = [f"def {self.name}({', '.join(f'{n}: {t}' for n, t in self.params)}) -> {self.returns}"]
        lines += [f"{i:4d}  {e}" for i, e in enumerate(self.ops)]
        return "\n".join(lines)


def allocate_function(fn: IRFunction, *, num_args: int = 4) -> AllocatedFunction:
    """Run the whole pass on one function."""
    body = remove_unreachable(list(fn.body))
    body = remove_dead(body, num_args)
    mapping, _ = allocate_registers(body, num_args)
    body = rewrite(body, mapping)
    body = optimize_jumps(body)
    # resolve labels
    lines: dict[str, int] = {}
    ops: list[Op] = []
    for e in body:
        if isinstance(e, Label):
            lines[e.name] = len(ops)
        else:
            ops.append(e)
    for name, line in lines.items():
        if line >= len(ops):
            raise AssertionError(f"label {name} of {fn.name} points past the end")
    ops = [replace(e, target=lines[e.target]) if e.branch != "never" else replace(e, target=None) for e in ops]
    consts: list[int] = []
    callees: list[str] = []
    for e in ops:
        for o in e.sources():
            if isinstance(o, Const) and o.value not in consts:
                consts.append(o.value)
        if e.op == "call" and e.callee not in callees:
            callees.append(e.callee)
    used = max(
        (o.index + 1 for e in ops for o in (e.dst, *e.sources()) if isinstance(o, RReg)),
        default=0,
    )
    return AllocatedFunction(
        fn.name, fn.params, fn.returns, ops, consts, callees, used, fn.source, fn.lineno,
        meta={"registers": used, "lines": len(ops), "consts": len(consts)},
    )
