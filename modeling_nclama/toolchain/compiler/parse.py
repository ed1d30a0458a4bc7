"""Pass 1: parse, validate and type-check.

Input: Python source text. Output: a :class:`ParsedModule`: the validated ``ast`` of every top-level function, in
source order, with its signature (parameter names and types, return type), the type of every local, and its own
source text. The source is only parsed with :mod:`ast`; it is never executed or imported.

What this pass adds: the guarantee that every later pass sees only the supported subset, and types.

Supported subset
  * top-level ``def``\\ s (a module docstring is allowed); positional parameters only, optionally annotated
    ``int``, ``bool``, ``list`` or ``list[int]`` (return annotations likewise); docstrings are ignored. The string
    annotations ``"tape"`` and ``"numbers"`` declare lists that mean numbers to the outside world: ``"tape"``, a
    signed integer of any length, ``[sign, d0, d1, ...]`` (sign 0, or 1 for negative, then base-10 digits least
    significant first), and ``"numbers"``, a list of such integers packed flat, ``[w, s0, d..., s1, d...]`` (``w``
    digits per item, each item a record of ``w + 1`` cells). They type as lists; the declared kind goes into the
    signature (``FunctionInfo.params`` / ``returns``) for the runtime (``Library.run`` converts Python ints to them
    and back). Unannotated lists, ``list`` and ``list[int]`` stay ``"list"``.
  * values are ints in ``[0, V)`` or lists of ints (a list value is the address of its length cell).
  * statements: ``=`` (to a name, ``xs[i]``, or a tuple of those: ``a, b = b, a``), augmented assignment
    (``+= -= *= //= %=``), annotated assignment, ``if/elif/else``, ``while``, ``for i in range(...)`` (1 to 3
    arguments; the step is a nonzero constant, possibly negative; a negative stop is only allowed as ``-1`` with a
    negative step), ``for x in xs``, ``break``, ``continue``, ``return``, ``pass``, calls as statements.
  * expressions: int constants (``0 <= c < V``), ``True``/``False``, names, ``+ - * // %``, comparisons
    (``< <= > >= == !=``, chained), ``and or not`` (Python semantics), ``a if c else b``, ``len(xs)``, ``xs[i]``,
    ``min(...)``/``max(...)`` (2 or more ints), ``[a, b, c]``, ``[v] * n``, calls to functions of the same source
    (recursion included).
Everything else raises :class:`CompileError` naming the construct, with its line and column.

Types: a name is a list if it is assigned a list, subscripted, passed to ``len``, annotated ``list``, or flows to or
from a list (parameter, return value, another list name); otherwise it is an int. Types are solved with union-find
over all functions at once, so a call may precede the callee's definition. Lists are never truthy/falsy values
(``if xs:`` is rejected: a list is an address), and list elements are ints.
"""
from __future__ import annotations

import ast
import warnings
from dataclasses import dataclass, field

from .errors import CompileError, unsupported

INT, LIST = "int", "list"
# Kinds a parameter or result may declare. "tape" and "numbers" are lists on the machine (typed LIST here); the
# declared kind only goes into the signature, for the runtime to convert numbers at the boundary.
TAPE, NUMBERS = "tape", "numbers"
NUMBER_KINDS = (TAPE, NUMBERS)
KINDS = (INT, LIST, TAPE, NUMBERS)
BUILTINS = ("len", "min", "max", "range")
BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.FloorDiv: "floordiv", ast.Mod: "mod"}
CMPOPS = {ast.Lt: "lt", ast.LtE: "le", ast.Gt: "gt", ast.GtE: "ge", ast.Eq: "eq", ast.NotEq: "ne"}
_OP_TEXT = {
    ast.Pow: "**", ast.Div: "/ (use //)", ast.MatMult: "@", ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|",
    ast.BitXor: "^", ast.BitAnd: "&", ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in",
    ast.Invert: "~", ast.UAdd: "unary +", ast.USub: "unary minus",
}
_CONSTRUCTS = {
    "Lambda": "lambda", "ClassDef": "class definition", "Import": "import", "ImportFrom": "import",
    "Global": "global statement", "Nonlocal": "nonlocal statement", "With": "with statement",
    "AsyncWith": "async with", "Try": "try statement", "TryStar": "try statement", "Raise": "raise statement",
    "Assert": "assert statement", "Delete": "del statement", "ListComp": "list comprehension",
    "SetComp": "set comprehension", "DictComp": "dict comprehension", "GeneratorExp": "generator expression",
    "Dict": "dict", "Set": "set", "Tuple": "tuple", "Attribute": "attribute access", "Slice": "slicing",
    "Starred": "starred expression", "JoinedStr": "f-string", "FormattedValue": "f-string", "Yield": "yield",
    "YieldFrom": "yield from", "Await": "await", "NamedExpr": "assignment expression (:=)",
    "AsyncFunctionDef": "async function", "AsyncFor": "async for", "Match": "match statement",
    "FunctionDef": "nested function definition", "TypeAlias": "type alias",
}


