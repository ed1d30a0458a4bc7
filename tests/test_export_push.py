"""nclama export and nclama push: a complete Hub repo folder, uploaded with huggingface_hub to the local Hub double,
then loaded back through the Auto classes from that endpoint."""
import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from hub_double import HubDouble, pointed_at
from modeling_nclama.toolchain.cli import main
from modeling_nclama.modeling_nclama import NCLlamaForCausalLM

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")
RUNTIME = {"configuration_nclama.py", "modeling_nclama.py", "library.py", "machine.py", "program.py", "ops.py", "reader.py"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    assert main(["init", "--preset", "tiny", "-o", str(root / "model")]) == 0
    rows = [{"task": "add", "length": 10, "exact_match": 0.995, "n": 200}, {"task": "add", "split": "heldout", "length": 3, "exact_match": 0.98},
            {"task": "add", "length": 3, "exact_match": 0.9, "n": 50, "form": "chat"}]
    (root / "model" / "eval_results.json").write_text(json.dumps({"rows": rows}))
    chat = {"n": 2, "computable_exact_match": 0.5, "wrong_with_gate_open": 1, "form": "chat",
            "cases": {"negative_results": {"n": 2, "computable": 2, "exact_match": 0.5, "wrong_with_gate_open": 1}}}
    (root / "model" / "adversarial_chat_results.json").write_text(json.dumps(chat))
    assert main(["export", str(root / "model"), "-o", str(root / "hub"), "--repo-id", "org/nclama-tiny"]) == 0
    return root / "hub"


def test_the_folder_is_a_complete_hub_repo(exported):
    files = {p.name for p in exported.iterdir()}
    assert RUNTIME | {"config.json", "model.safetensors", "library.json", "library.safetensors", "tokenizer.json",
                      "generation_config.json", "README.md"} <= files
    assert not {"cli.py", "bench.py", "analysis.py", "stdlib.py"} & files  # the toolchain stays home
    card = (exported / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert "nclama" in meta["tags"] and meta["license"] == "apache-2.0"
    assert "| add | train | plain | 10 | 200 | 99.5% |" in card and "| add | heldout | plain | 3 |  | 98.0% |" in card
    assert "| add | train | chat | 3 | 50 | 90.0% |" in card  # the chat-template rows apart from the plain ones
    assert "(`configuration/adversarial.jsonl`, 2 prompts, asked in the chat template): exact match 50.0%" in card
    assert "| negative_results | 2 | 2 | 50.0% | 1 |" in card and "adversarial_chat_results.json" in files
    assert 'from_pretrained("org/nclama-tiny", trust_remote_code=True)' in card


def test_push_then_load_from_the_hub(exported, tmp_path, monkeypatch, capsys, isolated_hf_home):
    with HubDouble() as hub, pointed_at(hub.endpoint):
        assert main(["push", str(exported), "--repo-id", "org/nclama-tiny", "--token", "wrong"]) == 2
        assert "token" in capsys.readouterr().err.lower()
        assert main(["push", str(exported), "--repo-id", "org/nclama-tiny", "--private", "--token", hub.token]) == 0
        assert "pushed" in capsys.readouterr().out
        monkeypatch.setenv("HF_TOKEN", hub.token)
        remote = AutoModelForCausalLM.from_pretrained("org/nclama-tiny", trust_remote_code=True, cache_dir=tmp_path / "c").eval()
        tok = AutoTokenizer.from_pretrained("org/nclama-tiny", trust_remote_code=True, cache_dir=tmp_path / "c")
        assert not hub.unhandled
    local = NCLlamaForCausalLM.from_pretrained(exported).eval()
    batch = tok(["What is 81273 plus 4406?"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(remote(**batch).logits, local(**batch).logits, atol=1e-6)
    assert remote.library.fingerprint() == local.library.fingerprint()


def test_a_plain_llama_baseline_exports_with_its_own_card(tmp_path, make_llama):
    from modeling_nclama.toolchain.tokenization import default_tokenizer

    tok = default_tokenizer()
    make_llama(tok).save_pretrained(tmp_path / "baseline")
    tok.save_pretrained(tmp_path / "baseline")
    (tmp_path / "baseline" / "eval_results.json").write_text(json.dumps({"rows": [{"task": "add", "length": 40, "exact_match": 0.0}]}))
    assert main(["export", str(tmp_path / "baseline"), "-o", str(tmp_path / "hub"), "--repo-id", "org/llama-tiny-baseline"]) == 0
    files = {p.name for p in (tmp_path / "hub").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "eval_results.json"} <= files
    assert not RUNTIME & files  # a plain LLaMA needs no remote code
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "| add | train | plain | 40 |  | 0.0% |" in card and "trust_remote_code" not in card


def test_additions_only_then_join_gives_the_full_export(tmp_path, make_llama, std, capsys):
    """The additions round trip on a tiny base (the SmolLM2 one is in test_smollm2_export.py): only the heads are
    stored, the join with the base is the full export byte for byte, and another base is refused."""
    from safetensors.torch import load_file

    from modeling_nclama.toolchain.tokenization import default_tokenizer, reader_tokens

    tok = default_tokenizer()
    for name, seed in (("base", 0), ("other_base", 1)):
        make_llama(tok, seed=seed).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    model = NCLlamaForCausalLM.from_llama(str(tmp_path / "base"), std, reader_tokens=reader_tokens(tok))
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    base = str(tmp_path / "base")
    repo = ["--repo-id", "org/nclama-on-a-tiny-llama"]  # the card's name; the join takes it from the additions folder
    assert main(["export", str(tmp_path / "model"), "--base", base, "-o", str(tmp_path / "full"), *repo]) == 0
    assert main(["export", str(tmp_path / "model"), "--additions-only", "--base", base, "-o", str(tmp_path / "add"), *repo]) == 0
    assert "wrote the additions folder" in capsys.readouterr().out
    stored = load_file(tmp_path / "add" / "nclama_additions.safetensors")
    assert stored and all(name.startswith("nc_heads.") for name in stored)
    assert not {"model.safetensors", "modeling_nclama.py"} & {p.name for p in (tmp_path / "add").iterdir()}
    assert main(["export", str(tmp_path / "add"), "--base", base, "-o", str(tmp_path / "joined")]) == 0
    full = {p.name: p.read_bytes() for p in (tmp_path / "full").iterdir()}
    joined = {p.name: p.read_bytes() for p in (tmp_path / "joined").iterdir()}
    assert joined == full and "model.safetensors" in joined
    capsys.readouterr()
    assert main(["export", str(tmp_path / "add"), "--base", str(tmp_path / "other_base"), "-o", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err
    assert "is not the base of" in error and "a LLaMA folder without provenance" in error
    assert not (tmp_path / "x").exists()
