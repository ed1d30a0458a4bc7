"""Every code block of the README works as written, in a scratch folder that sees the shipped folders (what the
blocks write goes to its out/): the Python blocks run in order (the gradio_client block needs a running Space:
tests/test_space.py runs it against one); every command of the bash blocks is a valid `nclama` command whose inputs
exist on a fresh checkout or are written by a command before it, and the quick ones run."""
import re
import shlex
from pathlib import Path

import pytest

from modeling_nclama.toolchain.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README.read_text(), re.S)
OUTPUT_FLAGS = ("-o", "--output", "--output-dir", "--out")
# Commands that finish in seconds: run for real where their inputs are there (the others train, evaluate hundreds of
# prompts or need a network)
QUICK = ("compile", "run", "disasm", "init", "export")


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    for name in ("hub_assets", "configuration"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def commands() -> list[list[str]]:
    """The README's shell commands, in order, as argument lists (environment assignments dropped)."""
    out = []
    for language, block in BLOCKS:
        if language != "bash":
            continue
        for line in block.splitlines():
            for part in line.split(" ; "):
                words = shlex.split(part, comments=True)
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words = words[1:]
                if words:
                    out.append(words)
    return out


def nclama_arguments(words: list[str]) -> list[str] | None:
    """The arguments of an `nclama` command (also run as `python -m` or under torchrun), else None."""
    if words[0] == "nclama":
        return words[1:]
    if "modeling_nclama.toolchain.cli" in words:
        return words[words.index("modeling_nclama.toolchain.cli") + 1:]
    return None


def test_the_python_blocks_run_in_order(scratch):
    blocks = [block for language, block in BLOCKS if language == "python" and "gradio_client" not in block]
    assert len(blocks) == sum(1 for language, _ in BLOCKS if language == "python") - 1
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    lib, mine = namespace["lib"], namespace["mine"]  # the tour: the values its comments promise
    assert lib.run("gcd", 12, 18) == 6 and lib.run("gcd", 12, 18, mode="soft") == 6
    assert lib.run("insertion_sort", [5, 3, 9]) == [3, 5, 9]
    assert mine.run("triangle", 10) == 55
    assert namespace["value"] == 8 and len(namespace["trace"].steps) > 0
    assert (scratch / "out" / "stdlib" / "library.json").is_file()
    for block in blocks[1:]:
        exec(compile(block, "README.md", "exec"), namespace)
    assert (scratch / "out" / "my-nclama" / "library.json").is_file()
    assert (scratch / "out" / "nclama-ft" / "model.safetensors").is_file()
    assert {row["task"] for row in namespace["rows"]} == {"add", "sort"}


def test_every_shell_command_is_valid_and_finds_its_inputs(scratch, capsys):
    parser = build_parser()
    written: set[str] = set()
    checked = ran = 0
    for words in commands():
        if words[0] in ("make", "export"):  # the README's own test and demo commands; a shell setting
            continue
        arguments = nclama_arguments(words)
        assert arguments is not None, f"not an nclama command: {' '.join(words)}"
        parser.parse_args(arguments)  # exits (failing the test) on an unknown command, flag or value
        for i, word in enumerate(arguments):
            if i and arguments[i - 1] in OUTPUT_FLAGS:
                written.add(word)
                continue
            path = word.split("=", 1)[-1]
            if path.startswith(("out/", "hub_assets/", "configuration/")):
                assert (ROOT / path).exists() or path in written, f"{path} ({' '.join(words)}) exists nowhere yet"
        checked += 1
        inputs = [w.split("=", 1)[-1] for i, w in enumerate(arguments) if not (i and arguments[i - 1] in OUTPUT_FLAGS)]
        made = all((scratch / p).exists() for p in inputs if p.startswith("out/"))  # not by a command that only parsed
        if arguments[0] in QUICK and made:
            assert main(arguments) == 0, f"{' '.join(words)}: {capsys.readouterr().err[-2000:]}"
            ran += 1
    assert checked >= 25 and ran >= 7
    assert (scratch / "out" / "mylib" / "library.json").is_file() and (scratch / "out" / "tiny-hub" / "README.md").is_file()
