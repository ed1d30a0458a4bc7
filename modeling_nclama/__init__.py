"""NCLlama: a LLaMA decoder with a library of algorithms compiled into a differentiable computer.

The runtime is the flat modules here, what a Hub repo carries (``ops``, ``program``, ``machine``, ``library``,
``reader``, ``configuration_nclama``, ``modeling_nclama``): it imports only torch, transformers, safetensors and the
standard library, and loads libraries; it never imports the toolchain. The toolchain (``toolchain/``: the compiler,
the standard library's source, tasks, training, evaluation, export, benchmarks, the CLI) makes libraries and models;
its compiling entry points are exported here, imported on first use.
"""
from .library import BatchResult, Library, LibraryError, Trace
from .machine import Machine, MachineError
from .program import Instruction, Program, ProgramError


_TOOLCHAIN = ("CompileError", "compile_library", "standard_library")


def __getattr__(name: str):
    if name in _TOOLCHAIN:  # imported on first use: the runtime never needs the toolchain
        from .toolchain import compiler

        return getattr(compiler, name)
    raise AttributeError(f"module 'modeling_nclama' has no attribute {name!r}")


__all__ = [
    "BatchResult", "CompileError", "Instruction", "Library", "LibraryError", "Machine", "MachineError", "Program",
    "ProgramError", "Trace", "compile_library", "standard_library",
]
