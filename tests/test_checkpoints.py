"""nclama init: a freshly initialized model folder from a preset."""
import json

import pytest
import torch
from transformers import AutoTokenizer

from modeling_nclama.toolchain.cli import main
from modeling_nclama.modeling_nclama import NCLlamaForCausalLM


def test_init_tiny_makes_a_complete_folder(tmp_path, capsys):
    assert main(["init", "--preset", "tiny", "-o", str(tmp_path)]) == 0
    assert "initialized tiny" in capsys.readouterr().out
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "library.json", "library.safetensors", "modeling_nclama.py"} <= files
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "nclama" and config["hidden_size"] == 128 and "long_add" in config["nc_programs"]
    tok = AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=True)
    assert config["eos_token_id"] == tok.eos_token_id and len(tok) == config["vocab_size"]
    model = NCLlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert model.library is not None and model.config.nc_library_fingerprint == model.library.fingerprint()
    with torch.no_grad():
        logits = model(**tok("7!=", return_tensors="pt")).logits
    assert logits.shape[-1] == config["vocab_size"] and torch.isfinite(logits).all()


@pytest.mark.parametrize("argv, message", [
    (["init", "--preset", "nope", "-o", "x"], "unknown preset 'nope' (known: llama-3.2-1b, small, tiny)"),
    (["init", "--preset", "llama-3.2-1b", "-o", "x"], "preset llama-3.2-1b has vocab_size 128256"),
])
def test_init_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
