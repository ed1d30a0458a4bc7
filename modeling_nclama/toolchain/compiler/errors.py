"""Errors of the neural compiler.

Every problem with the user's source (syntax, unsupported constructs, types, calls, constants that do not fit in a
value, resource limits) is reported as a :class:`CompileError` carrying the 1-based line and column of the offending
construct, with a message of the form ``"line 3, column 5: unsupported syntax: lambda"``.
"""
from __future__ import annotations

import ast


class CompileError(ValueError):
    """The source cannot be compiled. ``line`` and ``col`` are 1-based; ``reason`` is the message without position."""

    def __init__(self, reason: str, line: int = 1, col: int = 1):
        self.reason = reason
        self.line = int(line or 1)
        self.col = int(col or 1)
        super().__init__(f"line {self.line}, column {self.col}: {reason}")

    @classmethod
    def at(cls, node: ast.AST | None, reason: str) -> "CompileError":
        """An error positioned at an AST node (its ``lineno`` and 0-based ``col_offset``)."""
        line = getattr(node, "lineno", 1) if node is not None else 1
        col = getattr(node, "col_offset", 0) + 1 if node is not None else 1
        return cls(reason, line, col)


def unsupported(node: ast.AST, construct: str) -> CompileError:
    """``unsupported syntax: <construct>`` at ``node``."""
    return CompileError.at(node, f"unsupported syntax: {construct}")
