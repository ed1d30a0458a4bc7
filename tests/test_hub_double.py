"""The toolchain's Hub push (real huggingface_hub client) against the local Hub double (tests/hub_double.py).

In-process tests point the imported huggingface_hub at the double with ``pointed_at`` (it patches
``huggingface_hub.constants``); one subprocess test uses the plain ``HF_ENDPOINT`` / ``HF_HUB_DISABLE_XET``
environment variables, read by huggingface_hub at import. Every test runs with a temporary HF_HOME and cache and no
token in the environment, so nothing of the developer's own Hub setup leaks in.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError
from safetensors.torch import save_file

from hub_double import HubDouble, hub_double, pointed_at
from modeling_nclama.toolchain.hub import HubPushError, push_folder

# huggingface_hub's own LFS single-part PUT passes a file object as `data=`; httpx2 deprecates that. Not ours.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

HEX40 = re.compile(r"^[0-9a-f]{40}$")
REPO = "nclama-org/nclama-tiny"


@pytest.fixture
def hf_env(tmp_path, monkeypatch):
    """A clean Hugging Face environment: temporary HF_HOME / HF_HUB_CACHE, no token anywhere."""
    home = tmp_path / "hf_home"
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return home


@pytest.fixture
def hub(hf_env):
    with HubDouble() as double, pointed_at(double.endpoint):
        yield double
    assert not double.unhandled, f"requests the double does not implement: {double.unhandled}"


def make_folder(path: Path, *, scale: float = 1.0, readme: str = "---\nlicense: mit\n---\n# tiny\n") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "nclama", "hidden_size": 8, "scale": scale}))
    save_file({"w": torch.arange(12, dtype=torch.float32).reshape(3, 4) * scale}, str(path / "model.safetensors"))
    (path / "README.md").write_text(readme)
    return path


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_push_then_snapshot_download_roundtrip(hub, tmp_path):
    folder = make_folder(tmp_path / "model")
    (folder / "sub").mkdir()
    (folder / "sub" / "notes.txt").write_text("nested file")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.pyc").write_bytes(b"junk")

    result = push_folder(folder, REPO, token=hub.token, commit_message="first upload")
    assert HEX40.match(result.oid)
    assert result == f"{hub.endpoint}/{REPO}/commit/{result.oid}"

    cache = tmp_path / "cache"
    snap = Path(snapshot_download(REPO, cache_dir=cache))
    got = local_files(snap)
    want = {k: v for k, v in local_files(folder).items() if not k.startswith("__pycache__")}
    assert {k: got[k] for k in want} == want
    assert set(got) == set(want) | {".gitattributes"}  # the Hub seeds .gitattributes at repo creation

    # Hub cache layout: models--org--name/{blobs, snapshots/<40-hex>/, refs/main}
    storage = cache / "models--nclama-org--nclama-tiny"
    assert snap == storage / "snapshots" / result.oid
    assert (storage / "refs" / "main").read_text() == result.oid
    assert (storage / "blobs").is_dir() and len(list((storage / "blobs").iterdir())) == len(got)
    st_blob = (snap / "model.safetensors").resolve()
    assert st_blob.parent == (storage / "blobs").resolve()
    assert st_blob.name == hub.repo(REPO).commits[result.oid].files["model.safetensors"].lfs_sha256

    # Weights went through LFS (sha256 in the tree listing), config.json as a regular git blob.
    tree = {f.path: f for f in HfApi().list_repo_tree(REPO, recursive=True) if hasattr(f, "size")}
    assert tree["model.safetensors"].lfs is not None and tree["config.json"].lfs is None
    assert any("/info/lfs/objects/batch" in r for r in hub.requests)
    assert HfApi().list_repo_commits(REPO)[0].title == "first upload"

    # Offline, from the cache only.
    path = hf_hub_download(REPO, "config.json", cache_dir=cache, local_files_only=True)
    assert Path(path).read_bytes() == (folder / "config.json").read_bytes()


def test_push_twice_makes_second_commit_and_downloads_latest(hub, tmp_path):
    folder = make_folder(tmp_path / "model")
    first = push_folder(folder, REPO, token=hub.token)
    cache = tmp_path / "cache"
    snapshot_download(REPO, cache_dir=cache)

    make_folder(folder, scale=2.0)
    second = push_folder(folder, REPO, token=hub.token, commit_message="second")
    assert HEX40.match(second.oid) and second.oid != first.oid
    history = [c.commit_id for c in HfApi().list_repo_commits(REPO)]
    assert history[:2] == [second.oid, first.oid] and len(history) == 3  # + the repo's initial commit

    snap = Path(snapshot_download(REPO, cache_dir=cache))
    assert snap.name == second.oid
    assert (snap / "config.json").read_bytes() == (folder / "config.json").read_bytes()
    assert (snap / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert (cache / "models--nclama-org--nclama-tiny" / "refs" / "main").read_text() == second.oid
    # The first snapshot is still there, with its own bytes.
    old = json.loads((cache / "models--nclama-org--nclama-tiny" / "snapshots" / first.oid / "config.json").read_text())
    assert old["scale"] == 1.0

    # Unchanged folder: huggingface_hub skips every file, no commit is made, the head is returned.
    again = push_folder(folder, REPO, token=hub.token)
    assert again.oid == second.oid


def test_push_to_branch_and_read_it_back(hub, tmp_path):
    main = push_folder(make_folder(tmp_path / "main"), REPO, token=hub.token)
    dev_folder = make_folder(tmp_path / "dev", scale=3.0)
    dev = push_folder(dev_folder, REPO, token=hub.token, revision="dev")
    assert dev.revision == "dev" and dev.oid != main.oid

    refs = {b.name: b.target_commit for b in HfApi().list_repo_refs(REPO).branches}
    assert refs == {"main": main.oid, "dev": dev.oid}

    cache = tmp_path / "cache"
    snap = Path(snapshot_download(REPO, revision="dev", cache_dir=cache))
    assert snap.name == dev.oid
    assert local_files(snap)["model.safetensors"] == (dev_folder / "model.safetensors").read_bytes()
    assert (cache / "models--nclama-org--nclama-tiny" / "refs" / "dev").read_text() == dev.oid
    main_cfg = hf_hub_download(REPO, "config.json", cache_dir=cache)  # main is untouched
    assert json.loads(Path(main_cfg).read_text())["scale"] == 1.0

    # A second push to the existing branch reuses it (create_branch exist_ok).
    make_folder(dev_folder, scale=4.0)
    dev2 = push_folder(dev_folder, REPO, token=hub.token, revision="dev")
    assert HfApi().list_repo_commits(REPO, revision="dev")[1].commit_id == dev.oid
    assert dev2.oid != dev.oid


def test_private_flag_is_recorded(hub, tmp_path):
    folder = make_folder(tmp_path / "model")
    push_folder(folder, "nclama-org/secret", token=hub.token, private=True)
    push_folder(folder, "nclama-org/open", token=hub.token)
    assert HfApi(token=hub.token).model_info("nclama-org/secret").private is True
    assert HfApi().model_info("nclama-org/open").private is False
    with pytest.raises(RepositoryNotFoundError):  # private repos are invisible without the token
        snapshot_download("nclama-org/secret", cache_dir=tmp_path / "anon")
    snap = snapshot_download("nclama-org/secret", cache_dir=tmp_path / "authed", token=hub.token)
    assert (Path(snap) / "config.json").read_bytes() == (folder / "config.json").read_bytes()


def test_wrong_or_missing_token_is_refused_clearly(hub, tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "model")
    with pytest.raises(HubPushError) as wrong:
        push_folder(folder, REPO, token="hf_not_the_right_one")
    message = str(wrong.value)
    assert "refused the token" in message and "401" in message
    assert "HF_TOKEN" in message and "hf auth login" in message
    assert not hub.repos  # nothing was created

    with pytest.raises(HubPushError, match=r"No Hugging Face token found.*HF_TOKEN.*hf auth login"):
        push_folder(folder, REPO)

    # The protocol itself: writes need the bearer token.
    with pytest.raises(Exception) as raw:
        HfApi(token=False).create_repo(REPO)
    assert "401" in str(raw.value)

    monkeypatch.setenv("HF_TOKEN", hub.token)  # the environment is a token source too
    assert HEX40.match(push_folder(folder, REPO).oid)


def test_folder_checks(hub, tmp_path):
    with pytest.raises(HubPushError, match="does not exist"):
        push_folder(tmp_path / "nope", REPO, token=hub.token)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    with pytest.raises(HubPushError, match="model.safetensors is missing"):
        push_folder(bare, REPO, token=hub.token)
    (bare / "config.json").unlink()
    (bare / "notes.txt").write_text("hi")
    with pytest.raises(HubPushError, match="config.json and model.safetensors are missing"):
        push_folder(bare, REPO, token=hub.token)
    assert HEX40.match(push_folder(bare, REPO, token=hub.token, require_model_files=False).oid)
    with pytest.raises(HubPushError, match="namespace/name"):
        push_folder(bare, "no-namespace", token=hub.token, require_model_files=False)


def test_multipart_lfs_upload(hf_env, tmp_path):
    with HubDouble(multipart_chunk_size=100) as double, pointed_at(double.endpoint):
        folder = make_folder(tmp_path / "model")
        size = (folder / "model.safetensors").stat().st_size
        assert size > 100
        result = push_folder(folder, REPO, token=double.token)
        parts = [r for r in double.requests if r.startswith("PUT /__lfs__/") and "/part/" in r]
        assert len(parts) == -(-size // 100)
        path = hf_hub_download(REPO, "model.safetensors", revision=result.oid, cache_dir=tmp_path / "c")
        assert Path(path).read_bytes() == (folder / "model.safetensors").read_bytes()
        assert not double.unhandled


def test_transformers_from_pretrained(hub, tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(config)
    folder = tmp_path / "llama"
    model.save_pretrained(folder)
    push_folder(folder, "nclama-org/tiny-llama", token=hub.token)

    loaded = AutoModelForCausalLM.from_pretrained("nclama-org/tiny-llama", cache_dir=tmp_path / "cache")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_env_var_route_in_a_subprocess(hf_env, tmp_path):
    """A fresh process that only sees HF_ENDPOINT / HF_HUB_DISABLE_XET / HF_TOKEN (as a user's shell would)."""
    folder = make_folder(tmp_path / "model")
    script = (
        "import sys\n"
        "from huggingface_hub import constants, snapshot_download\n"
        "from modeling_nclama.toolchain.hub import push_folder\n"
        "assert constants.ENDPOINT == sys.argv[1] and constants.HF_HUB_DISABLE_XET\n"
        "r = push_folder(sys.argv[2], 'nclama-org/from-env')\n"
        "print(r.oid, snapshot_download('nclama-org/from-env'))\n"
    )
    with hub_double() as (endpoint, token):
        env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": token,
               "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        out = subprocess.run([sys.executable, "-c", script, endpoint, str(folder)], env=env, capture_output=True,
                             text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    oid, snap = out.stdout.split()[-2:]
    assert HEX40.match(oid) and Path(snap).name == oid
    assert Path(snap).is_relative_to(hf_env / "hub")
    assert (Path(snap) / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