def construct_name(node: ast.AST) -> str:
    name = type(node).__name__
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, str):
            return "string constant"
        if isinstance(value, bytes):
            return "bytes constant"
        if value is None:
            return "None"
        if value is Ellipsis:
            return "ellipsis (...)"
        return f"{type(value).__name__} constant {value!r}"
    return _CONSTRUCTS.get(name, name)


@dataclass
class FunctionInfo:
    """One validated function: its AST, signature, the type of every local, and its source text."""

    name: str
    node: ast.FunctionDef
    params: list[tuple[str, str]]
    returns: str
    local_types: dict[str, str]
    source: str = ""

    @property
    def lineno(self) -> int:
        return self.node.lineno


@dataclass
class ParsedModule:
    source: str
    value_size: int
    functions: list[FunctionInfo] = field(default_factory=list)

    def function(self, name: str) -> FunctionInfo:
        for fn in self.functions:
            if fn.name == name:
                return fn
        raise KeyError(name)


class _Types:
    """Union-find over type variables; a class may be pinned to ``int`` or ``list``."""

    def __init__(self):
        self.parent: list[int] = []
        self.kind: list[str | None] = []
        self.desc: list[str] = []

    def new(self, desc: str, kind: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.kind.append(kind)
        self.desc.append(desc)
        return len(self.parent) - 1

    def find(self, v: int) -> int:
        while self.parent[v] != v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def resolved(self, v: int) -> str:
        return self.kind[self.find(v)] or INT

    def require(self, v: int, kind: str, node: ast.AST, what: str) -> None:
        root = self.find(v)
        have = self.kind[root]
        if have is None:
            self.kind[root] = kind
        elif have != kind:
            raise CompileError.at(node, f"type error: {what} must be {_a(kind)} here, but {self.desc[root]} is {_a(have)}")

    def unify(self, a: int, b: int, node: ast.AST, what: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        ka, kb = self.kind[ra], self.kind[rb]
        if ka and kb and ka != kb:
            raise CompileError.at(
                node, f"type error: {what}: {self.desc[ra]} is {_a(ka)} but {self.desc[rb]} is {_a(kb)}"
            )
        self.parent[rb] = ra
        self.kind[ra] = ka or kb


def _a(kind: str) -> str:
    return "an int" if kind == INT else "a list"


def _annotation_kind(node: ast.AST | None) -> str | None:
    """The machine type (``int`` or ``list``) an annotation pins, or None without one."""
    declared = declared_kind(node)
    if declared is None:
        return None
    return INT if declared == INT else LIST


def declared_kind(node: ast.AST | None) -> str | None:
    """The kind an annotation declares: ``int``, ``list``, or one of the number kinds of ``NUMBER_KINDS`` (string
    annotations ``"tape"``, ``"numbers"``: lists on the machine, numbers to the outside world); None without one."""
    if node is None:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        if node.value in KINDS:
            return node.value
        raise CompileError.at(
            node, f"unsupported syntax: type annotation {node.value!r} (use int, list[int], \"tape\" or \"numbers\")"
        )
    if isinstance(node, ast.Name) and node.id in ("int", "bool"):
        return INT
    if isinstance(node, ast.Name) and node.id in ("list", "List"):
        return LIST
    if (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id in ("list", "List")
        and isinstance(node.slice, ast.Name)
        and node.slice.id in ("int", "bool")
    ):
        return LIST
    raise unsupported(node, f"type annotation {ast.unparse(node)!r} (use int, list[int], \"tape\" or \"numbers\")")


def _signature_kind(declared: str | None, resolved: str) -> str:
    """A number kind as declared (the type check made it a list); otherwise the solved machine type."""
    return declared if declared in NUMBER_KINDS else resolved


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def negative_constant(node: ast.AST) -> int | None:
    """``-c`` for an int constant ``c`` (``-1`` -> -1), else None."""
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Constant)
        and type(node.operand.value) is int
    ):
        return -node.operand.value
    return None


