"""The nclama command: compile, run, disasm, and its errors."""
import json
from pathlib import Path

import pytest

from modeling_nclama import Library, standard_library
from modeling_nclama.toolchain.cli import main

SOURCE = """
def triangle(n):
    total = 0
    for i in range(n + 1):
        total += i
    return total


def twice_triangle(n):
    return triangle(n) + triangle(n)
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    (folder / "algos.py").write_text(SOURCE)
    assert main(["compile", str(folder / "algos.py"), "-o", str(folder / "lib"), "--value-size", "128"]) == 0
    return folder / "lib"


def test_compile_writes_a_loadable_library(compiled):
    lib = Library.load(compiled)
    assert lib.names == ["triangle", "twice_triangle"]
    assert lib.value_size == 128
    assert json.loads((compiled / "library.json").read_text())["value_size"] == 128


def test_compile_from_the_standard_manifest(tmp_path, capsys):
    manifest = Path(__file__).resolve().parents[1] / "configuration" / "libraries" / "standard.json"
    assert main(["compile", str(manifest), "-o", str(tmp_path), "--value-size", "128"]) == 0
    lib = Library.load(tmp_path)
    assert lib.value_size == 128 and lib.machine.stack_depth == 32 and "fib_tape" in lib
    assert lib.run("fib_tape", 30) == 832040  # a tape result, read back as the number


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_run_prints_the_result(compiled, capsys, mode):
    assert main(["run", str(compiled), "twice_triangle", "10", "--mode", mode]) == 0
    assert capsys.readouterr().out.strip() == "110"


def test_run_std_with_lists_and_trace(capsys):
    assert main(["run", "std", "insertion_sort", "[5,3,9,1]"]) == 0
    assert capsys.readouterr().out.strip() == "[1, 3, 5, 9]"
    assert main(["run", "std", "gcd", "84", "36", "--trace"]) == 0
    out = capsys.readouterr().out
    last = out.rstrip().splitlines()[-1]
    assert last.startswith("gcd(84, 36) = 12   [")
    steps = int(last.split("[")[1].split()[0])
    rows = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == steps == standard_library(256).run_batch("gcd", [(84, 36)]).steps[0]
    assert "mod" in out


def test_run_list_without_brackets(capsys):
    assert main(["run", "std", "max_list", "5,3,9,1"]) == 0
    assert capsys.readouterr().out.strip() == "9"


def test_disasm_shows_source_and_assembly(capsys):
    assert main(["disasm", "std", "gcd"]) == 0
    out = capsys.readouterr().out
    assert "def gcd(a, b):" in out and "def gcd(a: int, b: int) -> int" in out and "ret" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "std", "gcd", "300", "2"], "outside [0, 256)"),
        (["run", "std", "nope", "1"], "no program 'nope'"),
        (["run", "std", "gcd", "1"], "takes 2 arguments"),
        (["run", "std", "gcd", "12", "18", "--max-steps", "3"], "did not halt within 3 steps"),
        (["run", "/nonexistent/lib", "gcd", "1", "2"], "does not exist"),
    ],
)
def test_errors_are_clear(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_compile_error_names_line_and_column(tmp_path, capsys):
    (tmp_path / "bad.py").write_text("def f(a):\n    return a.real\n")
    assert main(["compile", str(tmp_path / "bad.py"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "line 2, column 12" in err and "attribute" in err
    assert not (tmp_path / "out").exists()


def test_bad_argument_syntax_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["run", "std", "gcd", "1.5", "2"])
    assert "not an int or a list of ints" in capsys.readouterr().err
