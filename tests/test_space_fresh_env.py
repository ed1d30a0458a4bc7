"""The Space folder deploys unchanged: a fresh environment built from space/requirements.txt alone serves a copy of
the folder standing on its own, with the models from a Hub cache (offline), as on a Hugging Face Space."""
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import gradio_client
import pytest
import yaml
from space_server import serve, space_module, stop

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "space"
REQUIREMENTS = SPACE / "requirements.txt"
HUB_REPOS = {"nclama/nclama-tiny": ROOT / "hub_assets" / "nclama-tiny",
             "nclama/llama-tiny-baseline": ROOT / "hub_assets" / "llama-tiny-baseline"}


def front_matter() -> dict:
    text = (SPACE / "README.md").read_text()
    return yaml.safe_load(re.match(r"---\n(.*?)\n---\n", text, re.S).group(1))


def pinned(package: str) -> str:
    return re.search(rf"^{package}==(\S+)$", REQUIREMENTS.read_text(), re.M).group(1)


def test_the_space_card_matches_the_requirements_and_the_settings():
    settings = space_module("settings")
    card = front_matter()
    assert card["sdk"] == "gradio" and card["sdk_version"] == pinned("gradio")
    assert (SPACE / card["app_file"]).is_file() and card["license"] == "apache-2.0" and card["title"]
    assert card["models"] == [settings.HUB_MODEL, settings.HUB_BASELINE] and set(card["models"]) == set(HUB_REPOS)


def hub_cache(home: Path) -> None:
    """The shipped model folders as the Hub cache holds a downloaded repo (models--org--name/snapshots/<rev>/)."""
    for repo_id, folder in HUB_REPOS.items():
        revision = hashlib.sha1(repo_id.encode()).hexdigest()
        repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
        snapshot = repo / "snapshots" / revision
        snapshot.mkdir(parents=True)
        for file in folder.iterdir():
            (snapshot / file.name).symlink_to(file)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(revision)


@pytest.mark.timeout(900)
def test_the_space_runs_from_its_requirements_alone(tmp_path):
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip(f"not a git checkout, so the requirements' git URL cannot point at it: {head.stderr.strip()}")
    git_url = re.search(r"@ git\+(\S+)", REQUIREMENTS.read_text()).group(1)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("NCLAMA_")}
    # The project comes from its git URL, as on a Space; git reads that URL as this checkout (its committed HEAD),
    # whoever owns it (a CI checkout may belong to another user than the one running the tests).
    install_env = {**env, "GIT_CONFIG_COUNT": "2", "GIT_CONFIG_KEY_0": f"url.{ROOT.as_uri()}.insteadOf",
                   "GIT_CONFIG_VALUE_0": git_url, "GIT_CONFIG_KEY_1": "safe.directory", "GIT_CONFIG_VALUE_1": "*"}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # pip from the test environment installs into the new one (--python): no pip bootstrap, no .pyc compilation.
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile",
         "-r", str(REQUIREMENTS)],
        env=install_env, capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    version = subprocess.run([str(python), "-c", "import gradio; print(gradio.__version__)"], capture_output=True,
                             text=True, check=True)
    assert version.stdout.strip() == front_matter()["sdk_version"]

    app = tmp_path / "app"  # the Space repo: this folder and nothing around it
    shutil.copytree(SPACE, app, ignore=shutil.ignore_patterns("__pycache__"))
    hub_cache(tmp_path / "hf")
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    process, url = serve([str(python), "app.py"], app, env, tmp_path / "space.log")
    try:
        client = gradio_client.Client(url, verbose=False)
        answer, trace = client.predict("81273+4406=", 24, api_name="/generate")
        assert answer == "85679" and trace["tokens"][0]["calls"][0]["program"] == "long_add"
        baseline, library_off = client.predict("81273+4406=", 24, api_name="/compare")
        assert baseline and library_off
        text, run = client.predict("def sq(n):\n    return n * n\n", "sq(12)", "hard", 100, api_name="/compile")
        assert run["result"] == 144
    finally:
        stop(process)
    # the model's runtime came with its Hub repo (trust_remote_code), not from the project
    assert list((tmp_path / "hf" / "modules" / "transformers_modules").glob("nclama*/**/modeling_nclama.py"))