def range_step(call: ast.Call) -> int:
    """The (validated) constant step of a ``range(...)`` call."""
    if len(call.args) < 3:
        return 1
    node = call.args[2]
    neg = negative_constant(node)
    if neg is not None:
        return neg
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    raise unsupported(node, "range step that is not an int constant")


def parse_source(source: str, *, value_size: int) -> ParsedModule:
    """Parse, validate and type ``source``; raise :class:`CompileError` on anything outside the subset."""
    if not isinstance(source, str):
        raise CompileError("source must be a str")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. SyntaxWarning: invalid escape sequence
            tree = ast.parse(source)
    except SyntaxError as e:
        raise CompileError(f"syntax error: {e.msg}", e.lineno or 1, e.offset or 1) from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as e:
        raise CompileError(f"syntax error: {e}") from None
    module = ParsedModule(source, value_size)
    defs: list[ast.FunctionDef] = []
    for i, stmt in enumerate(tree.body):
        if isinstance(stmt, ast.FunctionDef):
            defs.append(stmt)
        elif i == 0 and _is_docstring(stmt):
            continue
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            raise unsupported(stmt, "global variable")
        elif isinstance(stmt, ast.Expr):
            raise unsupported(stmt, "top-level expression")
        elif isinstance(stmt, (ast.Import, ast.ImportFrom, ast.ClassDef, ast.AsyncFunctionDef)):
            raise unsupported(stmt, construct_name(stmt))
        else:
            raise unsupported(stmt, f"top-level {construct_name(stmt)}")
    if not defs:
        raise CompileError("no function definitions in the source", 1, 1)
    types = _Types()
    sigs: dict[str, tuple[list[int], int, ast.FunctionDef]] = {}
    declared: dict[str, tuple[list[str | None], str | None]] = {}
    for d in defs:
        if d.name in BUILTINS:
            raise CompileError.at(d, f"function name {d.name!r} shadows a builtin")
        if d.name in sigs:
            raise CompileError.at(d, f"function {d.name!r} is defined twice")
        if d.decorator_list:
            raise unsupported(d.decorator_list[0], "decorator")
        if getattr(d, "type_params", None):
            raise unsupported(d, "type parameters")
        a = d.args
        if a.posonlyargs:
            raise unsupported(a.posonlyargs[0], "positional-only parameter")
        if a.vararg:
            raise unsupported(a.vararg, "*args parameter")
        if a.kwonlyargs:
            raise unsupported(a.kwonlyargs[0], "keyword-only parameter")
        if a.kwarg:
            raise unsupported(a.kwarg, "**kwargs parameter")
        if a.defaults:
            raise unsupported(a.defaults[0], "default argument value")
        names = [p.arg for p in a.args]
        for p in a.args:
            if names.count(p.arg) > 1:
                raise CompileError.at(p, f"duplicate parameter {p.arg!r}")
        ptvs, pkinds = [], []
        for p in a.args:
            tv = types.new(f"parameter {p.arg!r} of {d.name}()")
            kind = _annotation_kind(p.annotation)
            if kind:
                types.require(tv, kind, p, f"parameter {p.arg!r}")
            ptvs.append(tv)
            pkinds.append(declared_kind(p.annotation))
        rtv = types.new(f"the return value of {d.name}()")
        rkind = _annotation_kind(d.returns)
        if rkind:
            types.require(rtv, rkind, d.returns, f"the return value of {d.name}()")
        sigs[d.name] = (ptvs, rtv, d)
        declared[d.name] = (pkinds, declared_kind(d.returns))
    checkers = [_FunctionChecker(d, sigs, types, value_size) for d in defs]
    for c in checkers:
        c.check()
    for c in checkers:
        d = c.node
        ptvs, rtv, _ = sigs[d.name]
        pkinds, rkind = declared[d.name]
        module.functions.append(
            FunctionInfo(
                name=d.name,
                node=d,
                params=[(p.arg, _signature_kind(k, types.resolved(tv))) for p, tv, k in zip(d.args.args, ptvs, pkinds)],
                returns=_signature_kind(rkind, types.resolved(rtv)),
                local_types={n: types.resolved(tv) for n, tv in c.locals.items()},
                source=ast.get_source_segment(source, d) or "",
            )
        )
    return module


