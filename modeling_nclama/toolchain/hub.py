"""Toolchain: push a model folder (weights, config, code, library artifacts) to the Hugging Face Hub.

This is the real ``huggingface_hub`` API (``create_repo`` + ``create_branch`` + ``upload_folder``); it never touches
the runtime. Tests run it against the local Hub double in ``tests/hub_double.py`` (``HF_ENDPOINT`` or the
``endpoint`` argument, with ``HF_HUB_DISABLE_XET=1``).
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["HubPushError", "PushResult", "push_folder"]

DEFAULT_COMMIT_MESSAGE = "Upload NCLlama model"
# Never worth publishing; huggingface_hub already skips .git/ and .cache/huggingface/.
IGNORE_PATTERNS = ["__pycache__", "__pycache__/*", "**/__pycache__/**", "*.pyc", ".DS_Store", "**/.DS_Store"]
MODEL_FILES = ("config.json", "model.safetensors")
TOKEN_HELP = (
    "A Hub token comes from, in this order: the `token` argument (CLI: --token), the HF_TOKEN environment variable, "
    "or the token saved by `hf auth login`. It needs write access to the target namespace."
)


class HubPushError(RuntimeError):
    """A push that cannot start (bad folder, no token) or that the Hub refused (bad token, no permission)."""


class PushResult(str):
    """The URL of the new commit (a ``str``), with ``oid`` (40-hex commit sha), ``repo_id``, ``revision``."""

    oid: str
    repo_id: str
    revision: str

    def __new__(cls, url: str, *, oid: str, repo_id: str, revision: str) -> "PushResult":
        obj = super().__new__(cls, url)
        obj.oid, obj.repo_id, obj.revision = oid, repo_id, revision
        return obj


def _check_folder(folder: Path, require_model_files: bool) -> None:
    if not folder.exists():
        raise HubPushError(f"Cannot push {folder}: the folder does not exist.")
    if not folder.is_dir():
        raise HubPushError(f"Cannot push {folder}: it is a file, not a folder (push the folder that holds it).")
    if not any(p.is_file() for p in folder.rglob("*")):
        raise HubPushError(f"Cannot push {folder}: the folder holds no files.")
    if require_model_files:
        missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
        if missing:
            raise HubPushError(
                f"Cannot push {folder}: it is not a complete model folder, {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} missing (write it with `model.save_pretrained(folder)`; "
                "pass require_model_files=False to push another kind of folder)."
            )


def _resolve_token(token: str | None) -> str:
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()  # HF_TOKEN, then the token stored by `hf auth login`
    if not found:
        raise HubPushError(f"No Hugging Face token found: pushing needs one. {TOKEN_HELP}")
    return found


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    require_model_files: bool = True,
    repo_type: str = "model",
    endpoint: str | None = None,
) -> PushResult:
    """Create ``repo_id`` if needed (``private`` applies only to a new repo), create branch ``revision`` from
    ``main`` if it is given and missing, and upload every file of ``folder`` (except caches) in one commit.

    Returns the commit URL (a ``str``) with ``.oid`` the commit sha. ``endpoint`` defaults to ``HF_ENDPOINT``
    (https://huggingface.co). Files identical to the ones already on the branch are skipped by huggingface_hub;
    if nothing changed, no commit is made and the branch head is returned.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder).expanduser()
    _check_folder(folder, require_model_files)
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise HubPushError(f"repo_id must look like 'namespace/name', got {repo_id!r}.")
    token = _resolve_token(token)
    api = HfApi(endpoint=endpoint, token=token)
    branch = revision or "main"
    step = "create the repo"
    try:
        repo_url = api.create_repo(
            repo_id, private=private, exist_ok=True, repo_type=repo_type,
            space_sdk="gradio" if repo_type == "space" else None,
        )
        if branch != "main":
            step = f"create branch {branch!r}"
            api.create_branch(repo_id, branch=branch, exist_ok=True, repo_type=repo_type)
        step = "upload the folder"
        info = api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, repo_type=repo_type, revision=branch,
            commit_message=commit_message, ignore_patterns=list(IGNORE_PATTERNS),
        )
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise HubPushError(
                f"The Hub at {api.endpoint} refused the token while trying to {step} for {repo_id} "
                f"(HTTP {status}: {e.server_message or e}). {TOKEN_HELP}"
            ) from e
        raise HubPushError(f"Could not {step} for {repo_id} at {api.endpoint}: {e}") from e
    return PushResult(info.commit_url, oid=info.oid, repo_id=getattr(repo_url, "repo_id", repo_id), revision=branch)
