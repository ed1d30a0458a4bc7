"""NCLlama: a LLaMA decoder with a library of algorithms compiled into a differentiable computer.

The runtime (what a Hub repo carries: ops, program, machine, library, and the model files) imports only torch,
transformers, safetensors and the standard library. The toolchain (compiler, standard library source, CLI,
benchmarks, analysis) sits beside it and is imported lazily.
"""
from .library import BatchResult, Library, LibraryError, Trace
from .machine import Machine, MachineError
from .program import Instruction, Program, ProgramError


def __getattr__(name: str):
    if name == "CompileError":  # toolchain: imported on first use, so the runtime never needs it
        from .compiler import CompileError

        return CompileError
    raise AttributeError(f"module 'modeling_nclama' has no attribute {name!r}")


__all__ = [
    "BatchResult", "CompileError", "Instruction", "Library", "LibraryError", "Machine", "MachineError", "Program",
    "ProgramError", "Trace",
]