class _FunctionChecker:
    """Validates one function body and adds its type constraints."""

    def __init__(self, node: ast.FunctionDef, sigs, types: _Types, value_size: int):
        self.node, self.sigs, self.types, self.V = node, sigs, types, value_size
        ptvs, self.rtv, _ = sigs[node.name]
        self.locals: dict[str, int] = {p.arg: tv for p, tv in zip(node.args.args, ptvs)}
        for p in node.args.args:
            self._check_local_name(p.arg, p)
        self._collect(node.body)

    # -- locals -------------------------------------------------------------------------------------------------
    def _check_local_name(self, name: str, node: ast.AST) -> None:
        if name in self.sigs:
            raise CompileError.at(node, f"unsupported syntax: shadowing the function name {name!r}")
        if name in BUILTINS:
            raise CompileError.at(node, f"unsupported syntax: shadowing the builtin {name!r}")

    def _declare(self, target: ast.AST) -> None:
        if isinstance(target, ast.Name):
            self._check_local_name(target.id, target)
            if target.id not in self.locals:
                self.locals[target.id] = self.types.new(f"{target.id!r} in {self.node.name}()")
        elif isinstance(target, ast.Tuple):
            for elt in target.elts:
                self._declare(elt)

    def _collect(self, body: list[ast.stmt]) -> None:
        for s in body:
            if isinstance(s, ast.Assign):
                for t in s.targets:
                    self._declare(t)
            elif isinstance(s, (ast.AugAssign, ast.AnnAssign)):
                self._declare(s.target)
            elif isinstance(s, ast.For):
                self._declare(s.target)
            for name in ("body", "orelse"):
                sub = getattr(s, name, None)
                if isinstance(sub, list) and not isinstance(s, (ast.FunctionDef, ast.ClassDef)):
                    self._collect([x for x in sub if isinstance(x, ast.stmt)])

    # -- statements ---------------------------------------------------------------------------------------------
    def check(self) -> None:
        body = self.node.body
        if body and _is_docstring(body[0]):
            body = body[1:]
        self.block(body, loop=0)

    def block(self, body: list[ast.stmt], loop: int) -> None:
        for s in body:
            self.stmt(s, loop)

    def stmt(self, s: ast.stmt, loop: int) -> None:
        T = self.types
        if isinstance(s, ast.Pass):
            return
        if isinstance(s, ast.Expr):
            if _is_docstring(s):
                return
            if not isinstance(s.value, ast.Call):
                raise unsupported(s, "expression statement (only calls may stand alone)")
            self.expr(s.value)
            return
        if isinstance(s, ast.Assign):
            if len(s.targets) != 1:
                raise unsupported(s, "chained assignment (a = b = c)")
            target = s.targets[0]
            if isinstance(target, ast.Tuple):
                if not isinstance(s.value, ast.Tuple):
                    raise unsupported(s.value, "tuple unpacking of a non-tuple value")
                if len(target.elts) != len(s.value.elts):
                    raise CompileError.at(s, "tuple assignment with mismatched lengths")
                values = [self.expr(v) for v in s.value.elts]
                for t, v, vnode in zip(target.elts, values, s.value.elts):
                    if isinstance(t, ast.Tuple):
                        raise unsupported(t, "nested tuple assignment")
                    self.assign_target(t, v, vnode)
                return
            self.assign_target(target, self.expr(s.value), s.value)
            return
        if isinstance(s, ast.AnnAssign):
            if not isinstance(s.target, ast.Name):
                raise unsupported(s.target, "annotated assignment to a non-name")
            kind = _annotation_kind(s.annotation)
            tv = self.locals[s.target.id]
            T.require(tv, kind, s.annotation, f"{s.target.id!r}")
            if s.value is not None:
                self.assign_target(s.target, self.expr(s.value), s.value)
            return
        if isinstance(s, ast.AugAssign):
            if type(s.op) not in BINOPS:
                raise unsupported(s, f"operator {_OP_TEXT.get(type(s.op), type(s.op).__name__)}=")
            value = self.expr(s.value)
            T.require(value, INT, s.value, "the right side of an augmented assignment")
            if isinstance(s.target, ast.Name):
                T.require(self.locals[s.target.id], INT, s.target, f"{s.target.id!r}")
            elif isinstance(s.target, ast.Subscript):
                self.subscript(s.target)
            else:
                raise unsupported(s.target, f"augmented assignment to {construct_name(s.target)}")
            return
        if isinstance(s, ast.If):
            self.cond(s.test)
            self.block(s.body, loop)
            self.block(s.orelse, loop)
            return
        if isinstance(s, ast.While):
            if s.orelse:
                raise unsupported(s.orelse[0], "while-else")
            self.cond(s.test)
            self.block(s.body, loop + 1)
            return
        if isinstance(s, ast.For):
            if s.orelse:
                raise unsupported(s.orelse[0], "for-else")
            if not isinstance(s.target, ast.Name):
                raise unsupported(s.target, f"for loop target {construct_name(s.target)} (use a single name)")
            self.for_iter(s.iter)
            T.require(self.locals[s.target.id], INT, s.target, f"the loop variable {s.target.id!r}")
            self.block(s.body, loop + 1)
            return
        if isinstance(s, (ast.Break, ast.Continue)):
            if not loop:
                raise CompileError.at(s, f"'{type(s).__name__.lower()}' outside a loop")
            return
        if isinstance(s, ast.Return):
            if s.value is None:
                T.require(self.rtv, INT, s, f"the return value of {self.node.name}()")
            else:
                T.unify(self.rtv, self.expr(s.value), s.value, f"return value of {self.node.name}()")
            return
        raise unsupported(s, construct_name(s))

    def assign_target(self, target: ast.AST, value: int, vnode: ast.AST) -> None:
        if isinstance(target, ast.Name):
            self.types.unify(self.locals[target.id], value, vnode, f"assignment to {target.id!r}")
        elif isinstance(target, ast.Subscript):
            self.subscript(target)
            self.types.require(value, INT, vnode, "a list item")
        else:
            raise unsupported(target, f"assignment to {construct_name(target)}")

    def for_iter(self, it: ast.AST) -> None:
        T = self.types
        if isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range":
            if it.keywords:
                raise unsupported(it.keywords[0], "keyword argument")
            if not 1 <= len(it.args) <= 3:
                raise CompileError.at(it, f"range() takes 1 to 3 arguments, got {len(it.args)}")
            for a in it.args:
                if isinstance(a, ast.Starred):
                    raise unsupported(a, "starred argument")
            step = range_step(it)
            if step == 0:
                raise CompileError.at(it.args[2], "range() step must not be zero")
            if abs(step) >= self.V:
                raise CompileError.at(it.args[2], f"constant {abs(step)} does not fit in a value (V = {self.V})")
            args = list(it.args)
            if len(args) >= 2:
                neg = negative_constant(args[1])
                if neg is not None:
                    if not (neg == -1 and step < 0):
                        raise CompileError.at(
                            args[1], f"unsupported range stop {neg}: values are unsigned (only -1, with a negative step)"
                        )
                    args[1] = None
            for a in args[:2]:
                if a is not None:
                    T.require(self.expr(a), INT, a, "a range() argument")
            return
        if isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id not in self.sigs:
            raise unsupported(it, f"for loop over {it.func.id}(...) (only range(...) or a list)")
        if isinstance(it, (ast.Name, ast.Call, ast.List, ast.BinOp, ast.IfExp)):
            T.require(self.expr(it), LIST, it, "a for loop's iterable")
            return
        raise unsupported(it, f"for loop over {construct_name(it)}")

    # -- expressions --------------------------------------------------------------------------------------------
    def cond(self, node: ast.AST) -> None:
        self.types.require(self.expr(node), INT, node, "a condition (lists have no truth value here)")

    def const(self, node: ast.Constant) -> int:
        value = node.value
        if isinstance(value, bool):
            return int(value)
        if type(value) is not int:
            raise unsupported(node, construct_name(node))
        if not 0 <= value < self.V:
            raise CompileError.at(node, f"constant {value} does not fit in a value (V = {self.V})")
        return value

    def subscript(self, node: ast.Subscript) -> int:
        if isinstance(node.slice, ast.Slice):
            raise unsupported(node.slice, "slicing")
        if isinstance(node.slice, ast.Tuple):
            raise unsupported(node.slice, "tuple index")
        self.types.require(self.expr(node.value), LIST, node.value, "a subscripted value")
        self.types.require(self.expr(node.slice), INT, node.slice, "an index")
        return self.types.new("a list item", INT)

    def expr(self, node: ast.AST) -> int:
        T = self.types
        if isinstance(node, ast.Constant):
            self.const(node)
            return T.new("a constant", INT)
        if isinstance(node, ast.Name):
            if node.id in self.locals:
                return self.locals[node.id]
            if node.id in self.sigs:
                raise unsupported(node, f"function {node.id!r} used as a value")
            if node.id in BUILTINS:
                raise unsupported(node, f"builtin {node.id!r} used as a value")
            raise CompileError.at(node, f"undefined name {node.id!r}")
        if isinstance(node, ast.BinOp):
            if type(node.op) not in BINOPS:
                raise unsupported(node, f"operator {_OP_TEXT.get(type(node.op), type(node.op).__name__)}")
            if isinstance(node.op, ast.Mult) and (isinstance(node.left, ast.List) or isinstance(node.right, ast.List)):
                lst, n = (node.left, node.right) if isinstance(node.left, ast.List) else (node.right, node.left)
                if len(lst.elts) != 1:
                    raise unsupported(node, "list repetition of a list that does not have exactly one item")
                T.require(self.expr(lst.elts[0]), INT, lst.elts[0], "a list item")
                T.require(self.expr(n), INT, n, "a list length")
                return T.new("a list", LIST)
            for side in (node.left, node.right):
                T.require(self.expr(side), INT, side, f"an operand of {_binop_text(node.op)}")
            return T.new("an arithmetic result", INT)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                T.require(self.expr(node.operand), INT, node.operand, "the operand of 'not'")
                return T.new("a 'not' result", INT)
            neg = negative_constant(node)
            if neg is not None and neg != 0:
                raise CompileError.at(node, f"unsupported syntax: negative constant {neg} (values are unsigned)")
            if neg == 0:
                return T.new("a constant", INT)
            raise unsupported(node, f"operator {_OP_TEXT.get(type(node.op), type(node.op).__name__)}")
        if isinstance(node, ast.BoolOp):
            for v in node.values:
                T.require(self.expr(v), INT, v, "an operand of and/or")
            return T.new("an and/or result", INT)
        if isinstance(node, ast.Compare):
            for op in node.ops:
                if type(op) not in CMPOPS:
                    raise unsupported(node, f"operator {_OP_TEXT.get(type(op), type(op).__name__)}")
            for side in [node.left, *node.comparators]:
                T.require(self.expr(side), INT, side, "a compared value")
            return T.new("a comparison", INT)
        if isinstance(node, ast.IfExp):
            self.cond(node.test)
            a, b = self.expr(node.body), self.expr(node.orelse)
            T.unify(a, b, node, "the branches of a conditional expression")
            return a
        if isinstance(node, ast.Subscript):
            return self.subscript(node)
        if isinstance(node, ast.List):
            for e in node.elts:
                if isinstance(e, ast.Starred):
                    raise unsupported(e, "starred expression")
                T.require(self.expr(e), INT, e, "a list item")
            return T.new("a list", LIST)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise unsupported(node, construct_name(node))

    def call(self, node: ast.Call) -> int:
        T = self.types
        func = node.func
        if isinstance(func, ast.Attribute):
            raise unsupported(node, f"method call {ast.unparse(func)}()")
        if not isinstance(func, ast.Name):
            raise unsupported(node, "call of a computed function")
        name = func.id
        if node.keywords:
            kw = node.keywords[0]
            raise unsupported(kw.value if kw.arg is None else kw, f"keyword argument {kw.arg or '**'}")
        for a in node.args:
            if isinstance(a, ast.Starred):
                raise unsupported(a, "starred argument")
        if name in self.locals:
            raise unsupported(node, f"call of the variable {name!r}")
        if name == "len":
            if len(node.args) != 1:
                raise CompileError.at(node, f"len() takes 1 argument, got {len(node.args)}")
            T.require(self.expr(node.args[0]), LIST, node.args[0], "the argument of len()")
            return T.new("a length", INT)
        if name in ("min", "max"):
            if len(node.args) < 2:
                raise CompileError.at(node, f"{name}() takes 2 or more int arguments, got {len(node.args)}")
            for a in node.args:
                T.require(self.expr(a), INT, a, f"an argument of {name}()")
            return T.new(f"a {name}() result", INT)
        if name == "range":
            raise unsupported(node, "range() outside a for loop header")
        if name not in self.sigs:
            raise unsupported(node, f"unknown function {name!r}")
        ptvs, rtv, d = self.sigs[name]
        if len(node.args) != len(ptvs):
            raise CompileError.at(node, f"{name}() takes {len(ptvs)} argument(s), got {len(node.args)}")
        for a, tv, p in zip(node.args, ptvs, d.args.args):
            T.unify(tv, self.expr(a), a, f"argument {p.arg!r} of {name}()")
        return rtv


def _binop_text(op: ast.operator) -> str:
    return {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "//", ast.Mod: "%"}[type(op)]
