"""The neural compiler: Python source (a small subset) -> :class:`program.Program` objects.

Passes, one module each (in the spirit of DeepMind Tracr's ``compiler/``):

  ``parse``     source -> validated, typed AST (:class:`parse.ParsedModule`); CompileError on anything unsupported
  ``lower``     typed AST -> assembly IR with virtual registers and labels (:class:`lower.IRFunction`)
  ``optimize``  IR -> IR: local CSE / value numbering (loads too, until a store or call), copy propagation,
                constant and address folding, dead code elimination (fewer executed lines, same results)
  ``allocate``  IR -> physical cells, resolved jumps, constant pools (:class:`allocate.AllocatedFunction`)
  ``assemble``  -> ``program.Program`` (one-hot logits with a set sharpness) sharing one cell layout

``compile_source`` runs them all. ``compile_to_ir`` / ``compile_allocated`` stop early (for inspection and tests).
Each takes ``optimize=False`` to skip the ``optimize`` pass (to see or measure what ``lower`` alone gives).
"""
from __future__ import annotations

from typing import Optional

from ... import program
from ...library import Library
from ...program import DEFAULT_SHARPNESS
from .allocate import AllocatedFunction, allocate_function
from .assemble import assemble_functions
from .errors import CompileError
from .lower import IRFunction, format_ir, lower_module
from .optimize import optimize_function
from .parse import parse_source

__all__ = [
    "CompileError", "compile_library", "compile_source", "compile_to_ir", "compile_allocated", "format_ir",
    "standard_library", "stdlib_source",
]


def _guard(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except RecursionError:
        raise CompileError("source nested too deeply") from None


def compile_to_ir(source: str, *, value_size: int, num_args: int = 4, optimize: bool = True) -> list[IRFunction]:
    def run():
        functions = lower_module(parse_source(source, value_size=value_size), num_args=num_args)
        if optimize:
            functions = [optimize_function(f, value_size=value_size, num_args=num_args) for f in functions]
        return functions

    return _guard(run)


def compile_allocated(
    source: str, *, value_size: int, num_args: int = 4, optimize: bool = True
) -> list[AllocatedFunction]:
    if num_args < 1:
        raise CompileError(f"num_args must be >= 1 (x0 carries results), got {num_args}")

    def run():
        functions = compile_to_ir(source, value_size=value_size, num_args=num_args, optimize=optimize)
        return [allocate_function(f, num_args=num_args) for f in functions]

    return _guard(run)


def compile_source(
    source: str,
    *,
    value_size: int,
    num_registers: Optional[int] = None,
    num_args: int = 4,
    sharpness: float = program.DEFAULT_SHARPNESS,
    optimize: bool = True,
) -> list[program.Program]:
    """Compile every function of ``source`` (in source order) into programs sharing one cell layout.

    ``num_registers`` defaults to the most locals any function needs; ``num_args`` is the number of argument cells
    (a function with more parameters is a CompileError). Raises :class:`CompileError` (with ``line``/``col``) on
    anything outside the supported subset; never executes the source.
    """
    if not isinstance(value_size, int) or value_size < 2:
        raise CompileError(f"value_size must be an int >= 2, got {value_size!r}")
    functions = compile_allocated(source, value_size=value_size, num_args=num_args, optimize=optimize)
    return assemble_functions(
        functions, value_size=value_size, num_registers=num_registers, num_args=num_args, sharpness=sharpness
    )


def stdlib_source() -> str:
    """The text of ``modeling_nclama/toolchain/stdlib.py`` (read, not imported)."""
    from pathlib import Path

    return (Path(__file__).resolve().parent.parent / "stdlib.py").read_text()



def compile_library(source: str, value_size: int = 256, *, sharpness: float = DEFAULT_SHARPNESS, **settings) -> Library:
    """Compile every function of ``source`` (Python text; never executed) into a :class:`Library` (``settings``:
    its ``memory_size``, ``stack_depth``, ``max_steps``)."""
    return Library(compile_source(source, value_size=value_size, sharpness=sharpness), **settings)


def standard_library(value_size: int = 256, **settings) -> Library:
    """The standard library (``modeling_nclama/toolchain/stdlib.py``), compiled."""
    return compile_library(stdlib_source(), value_size, **settings)
