"""Pass 2b: optimize the IR of ``lower`` (virtual registers, symbolic labels), before allocation.

Every executed line is one machine step, so this pass removes recomputation. It works on *extended basic blocks*:
runs of ops entered only at their top. A label starts a new run; a conditional branch does not end one (its
fall-through successor has no other way in); an unconditional jump and ``ret`` do. Within a run, op by op:

  1. copy propagation: a source that a ``mov`` of this run set from a virtual register or a constant (neither
     written since) reads that register or constant instead. Argument registers are not propagated (calls clobber
     them, and keeping their live ranges short leaves them free as scratch cells for the allocator).
  2. constant folding: a non-branching ALU op whose sources are all constants becomes ``mov dst, #value``;
     ``a + 0``, ``0 + a``, ``a - 0``, ``a * 1``, ``1 * a`` become ``mov dst, a``.
  3. address folding: ``load``/``store [t + #0]`` where ``t = add a, b`` earlier in the run becomes ``[a + b]``.
  4. common subexpressions (local value numbering on the operands after 1-3): an ALU op other than ``mov`` that
     writes a register, or a non-branching ``load``, whose expression a register or constant still holds becomes
     ``mov dst, that`` (keeping its branch: a mov branches on the same value). Commutative ops are matched in either
     operand order.
  A ``mov r, r`` these rewrites produce is dropped (keeping its branch, if any, as ``mov _, r``).
  Memory: a remembered load is forgotten at every ``store`` and ``call`` (any store may alias any address; a call
  may store anywhere); ``store [a + b], c`` itself is remembered as ``load [a + b] = c``, so a later load of the
  very same operands reads ``c`` (store-to-load forwarding). Writing a register forgets every fact that mentions
  it; ``call`` writes every argument register.

Then dead code elimination (``allocate.remove_unreachable`` / ``allocate.remove_dead``) drops what the rewrites
left unread: recomputations turned into copies, copies whose readers were redirected, adds folded into addresses.

Guarantees: results, memory and the returned value are unchanged on every input (each rewrite replaces a value by
one known equal at that point, on every path into it), and no path executes more ops (rewrites are one op for one
op; elimination only removes). Loop-level transformations (hoisting, rotation) are not done: allocation already
fuses a loop's back jump into its last op, so rotation would not save a step.
"""
from __future__ import annotations

from dataclasses import replace

from ...ops import PRIMITIVES, apply_int
from .allocate import remove_dead, remove_unreachable
from .lower import ALU, Const, Entry, IRFunction, Label, Op, Operand, Reg, VReg, XReg

COMMUTATIVE = frozenset({"add", "mul", "eq", "ne", "min", "max", "and", "or"})


def optimize_function(fn: IRFunction, *, value_size: int, num_args: int = 4) -> IRFunction:
    """Run the whole pass on one function (returns a new :class:`IRFunction`)."""
    body = local_value_numbering(fn.body, value_size, num_args)
    body = remove_dead(remove_unreachable(body), num_args)
    return replace(fn, body=body)


def _sources(e: Op) -> tuple[str, ...]:
    """Names of the fields ``e`` reads."""
    if e.op in PRIMITIVES:
        return ("a", "b")[: PRIMITIVES[e.op][1]]
    return {"load": ("a", "b"), "store": ("a", "b", "c")}.get(e.op, ())


def local_value_numbering(body: list[Entry], value_size: int, num_args: int) -> list[Entry]:
    """Copy propagation, constant folding, address folding and CSE within extended basic blocks (see above)."""
    copies: dict[VReg, Operand] = {}  # %v -> what it is a copy of (a VReg or a Const)
    avail: dict[tuple, Operand] = {}  # expression key -> a register (or constant) that holds its value

    def forget(reg: Reg) -> None:
        for k in [k for k, v in copies.items() if reg in (k, v)]:
            del copies[k]
        for k in [k for k, v in avail.items() if v == reg or reg in k[1:]]:
            del avail[k]

    def forget_loads() -> None:
        for k in [k for k in avail if k[0] == "load"]:
            del avail[k]

    def lookup(key: tuple) -> Operand | None:
        op, a, b = key
        swapped = (op, b, a) if op in COMMUTATIVE or op == "load" else key  # load [a + b] is an addition too
        return avail.get(key, avail.get(swapped))

    def sum_in(reg: Operand) -> tuple | None:
        """The key ``("add", a, b)`` that ``reg`` holds, if any."""
        return next((k for k, v in avail.items() if v == reg and k[0] == "add"), None)

    out: list[Entry] = []
    for e in body:
        if isinstance(e, Label):
            copies.clear()
            avail.clear()
            out.append(e)
            continue
        # 1. copy propagation
        e = replace(e, **{f: copies.get(getattr(e, f), getattr(e, f)) for f in _sources(e)})
        # 2. constant folding (and the identities a + 0, 0 + a, a - 0, a * 1, 1 * a)
        arity = PRIMITIVES[e.op][1] if e.op in ALU else None
        if arity and e.op != "mov" and e.dst is not None and e.branch == "never":
            if all(isinstance(getattr(e, f), Const) for f in _sources(e)):
                b = e.b.value if arity == 2 else 0
                e = Op("mov", e.dst, Const(apply_int(e.op, e.a.value, b, value_size)))
            elif e.op in ("add", "sub", "mul"):
                unit = Const(1 if e.op == "mul" else 0)
                if e.b == unit:
                    e = Op("mov", e.dst, e.a)
                elif e.a == unit and e.op != "sub":
                    e = Op("mov", e.dst, e.b)
        # 3. address folding
        if e.op in ("load", "store") and e.b == Const(0):
            k = sum_in(e.a)
            if k is not None:
                e = replace(e, a=k[1], b=k[2])
        # 4. common subexpressions
        key = None
        if e.dst is not None and ((arity and e.op != "mov") or (e.op == "load" and e.branch == "never")):
            key = (e.op, e.a, e.b if (e.op == "load" or arity == 2) else None)
            held = lookup(key)
            if held is not None:
                e = Op("mov", e.dst, held, branch=e.branch, target=e.target)
                key = None
        if e.op == "mov" and e.dst == e.a:  # `mov r, r`: keep only its branch (a def would interfere in allocation)
            if e.branch == "never":
                continue
            e = replace(e, dst=None)
        out.append(e)
        # what the op changes
        if e.op == "call":
            forget_loads()
            for i in range(num_args):
                forget(XReg(i))
        if e.dst is not None:
            forget(e.dst)
        if e.op == "store":
            forget_loads()
            avail[("load", e.a, e.b)] = e.c
        # what it establishes
        if isinstance(e.dst, VReg):
            if e.op == "mov" and isinstance(e.a, (VReg, Const)) and e.a != e.dst:
                copies[e.dst] = e.a
            elif key is not None and e.dst not in key[1:]:
                avail[key] = e.dst
        if e.branch == "always" or e.op in ("ret", "halt"):
            copies.clear()
            avail.clear()
    return out
