"""Pass 2: lower the typed AST to assembly IR with virtual registers and labels.

What this pass adds: control flow made explicit (labels, fused compare-and-branch, short-circuit ``and``/``or``),
the memory layout of lists (length cell, items at ``p + 1 ..``, bump allocation from ``mem[0]``), and the calling
convention (arguments moved into ``x0..``, ``call``, result read from ``x0``; prologue ``mov %param, x_i``; return
``mov x0, value`` + ``ret``). Registers are still virtual and unbounded; labels are still symbolic.

IR schema (printable with :func:`format_ir`)
  operands  ``VReg(n)`` (``%name.n`` / ``%t.n``): a virtual register; ``XReg(i)`` (``x_i``): an argument register
            (the only physical cells at this stage); ``Const(v)`` (``#v``): a constant, ``0 <= v < V``.
  ``Op``    ``op`` (an op of ``program.OPS``), ``dst`` (VReg, XReg or None), sources ``a``, ``b``, ``c`` (operands or
            None, used as ``program.Instruction`` uses them), ``branch`` (never/zero/nonzero/always) with a symbolic
            ``target`` label, ``callee`` (function name) and ``nargs`` (arguments passed) for ``call``.
            A bare jump is ``Op("nop", branch="always", target=L)``.
  ``Label`` a jump target (``L3_endwhile:``); it names the next ``Op``.
Each :class:`IRFunction` starts with its prologue and ends every path with ``ret``.

Semantics notes: values are unsigned mod V. ``xs[e + k]`` folds the constant ``k + 1`` into the load/store
offset. ``for`` over ``range`` keeps a hidden counter (so assigning the loop variable in the body is harmless and
the variable keeps its last value after the loop); ``range(a, -1, -1)`` ends when the counter wraps past 0.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Optional, Union

from ...ops import PRIMITIVES, apply_int
from ...program import format_line
from .errors import CompileError
from .parse import BINOPS, CMPOPS, FunctionInfo, ParsedModule, negative_constant, range_step

ALU = frozenset(name for name in PRIMITIVES if name != "nop")
NEGATED = {"lt": "ge", "le": "gt", "gt": "le", "ge": "lt", "eq": "ne", "ne": "eq"}


@dataclass(frozen=True)
class VReg:
    id: int
    name: str = "t"

    def __str__(self) -> str:
        return f"%{self.name}.{self.id}"


@dataclass(frozen=True)
class XReg:
    index: int

    def __str__(self) -> str:
        return f"x{self.index}"


@dataclass(frozen=True)
class RReg:
    """A local register (only after allocation)."""

    index: int

    def __str__(self) -> str:
        return f"r{self.index}"


@dataclass(frozen=True)
class Const:
    value: int

    def __str__(self) -> str:
        return f"#{self.value}"


Operand = Union[VReg, XReg, RReg, Const]
Reg = Union[VReg, XReg, RReg]


@dataclass
class Op:
    op: str
    dst: Optional[Reg] = None
    a: Optional[Operand] = None
    b: Optional[Operand] = None
    c: Optional[Operand] = None
    branch: str = "never"
    target: Optional[str] = None
    callee: Optional[str] = None
    nargs: int = 0

    def __str__(self) -> str:
        dst = "_" if self.dst is None else str(self.dst)
        callee = f"{self.callee}/{self.nargs}"
        return format_line(self.op, dst, str(self.a), str(self.b), str(self.c), self.branch, self.target, callee)

    def sources(self) -> list[Operand]:
        """The operands this op reads (not counting the argument registers read by ``call`` / ``ret``)."""
        if self.op in PRIMITIVES:
            return [x for x in (self.a, self.b)[: PRIMITIVES[self.op][1]]]
        if self.op == "load":
            return [self.a, self.b]
        if self.op == "store":
            return [self.a, self.b, self.c]
        return []


@dataclass
class Label:
    name: str

    def __str__(self) -> str:
        return f"{self.name}:"


Entry = Union[Op, Label]


@dataclass
class IRFunction:
    name: str
    params: list[tuple[str, str]]
    returns: str
    body: list[Entry]
    source: str = ""
    lineno: int = 1
    num_vregs: int = 0

    def ops(self) -> list[Op]:
        return [e for e in self.body if isinstance(e, Op)]


def format_ir(fn: IRFunction) -> str:
    params = ", ".join(f"{n}: {t}" for n, t in fn.params)
    lines = [f"def {fn.name}({params}) -> {fn.returns}"]
    for e in fn.body:
        lines.append(str(e) if isinstance(e, Label) else f"    {e}")
    return "\n".join(lines)


def lower_module(module: ParsedModule, *, num_args: int = 4) -> list[IRFunction]:
    """Lower every function of a parsed module (in source order)."""
    arities = {fn.name: len(fn.params) for fn in module.functions}
    out = []
    for fn in module.functions:
        if len(fn.params) > num_args:
            raise CompileError.at(
                fn.node, f"function {fn.name!r} has {len(fn.params)} parameters, more than num_args = {num_args}"
            )
        out.append(_Lowerer(fn, module.value_size, arities).lower())
    return out


def _assigned_names(body: list[ast.stmt]) -> set[str]:
    names = set()
    for s in body:
        for node in ast.walk(s):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return names


@dataclass
class _Loop:
    continue_label: str
    break_label: str


class _Lowerer:
    def __init__(self, fn: FunctionInfo, value_size: int, arities: dict[str, int]):
        self.fn, self.V, self.arities = fn, value_size, arities
        self.body: list[Entry] = []
        self.nvregs = 0
        self.nlabels = 0
        self.vars: dict[str, VReg] = {}
        self.loops: list[_Loop] = []

    # -- helpers ----------------------------------------------------------------------------------------------
    def new(self, name: str = "t") -> VReg:
        self.nvregs += 1
        return VReg(self.nvregs - 1, name)

    def label(self, hint: str) -> str:
        self.nlabels += 1
        return f"L{self.nlabels}_{hint}"

    def emit(self, op: str, dst=None, a=None, b=None, c=None, branch="never", target=None, **kw) -> Op:
        e = Op(op, dst, a, b, c, branch, target, **kw)
        self.body.append(e)
        return e

    def place(self, label: str) -> None:
        self.body.append(Label(label))

    def jump(self, label: str) -> None:
        self.emit("nop", branch="always", target=label)

    def var(self, name: str) -> VReg:
        if name not in self.vars:
            self.vars[name] = self.new(name)
        return self.vars[name]

    def const(self, value: int) -> Const:
        return Const(value % self.V)

    # -- functions ----------------------------------------------------------------------------------------------
    def lower(self) -> IRFunction:
        fn = self.fn
        for i, (pname, _) in enumerate(fn.params):
            self.emit("mov", self.var(pname), XReg(i))
        body = fn.node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]
        if self.block(body):
            self.emit("mov", XReg(0), Const(0))
            self.emit("ret")
        return IRFunction(fn.name, fn.params, fn.returns, self.body, fn.source, fn.lineno, self.nvregs)

    # -- statements ---------------------------------------------------------------------------------------------
    def block(self, body: list[ast.stmt]) -> bool:
        """Lower statements; return whether control can reach the end of the block."""
        for s in body:
            if not self.stmt(s):
                return False
        return True

    def stmt(self, s: ast.stmt) -> bool:
        if isinstance(s, ast.Pass):
            return True
        if isinstance(s, ast.Expr):
            if isinstance(s.value, ast.Call):
                self.expr(s.value)
            return True
        if isinstance(s, ast.Assign):
            target = s.targets[0]
            if isinstance(target, ast.Tuple):
                temps = []
                for v in s.value.elts:
                    o = self.expr(v)
                    t = self.new()
                    self.emit("mov", t, o)
                    temps.append(t)
                for t, tv in zip(target.elts, temps):
                    self.assign(t, tv)
            else:
                self.assign(target, self.expr(s.value))
            return True
        if isinstance(s, ast.AnnAssign):
            if s.value is not None:
                self.assign(s.target, self.expr(s.value))
            return True
        if isinstance(s, ast.AugAssign):
            op = BINOPS[type(s.op)]
            if isinstance(s.target, ast.Name):
                v = self.var(s.target.id)
                r = self.expr(s.value)
                self.assign(s.target, self.arith(op, v, r))
            else:
                base, off = self.address(s.target)
                cur = self.new()
                self.emit("load", cur, base, off)
                r = self.expr(s.value)
                self.emit("store", None, base, off, self.arith(op, cur, r))
            return True
        if isinstance(s, ast.If):
            return self.if_stmt(s)
        if isinstance(s, ast.While):
            return self.while_stmt(s)
        if isinstance(s, ast.For):
            return self.for_stmt(s)
        if isinstance(s, ast.Break):
            self.jump(self.loops[-1].break_label)
            return False
        if isinstance(s, ast.Continue):
            self.jump(self.loops[-1].continue_label)
            return False
        if isinstance(s, ast.Return):
            o = Const(0) if s.value is None else self.expr(s.value)
            self.emit("mov", XReg(0), o)
            self.emit("ret")
            return False
        raise CompileError.at(s, f"internal error: cannot lower {type(s).__name__}")  # parse rejects it first

    def assign(self, target: ast.AST, value: Operand) -> None:
        if isinstance(target, ast.Name):
            self.emit("mov", self.var(target.id), value)
        else:
            base, off = self.address(target)
            self.emit("store", None, base, off, value)

    def if_stmt(self, s: ast.If) -> bool:
        truth = self.static_truth(s.test)
        if truth is not None:  # if True: / if 0:
            return self.block(s.body if truth else s.orelse)
        else_label, end_label = self.label("else"), self.label("endif")
        self.cond_jump(s.test, else_label if s.orelse else end_label, False)
        falls = self.block(s.body)
        if s.orelse:
            if falls:
                self.jump(end_label)
            self.place(else_label)
            falls = self.block(s.orelse) or falls
        self.place(end_label)
        return True

    def while_stmt(self, s: ast.While) -> bool:
        top, end = self.label("while"), self.label("endwhile")
        self.place(top)
        truth = self.static_truth(s.test)
        if truth is False:
            return True
        if truth is None:
            self.cond_jump(s.test, end, False)
        self.loops.append(_Loop(top, end))
        if self.block(s.body):
            self.jump(top)
        self.loops.pop()
        self.place(end)
        return True  # conservatively: a break or a false test may exit

    def for_stmt(self, s: ast.For) -> bool:
        it = s.iter
        target = self.var(s.target.id)
        top, cont, end = self.label("for"), self.label("next"), self.label("endfor")
        if not (isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range"):
            # for x in xs: hidden index over the list
            xs = self.expr(it)
            if isinstance(it, ast.Name) and it.id in _assigned_names(s.body) | {s.target.id}:
                copy = self.new("list")
                self.emit("mov", copy, xs)
                xs = copy
            n = self.new("n")
            self.emit("load", n, xs, Const(0))
            i = self.new("i")
            self.emit("mov", i, Const(0))
            self.place(top)
            self.emit("lt", None, i, n, branch="zero", target=end)
            addr = self.new()
            self.emit("add", addr, xs, i)
            self.emit("load", target, addr, self.const(1))
            self.loops.append(_Loop(cont, end))
            if self.block(s.body):
                self.jump(cont)
            self.loops.pop()
            self.place(cont)
            self.emit("inc", i, i, branch="always", target=top)
            self.place(end)
            return True
        args = it.args
        step = range_step(it)
        if len(args) == 1:
            start_node, stop_node = None, args[0]
        else:
            start_node, stop_node = args[0], args[1]
        start = Const(0) if start_node is None else self.expr(start_node)
        stop_neg = negative_constant(stop_node) if stop_node is not None else None
        stop = None if stop_neg is not None else self.expr(stop_node)
        if isinstance(stop, VReg) and (stop in self.vars.values()):
            name = next(k for k, v in self.vars.items() if v == stop)
            if name in _assigned_names(s.body) or name == s.target.id:
                copy = self.new("stop")
                self.emit("mov", copy, stop)
                stop = copy
        counter = self.new("c")
        s_abs = abs(step)
        if step > 0 or s_abs == 1:
            self.emit("mov", counter, start)
            self.place(top)
            if step > 0:
                self.emit("lt", None, counter, stop, branch="zero", target=end)
            elif stop is None:  # range(a, -1, -1): runs until the counter wraps past 0
                self.emit("inc", None, counter, branch="zero", target=end)
            else:
                self.emit("gt", None, counter, stop, branch="zero", target=end)
            self.emit("mov", target, counter)
        else:
            # step -s (s >= 2): keep k = i + s, so k never wraps below 0; continue while k > stop + s
            self.emit("add", counter, start, self.const(s_abs))
            if stop is None:
                limit: Operand = self.const(s_abs - 1)
            elif isinstance(stop, Const):
                limit = self.const(stop.value + s_abs)
            else:
                limit = self.new("limit")
                self.emit("add", limit, stop, self.const(s_abs))
            self.place(top)
            self.emit("gt", None, counter, limit, branch="zero", target=end)
            self.emit("sub", target, counter, self.const(s_abs))
        self.loops.append(_Loop(cont, end))
        if self.block(s.body):
            self.jump(cont)
        self.loops.pop()
        self.place(cont)
        if step == 1:
            self.emit("inc", counter, counter, branch="always", target=top)
        elif step == -1:
            self.emit("dec", counter, counter, branch="always", target=top)
        else:
            self.emit("add" if step > 0 else "sub", counter, counter, self.const(s_abs), branch="always", target=top)
        self.place(end)
        return True

    # -- conditions ---------------------------------------------------------------------------------------------
    def static_truth(self, node: ast.AST) -> Optional[bool]:
        if isinstance(node, ast.Constant):
            return bool(node.value)
        return None

    def cond_jump(self, node: ast.AST, label: str, jump_if: bool) -> None:
        """Jump to ``label`` when ``bool(node) == jump_if``; fall through otherwise."""
        if isinstance(node, ast.BoolOp):
            is_and = isinstance(node.op, ast.And)
            if is_and != jump_if:  # and/jump-if-false, or/jump-if-true: any operand decides
                for v in node.values:
                    self.cond_jump(v, label, jump_if)
            else:
                skip = self.label("skip")
                for v in node.values[:-1]:
                    self.cond_jump(v, skip, not jump_if)
                self.cond_jump(node.values[-1], label, jump_if)
                self.place(skip)
            return
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            self.cond_jump(node.operand, label, not jump_if)
            return
        if isinstance(node, ast.Compare):
            left = self.expr(node.left)
            n = len(node.ops)
            skip = self.label("skip") if (jump_if and n > 1) else None
            for i, (op, right_node) in enumerate(zip(node.ops, node.comparators)):
                right = self.expr(right_node)
                name = CMPOPS[type(op)]
                if i == n - 1:
                    self.compare_branch(name, left, right, label, jump_if)
                else:
                    self.compare_branch(name, left, right, skip or label, False)
                left = right
            if skip:
                self.place(skip)
            return
        self.test(self.expr(node), label, jump_if)

    def compare_branch(self, name: str, a: Operand, b: Operand, label: str, jump_if: bool) -> None:
        if isinstance(a, Const) and isinstance(b, Const):
            if bool(apply_int(name, a.value, b.value, self.V)) == jump_if:
                self.jump(label)
            return
        self.emit(name, None, a, b, branch="nonzero" if jump_if else "zero", target=label)

    def test(self, o: Operand, label: str, jump_if: bool) -> None:
        """Branch on the truth of an evaluated operand; fuse with the op that just computed it when possible."""
        branch = "nonzero" if jump_if else "zero"
        if isinstance(o, Const):
            if bool(o.value) == jump_if:
                self.jump(label)
            return
        last = self.body[-1] if self.body else None
        if isinstance(last, Op) and last.op in ALU and last.dst == o and last.branch == "never":
            last.branch, last.target = branch, label
            return
        self.emit("mov", None, o, branch=branch, target=label)

    # -- expressions --------------------------------------------------------------------------------------------
    def arith(self, op: str, a: Operand, b: Operand) -> Operand:
        if isinstance(a, Const) and isinstance(b, Const):
            return Const(apply_int(op, a.value, b.value, self.V))
        t = self.new()
        if op in ("add", "sub") and isinstance(b, Const) and b.value == 1:
            self.emit("inc" if op == "add" else "dec", t, a)
        elif op == "add" and isinstance(a, Const) and a.value == 1:
            self.emit("inc", t, b)
        else:
            self.emit(op, t, a, b)
        return t

    def split_offset(self, node: ast.AST) -> tuple[Optional[ast.AST], int]:
        """``node`` as ``expr + k`` with a constant ``k`` (``expr`` None when the whole index is constant)."""
        if isinstance(node, ast.Constant):
            return None, int(node.value)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            if isinstance(node.right, ast.Constant):
                e, k = self.split_offset(node.left)
                return e, k + int(node.right.value) * (1 if isinstance(node.op, ast.Add) else -1)
            if isinstance(node.op, ast.Add) and isinstance(node.left, ast.Constant):
                e, k = self.split_offset(node.right)
                return e, k + int(node.left.value)
        return node, 0

    def address(self, node: ast.Subscript) -> tuple[Operand, Const]:
        """Base and constant offset of ``xs[i]`` (the item lives at ``xs + i + 1``)."""
        base = self.expr(node.value)
        index_node, k = self.split_offset(node.slice)
        if index_node is None:
            return base, self.const(k + 1)
        index = self.expr(index_node)
        if isinstance(index, Const):
            return base, self.const(index.value + k + 1)
        t = self.new()
        self.emit("add", t, base, index)
        return t, self.const(k + 1)

    def allocate(self, length: Operand) -> VReg:
        """Bump-allocate a zeroed list of ``length`` items; store its length; return its address.

        The first store writes 0 (the cell is already zero) to the list's last cell ``p + length``: memory addresses
        never wrap, so a list that does not fit in memory faults here instead of overlapping other data."""
        p = self.new("p")
        self.emit("load", p, Const(0), Const(0))
        self.emit("store", None, p, length, Const(0))
        top = self.new()
        if isinstance(length, Const):
            self.emit("add", top, p, self.const(length.value + 1))
        else:
            self.emit("add", top, p, length)
            self.emit("inc", top, top)
        self.emit("store", None, Const(0), Const(0), top)
        if not (isinstance(length, Const) and length.value == 0):
            self.emit("store", None, p, Const(0), length)
        return p

    def expr(self, node: ast.AST) -> Operand:
        if isinstance(node, ast.Constant):
            return Const(int(node.value))
        if isinstance(node, ast.Name):
            return self.var(node.id)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                o = self.expr(node.operand)
                if isinstance(o, Const):
                    return Const(int(not o.value))
                t = self.new()
                self.emit("not", t, o)
                return t
            return Const(0)  # -0 (other negative constants are rejected by parse)
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Mult) and (isinstance(node.left, ast.List) or isinstance(node.right, ast.List)):
                lst, n_node = (node.left, node.right) if isinstance(node.left, ast.List) else (node.right, node.left)
                if lst is node.left:
                    v, n = self.expr(lst.elts[0]), self.expr(n_node)
                else:
                    n, v = self.expr(n_node), self.expr(lst.elts[0])
                p = self.allocate(n)
                if not (isinstance(v, Const) and v.value == 0) and not (isinstance(n, Const) and n.value == 0):
                    count, loop, end = self.new("k"), self.label("fill"), self.label("filled")
                    self.emit("mov", count, n, branch="never" if isinstance(n, Const) else "zero", target=None if isinstance(n, Const) else end)
                    self.place(loop)
                    self.emit("store", None, p, count, v)
                    self.emit("dec", count, count, branch="nonzero", target=loop)
                    self.place(end)
                return p
            a = self.expr(node.left)
            b = self.expr(node.right)
            return self.arith(BINOPS[type(node.op)], a, b)
        if isinstance(node, ast.BoolOp):
            t, end = self.new(), self.label("boolend")
            is_and = isinstance(node.op, ast.And)
            for v in node.values[:-1]:
                self.emit("mov", t, self.expr(v))
                self.test(t, end, not is_and)
            self.emit("mov", t, self.expr(node.values[-1]))
            self.place(end)
            return t
        if isinstance(node, ast.Compare):
            if len(node.ops) == 1:
                a, b = self.expr(node.left), self.expr(node.comparators[0])
                return self.arith(CMPOPS[type(node.ops[0])], a, b)
            t, false, end = self.new(), self.label("cmpfalse"), self.label("cmpend")
            self.cond_jump(node, false, False)
            self.emit("mov", t, Const(1), branch="always", target=end)
            self.place(false)
            self.emit("mov", t, Const(0))
            self.place(end)
            return t
        if isinstance(node, ast.IfExp):
            t, other, end = self.new(), self.label("ifelse"), self.label("ifend")
            self.cond_jump(node.test, other, False)
            self.emit("mov", t, self.expr(node.body), branch="always", target=end)
            self.place(other)
            self.emit("mov", t, self.expr(node.orelse))
            self.place(end)
            return t
        if isinstance(node, ast.Subscript):
            base, off = self.address(node)
            t = self.new()
            self.emit("load", t, base, off)
            return t
        if isinstance(node, ast.List):
            items = [self.expr(e) for e in node.elts]
            p = self.allocate(Const(len(items)))
            for i, o in enumerate(items):
                if not (isinstance(o, Const) and o.value == 0):
                    self.emit("store", None, p, self.const(i + 1), o)
            return p
        if isinstance(node, ast.Call):
            name = node.func.id
            if name == "len":
                o = self.expr(node.args[0])
                t = self.new()
                self.emit("load", t, o, Const(0))
                return t
            if name in ("min", "max"):
                acc = self.expr(node.args[0])
                for a in node.args[1:]:
                    acc = self.arith(name, acc, self.expr(a))
                return acc
            args = [self.expr(a) for a in node.args]
            for i, o in enumerate(args):
                self.emit("mov", XReg(i), o)
            self.emit("call", callee=name, nargs=len(args))
            t = self.new()
            self.emit("mov", t, XReg(0))
            return t
        raise CompileError.at(node, f"internal error: cannot lower {type(node).__name__}")
