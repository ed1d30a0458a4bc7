"""Program forms: softening for training, hardening back, and reassembly."""
import math

import torch

from modeling_nclama.program import Instruction
from modeling_nclama import standard_library


def test_soften_keeps_the_argmax_and_hardened_restores_the_exact_program():
    lib = standard_library(64)
    for program in lib.programs:
        soft = program.soften(4.0)
        assert soft.instructions() == program.instructions() and soft.consts() == program.consts()
        for name, w in soft.weights.items():
            if w.numel():
                assert torch.isfinite(w).all(), name
                assert (w.amax(-1, keepdim=True) - w).max() <= 4.0
        hard = soft.hardened()
        for name, w in hard.weights.items():
            assert torch.equal(w, program.weights[name]), (program.name, name)


def test_with_instructions_changes_one_line():
    gcd = standard_library(64)["gcd"]
    listing = gcd.instructions()
    line = next(i for i, ins in enumerate(listing) if ins.op == "mod")
    listing[line] = Instruction("floordiv", listing[line].dst, listing[line].a, listing[line].b)
    changed = gcd.with_instructions(listing)
    assert [i.op for i in changed.instructions()].count("floordiv") == 1
    assert changed.weights["op"][line].max() == 0 and changed.weights["op"][line].min() == -math.inf


def test_assembly_round_trips_the_number_kinds():
    import pytest

    from modeling_nclama.program import ProgramError
    from modeling_nclama.toolchain.assembly import parse_assembly

    lib = standard_library(64)
    for name, header in [("long_gcd", "def long_gcd(a: tape, b: tape) -> tape"),
                         ("sum_numbers", "def sum_numbers(xs: numbers) -> tape"),
                         ("reverse", "def reverse(xs: list) -> list")]:
        program = lib[name]
        text = program.assembly()
        assert text.splitlines()[0] == header
        back = parse_assembly(text, num_registers=program.num_registers, num_args=program.num_args, value_size=64)
        assert (back.params, back.returns) == (program.params, program.returns) and back.assembly() == text
    text = lib["long_gcd"].assembly()
    with pytest.raises(ProgramError, match="kind 'digits'"):
        parse_assembly(text.replace("b: tape", "b: digits", 1), num_registers=lib.machine.num_registers,
                       num_args=lib.machine.num_args, value_size=64)
    with pytest.raises(ProgramError, match="line 1"):
        parse_assembly(text.replace("-> tape", "-> digits", 1), num_registers=lib.machine.num_registers,
                       num_args=lib.machine.num_args, value_size=64)
