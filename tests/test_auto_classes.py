"""The Auto classes load an NCLlama folder with trust_remote_code: from a local folder, from a Hub cache layout
offline, and in a fresh environment that has only torch, transformers and safetensors (not this package)."""
import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import torch

from modeling_nclama import standard_library
from modeling_nclama.modeling_nclama import NCLlamaForCausalLM
from modeling_nclama.toolchain.tokenization import default_tokenizer, reader_tokens

RUNTIME_FILES = {"configuration_nclama.py", "modeling_nclama.py", "heads.py", "calls.py", "mixture.py", "tracing.py",
                 "library.py", "machine.py", "machine_loop.py", "program.py", "ops.py", "reader.py"}
PROMPT = "What is 81273 plus 4406?"

LOAD_AND_PRINT = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
where = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(where, trust_remote_code=True).eval()
tok = AutoTokenizer.from_pretrained(where, trust_remote_code=True)  # AutoTokenizer reads config.json (its auto_map) first
with torch.no_grad():
    logits = model(**tok(sys.argv[2], return_tensors="pt")).logits
print(json.dumps({"class": type(model).__name__, "library": len(model.library.names), "logits": logits[0, -1, :16].tolist()}))
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory, make_llama):
    tok = default_tokenizer()
    model = NCLlamaForCausalLM.from_llama(make_llama(tok), standard_library(256), reader_tokens=reader_tokens(tok))
    folder = tmp_path_factory.mktemp("nclama")
    model.eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    with torch.no_grad():
        logits = model(**tok(PROMPT, return_tensors="pt")).logits[0, -1, :16]
    return folder, logits


def run(python, folder, env=None):
    out = subprocess.run([str(python), "-c", LOAD_AND_PRINT, str(folder), PROMPT], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, cwd="/", timeout=600, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_folder_has_the_runtime_files_and_auto_map(saved):
    folder, _ = saved
    files = {p.name for p in folder.iterdir()}
    assert RUNTIME_FILES <= files and {"library.json", "library.safetensors", "model.safetensors"} <= files
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == "modeling_nclama.NCLlamaForCausalLM"
    assert auto_map["AutoConfig"] == "configuration_nclama.NCLlamaConfig"
    # the runtime imports only torch, transformers and what transformers itself requires, safetensors, and its own
    # files; numba where it is installed (inside a try block, which transformers' check of a repo's imports skips)
    allowed = {"torch", "transformers", "safetensors", "huggingface_hub", "numpy", "__future__"} | set(sys.stdlib_module_names)
    for name in RUNTIME_FILES:
        tree = ast.parse((folder / name).read_text())
        optional = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for b in t.body for n in ast.walk(b)}
        for node in ast.walk(tree):
            if id(node) in optional and isinstance(node, ast.Import) and [a.name for a in node.names] == ["numba"]:
                continue
            if isinstance(node, ast.ImportFrom) and node.level:
                assert f"{node.module}.py" in RUNTIME_FILES, (name, node.module)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                assert all(m.split(".")[0] in allowed for m in modules), (name, modules)
    from transformers.dynamic_module_utils import get_imports

    # what transformers requires installed before it runs a repo's code: numba is not among it
    assert not {"numba"} & {m for name in RUNTIME_FILES for m in get_imports(str(folder / name))}


def test_auto_model_from_a_local_folder(saved):
    folder, logits = saved
    got = run(sys.executable, folder)
    assert got["class"] == "NCLlamaForCausalLM" and got["library"] == len(json.loads((folder / "library.json").read_text())["programs"])
    assert torch.allclose(torch.tensor(got["logits"]), logits, atol=1e-5)


def hub_cache(folder: Path, root: Path, repo: str = "org/nclama-tiny") -> Path:
    """The layout huggingface_hub keeps: models--org--name/{blobs, snapshots/<commit>/, refs/main}."""
    base = root / ("models--" + repo.replace("/", "--"))
    commit = hashlib.sha1(repo.encode()).hexdigest()
    snapshot = base / "snapshots" / commit
    (base / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        blob = base / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, blob)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    return root


def test_auto_model_from_the_hub_cache_offline(saved, tmp_path):
    folder, logits = saved
    cache = hub_cache(folder, tmp_path / "hub")
    got = run(sys.executable, "org/nclama-tiny", env={"HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")})
    assert got["class"] == "NCLlamaForCausalLM"
    assert torch.allclose(torch.tensor(got["logits"]), logits, atol=1e-5)


@pytest.mark.timeout(900)
def test_fresh_environment_without_this_package(saved, tmp_path):
    folder, logits = saved
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    import transformers
    import safetensors
    subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0", f"transformers=={transformers.__version__}",
                    f"safetensors=={safetensors.__version__}"], check=True, capture_output=True, timeout=900)
    missing = subprocess.run([str(python), "-c", "import modeling_nclama"], capture_output=True, cwd="/")
    assert missing.returncode != 0  # the package itself is not there
    cache = hub_cache(folder, tmp_path / "hub")
    got = run(python, "org/nclama-tiny", env={"HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home"), "PYTHONPATH": ""})
    assert got["class"] == "NCLlamaForCausalLM"
    assert torch.allclose(torch.tensor(got["logits"]), logits, atol=1e-5)
