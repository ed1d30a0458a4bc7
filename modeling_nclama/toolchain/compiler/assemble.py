"""Pass 4: assemble allocated functions into :class:`program.Program` objects (one-hot logits).

What this pass adds: the library-wide cell layout. Every program of a library shares ``num_registers`` locals
(default: the most any function needs, at least 1) and ``num_args`` argument cells, so the final cell indices of
argument registers and constants are fixed here; then ``program.assemble`` turns the instructions into one-hot
logits of the given ``sharpness``. ``Program.source`` is the function's own source text; ``Program.meta`` records
``registers`` (locals the function needs), ``lines``, ``consts`` and the source ``lineno``.
"""
from __future__ import annotations

from typing import Optional

from ... import program
from .allocate import AllocatedFunction
from .errors import CompileError


def library_registers(functions: list[AllocatedFunction]) -> int:
    return max([1] + [fn.num_registers for fn in functions])


def assemble_functions(
    functions: list[AllocatedFunction],
    *,
    value_size: int,
    num_registers: Optional[int] = None,
    num_args: int = 4,
    sharpness: float = program.DEFAULT_SHARPNESS,
) -> list[program.Program]:
    if num_registers is None:
        num_registers = library_registers(functions)
    if num_registers < 0:
        raise CompileError(f"num_registers must be >= 0, got {num_registers}")
    out = []
    for fn in functions:
        if fn.num_registers > num_registers:
            raise CompileError(
                f"function {fn.name!r} needs {fn.num_registers} registers, but num_registers = {num_registers}",
                fn.lineno,
                1,
            )
        if len(fn.params) > num_args:
            raise CompileError(
                f"function {fn.name!r} has {len(fn.params)} parameters, more than num_args = {num_args}", fn.lineno, 1
            )
        for v in fn.consts:
            if not 0 <= v < value_size:
                raise CompileError(f"constant {v} of {fn.name!r} does not fit in a value (V = {value_size})", fn.lineno)
        instructions = fn.instructions(num_registers, num_args)
        weights = program.assemble(
            instructions,
            fn.consts,
            num_registers=num_registers,
            num_args=num_args,
            num_callees=len(fn.callees),
            value_size=value_size,
            sharpness=sharpness,
        )
        meta = dict(fn.meta)
        meta["lineno"] = fn.lineno
        out.append(
            program.Program(
                name=fn.name,
                params=list(fn.params),
                returns=fn.returns,
                callees=list(fn.callees),
                num_registers=num_registers,
                num_args=num_args,
                value_size=value_size,
                weights=weights,
                source=fn.source,
                meta=meta,
            )
        )
    return out
