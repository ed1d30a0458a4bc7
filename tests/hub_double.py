"""A local test double of the Hugging Face Hub, for the upload and download protocol of huggingface_hub 2.4.

The Hub is unreachable from where the tests run, so the toolchain's push code (the real ``huggingface_hub`` client)
is tested against this small threaded HTTP server (standard library only). It implements the endpoints that
``HfApi.create_repo``, ``create_branch``, ``upload_folder`` / ``create_commit`` (with ``HF_HUB_DISABLE_XET=1``:
preupload, LFS batch + basic or multipart upload + verify, NDJSON commit), ``model_info`` / ``repo_info``,
``list_repo_tree``, ``get_paths_info``, ``list_repo_refs``, ``list_repo_commits``, ``whoami``, the registry of
``/api/agent-harnesses`` that huggingface_hub 2.4 fetches once per process for its user agent, and the
``/resolve/`` HEAD/GET used by ``hf_hub_download``, ``snapshot_download`` and ``transformers``' ``from_pretrained``.

Repositories live in memory: per repo, branches point at commits, commits hold a full file table (path -> blob),
commit ids are 40-hex sha1 digests, regular-file oids are git blob sha1s and LFS files are stored by sha256 with
their git pointer file's sha1 as oid, the way the Hub reports them.

Auth: every write (create repo, branch, preupload, LFS batch/verify, commit) needs ``Authorization: Bearer <token>``
with the token the double was started with; a missing one gets 401, a wrong one 401 with the Hub's
``Invalid credentials in Authorization header`` message. Reads of public repos need no token; private repos are
invisible (401 ``RepoNotFound``, as on the Hub) without the right token.

Usage::

    with hub_double() as (endpoint, token), pointed_at(endpoint):
        push_folder(folder, "org/name", token=token)
        snapshot_download("org/name", cache_dir=tmp)

``pointed_at`` points the already imported ``huggingface_hub`` at the double (it reads ``HF_ENDPOINT`` at import
time into ``huggingface_hub.constants``) and sets ``HF_ENDPOINT`` / ``HF_HUB_DISABLE_XET`` for subprocesses.
"""
from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["HubDouble", "HubHandle", "hub_double", "pointed_at"]

DEFAULT_USER = "nclama-tester"
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"

# The .gitattributes the Hub writes into every new model repo (abridged): these patterns go to LFS.
LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.mlmodel", "*.model",
    "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth",
    "*.rar", "*.safetensors", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
)
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class Blob:
    """One file at one commit: git oid, size, and (for LFS files) the sha256 of the content in the LFS store."""

    oid: str
    size: int
    lfs_sha256: str | None = None
    content: bytes | None = None  # regular files only; LFS content lives in HubDouble.lfs_store

    def as_tree_entry(self, path: str) -> dict:
        entry: dict = {"type": "file", "oid": self.oid, "size": self.size, "path": path}
        if self.lfs_sha256 is not None:
            entry["lfs"] = {
                "oid": self.lfs_sha256,
                "size": self.size,
                "pointerSize": len(lfs_pointer(self.lfs_sha256, self.size)),
            }
        return entry


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, Blob]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if len(revision) == 40 and revision in self.commits:
            return self.commits[revision]
        return None


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.extra = extra or {}  # more keys for the JSON error body


class HubHandle(NamedTuple):
    endpoint: str
    token: str


class HubDouble:
    """The server. ``with HubDouble() as hub:`` starts it on 127.0.0.1 (a free port) and stops it afterwards.

    Attributes for tests: ``endpoint``, ``token``, ``user``, ``repos`` ((repo_type, repo_id) -> Repo),
    ``lfs_store`` (sha256 -> bytes), ``requests`` (list of "METHOD /path" served), ``unhandled`` (requests that
    matched no endpoint). ``lfs_threshold``: files at least this big go to LFS even without an LFS pattern (the Hub
    uses 10 MB). ``multipart_chunk_size``: LFS objects bigger than this are uploaded in parts of that size.
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        user: str = DEFAULT_USER,
        lfs_threshold: int = 10 * 1024 * 1024,
        multipart_chunk_size: int = 64 * 1024 * 1024,
    ):
        self.token = token or "hf_double_" + secrets.token_hex(12)
        self.user = user
        self.lfs_threshold = lfs_threshold
        self.multipart_chunk_size = multipart_chunk_size
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_store: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.unhandled: list[str] = []
        self._pending_parts: dict[str, dict[int, bytes]] = {}
        self._upload_sig = secrets.token_hex(16)  # "presigned" upload URLs carry this instead of a token
        self._lock = threading.RLock()
        self._commit_counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self.endpoint = ""

    # ----------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> "HubDouble":
        double = self

        class Handler(_Handler):
            hub = double

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="hub-double", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for conn in list(self._connections):  # close kept-alive client connections
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self._connections.clear()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> "HubDouble":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------------- helpers
    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def _auth(self, headers, *, required: bool) -> bool:
        """True if the request carries the right token. Raises 401 for a wrong token, or a missing one if required."""
        value = headers.get("Authorization") or headers.get("authorization")
        if value is None:
            if required:
                raise HubError(
                    401,
                    "This operation needs authentication: send 'Authorization: Bearer <token>' with a write token.",
                )
            return False
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or token.strip() != self.token:
            raise HubError(401, INVALID_CREDENTIALS, headers={"X-Error-Message": INVALID_CREDENTIALS})
        return True

    def _get_repo(self, repo_type: str, repo_id: str, authed: bool) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authed):
            raise HubError(401 if not authed else 404, "Repository not found", "RepoNotFound")
        return repo

    def _commit_for(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _new_commit(self, repo: Repo, parent: Commit | None, files: dict[str, Blob], title: str, message: str):
        self._commit_counter += 1
        tree = "\n".join(f"{p} {b.oid}" for p, b in sorted(files.items()))
        date = _now()
        raw = (
            f"tree {hashlib.sha1(tree.encode()).hexdigest()}\nparent {parent.oid if parent else ''}\n"
            f"author {self.user} {date} {self._commit_counter}\n\n{title}\n\n{message}"
        )
        oid = hashlib.sha1(b"commit %d\0" % len(raw.encode()) + raw.encode()).hexdigest()
        commit = Commit(oid, parent.oid if parent else None, title, message, date, dict(files))
        repo.commits[oid] = commit
        return commit

    def _is_lfs(self, path: str, size: int, sample: bytes) -> bool:
        name = path.rsplit("/", 1)[-1]
        return (
            size >= self.lfs_threshold
            or any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS)
            or (size > 0 and b"\0" in sample)
        )

    def file_bytes(self, blob: Blob) -> bytes:
        if blob.lfs_sha256 is not None:
            return self.lfs_store[blob.lfs_sha256]
        assert blob.content is not None
        return blob.content

    # ----------------------------------------------------------------------------------------------- endpoints
    def create_repo(self, headers, body: dict) -> tuple[int, dict]:
        self._auth(headers, required=True)
        name, org = body.get("name"), body.get("organization") or self.user
        repo_type = body.get("type") or "model"
        if not name or repo_type not in URL_PREFIXES:
            raise HubError(400, "Invalid repo name or type")
        repo_id = f"{org}/{name}"
        url = f"{self.endpoint}/{URL_PREFIXES[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            # The Hub's 409 carries the repo url: create_repo(exist_ok=True) reads it from this error body.
            raise HubError(409, "You already created this model repo", "RepoExists", extra={"url": url})
        repo = Repo(repo_type, repo_id, body.get("visibility") == "private" or bool(body.get("private")), _now())
        initial = Blob(git_blob_sha1(GITATTRIBUTES), len(GITATTRIBUTES), content=GITATTRIBUTES)
        commit = self._new_commit(repo, None, {".gitattributes": initial}, "initial commit", "")
        repo.branches["main"] = commit.oid
        self.repos[(repo_type, repo_id)] = repo
        return 200, {"url": url, "name": repo_id, "id": secrets.token_hex(12)}

    def repo_info(self, repo: Repo, revision: str | None) -> dict:
        commit = self._commit_for(repo, revision or "main")
        author = repo.repo_id.split("/")[0]
        return {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": author,
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        }

    def tree(self, repo: Repo, revision: str, path: str, recursive: bool) -> list[dict]:
        commit = self._commit_for(repo, revision)
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in commit.files):
            raise HubError(404, f"Path {path} not found in {revision}", "EntryNotFound")
        entries: dict[str, dict] = {}
        for p, blob in sorted(commit.files.items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):].split("/")
            for depth in range(1, len(rest)):  # intermediate folders
                folder = prefix + "/".join(rest[:depth])
                if folder not in entries and (recursive or depth == 1):
                    entries[folder] = {"type": "directory", "oid": self._folder_oid(commit, folder), "size": 0,
                                       "path": folder}
                if not recursive:
                    break
            if recursive or len(rest) == 1:
                entries[p] = blob.as_tree_entry(p)
        return [entries[k] for k in sorted(entries)]

    @staticmethod
    def _folder_oid(commit: Commit, folder: str) -> str:
        content = "\n".join(f"{p} {b.oid}" for p, b in sorted(commit.files.items()) if p.startswith(folder + "/"))
        return hashlib.sha1(content.encode()).hexdigest()

    def preupload(self, repo: Repo, revision: str, body: dict) -> dict:
        commit = self._commit_for(repo, revision)
        out = []
        for f in body.get("files", []):
            path, size = f["path"], int(f["size"])
            sample = base64.b64decode(f.get("sample", ""))
            mode = "lfs" if self._is_lfs(path, size, sample) else "regular"
            existing = commit.files.get(path)
            oid = None
            if existing is not None:
                oid = existing.lfs_sha256 if existing.lfs_sha256 is not None else existing.oid
            out.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return {"files": out, "commitOid": commit.oid}

    def lfs_batch(self, repo: Repo, body: dict) -> dict:
        if body.get("operation") != "upload":
            raise HubError(400, "Only the 'upload' operation is implemented by the double")
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            entry: dict = {"oid": oid, "size": size, "authenticated": True}
            stored = self.lfs_store.get(oid)
            if stored is None or len(stored) != size:
                base = f"{self.endpoint}/__lfs__/{oid}"
                sig = f"?sig={self._upload_sig}&size={size}"
                upload: dict = {"href": base + sig, "header": {}}
                if size > self.multipart_chunk_size:
                    n_parts = -(-size // self.multipart_chunk_size)
                    upload = {
                        "href": f"{base}/complete{sig}",
                        "header": {
                            "chunk_size": str(self.multipart_chunk_size),
                            **{f"{i:05d}": f"{base}/part/{i}{sig}" for i in range(1, n_parts + 1)},
                        },
                    }
                entry["actions"] = {
                    "upload": upload,
                    "verify": {"href": f"{self.endpoint}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}.git/info/lfs"
                                       "/objects/verify", "header": {}},
                }
            objects.append(entry)
        return {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}

    def _store_lfs(self, oid: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"LFS object content does not match its oid {oid}")
        self.lfs_store[oid] = data

    def commit(self, repo: Repo, revision: str, ndjson: bytes, params: dict) -> dict:
        if params.get("create_pr"):
            raise HubError(400, "create_pr is not implemented by the hub double")
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision} (commits go to an existing branch)", "RevisionNotFound")
        lines = [json.loads(line) for line in ndjson.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a 'header' line")
        header = lines[0]["value"]
        parent = repo.commits[repo.branches[revision]]
        if header.get("parentCommit") and header["parentCommit"] != parent.oid:
            raise HubError(412, f"A commit has happened since {header['parentCommit']}: {parent.oid} is the head")
        files = dict(parent.files)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            path = value.get("path", "")
            if key == "file":
                data = base64.b64decode(value["content"]) if value.get("encoding") == "base64" else \
                    value["content"].encode()
                files[path] = Blob(git_blob_sha1(data), len(data), content=data)
            elif key == "lfsFile":
                oid = value["oid"]
                data = self.lfs_store.get(oid)
                if data is None:
                    raise HubError(400, f"LFS file {path}: object {oid} was never uploaded")
                if "size" in value and int(value["size"]) != len(data):
                    raise HubError(400, f"LFS file {path}: size {value['size']} does not match the stored object")
                files[path] = Blob(git_blob_sha1(lfs_pointer(oid, len(data))), len(data), lfs_sha256=oid)
            elif key == "deletedFile":
                if path not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                doomed = [p for p in files if p.startswith(prefix)]
                if not doomed:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in doomed:
                    del files[p]
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        commit = self._new_commit(repo, parent, files, header.get("summary", ""), header.get("description", ""))
        repo.branches[revision] = commit.oid
        url = f"{self.endpoint}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}/commit/{commit.oid}"
        return {"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None}

    def create_branch(self, repo: Repo, branch: str, body: dict) -> dict:
        if branch in repo.branches:
            raise HubError(409, f"Reference refs/heads/{branch} already exists")
        start = self._commit_for(repo, body.get("startingPoint") or "main")
        repo.branches[branch] = start.oid
        return {}

    def refs(self, repo: Repo) -> dict:
        return {
            "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c} for b, c in repo.branches.items()],
            "converts": [],
            "tags": [],
            "pullRequests": [],
        }

    def commits(self, repo: Repo, revision: str) -> list[dict]:
        commit: Commit | None = self._commit_for(repo, revision)
        out = []
        while commit is not None:
            out.append({"id": commit.oid, "title": commit.title, "message": commit.message, "date": commit.date,
                        "authors": [{"user": self.user}]})
            commit = repo.commits.get(commit.parent) if commit.parent else None
        return out


class _Handler(BaseHTTPRequestHandler):
    hub: HubDouble
    protocol_version = "HTTP/1.1"
    timeout = 60  # idle keep-alive connections end after this

    def log_message(self, format, *args):  # quiet
        pass

    def setup(self):
        super().setup()
        with self.hub._lock:
            self.hub._connections.add(self.connection)

    def finish(self):
        with contextlib.suppress(OSError):
            super().finish()
        with self.hub._lock:
            self.hub._connections.discard(self.connection)

    # ------------------------------------------------------------------------------------------- plumbing
    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload=None, headers: dict | None = None, *, raw: bytes | None = None,
              head: bool = False, content_type: str = "application/json") -> None:
        body = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(split.query).items()}
        raw_parts = [p for p in split.path.split("/") if p != ""]
        body = b"" if method in ("GET", "HEAD") else self._body()
        hub = self.hub
        hub.requests.append(f"{method} {split.path}")
        try:
            with hub._lock:
                result = self._route(method, raw_parts, params, body)
        except HubError as e:
            headers = dict(e.headers)
            if e.code:
                headers.setdefault("X-Error-Code", e.code)
            headers.setdefault("X-Error-Message", e.message)
            self._send(e.status, {"error": e.message, **e.extra}, headers, head=method == "HEAD")
            return
        except Exception as e:  # a bug in the double: make it visible as a 500 with the reason
            self._send(500, {"error": f"hub double: {type(e).__name__}: {e}"}, head=method == "HEAD")
            return
        if result is None:
            hub.unhandled.append(f"{method} {self.path}")
            hint = " (Xet storage is not implemented: set HF_HUB_DISABLE_XET=1)" if "xet" in split.path else ""
            self._send(404, {"error": f"hub double: no endpoint for {method} {split.path}{hint}"},
                       head=method == "HEAD")
            return
        status, payload, headers, raw = result
        self._send(status, payload, headers, raw=raw, head=method == "HEAD",
                   content_type="application/octet-stream" if raw is not None else "application/json")

    do_GET = lambda self: self._dispatch("GET")  # noqa: E731
    do_HEAD = lambda self: self._dispatch("HEAD")  # noqa: E731
    do_POST = lambda self: self._dispatch("POST")  # noqa: E731
    do_PUT = lambda self: self._dispatch("PUT")  # noqa: E731
    do_DELETE = lambda self: self._dispatch("DELETE")  # noqa: E731

    @staticmethod
    def _json(body: bytes) -> dict:
        try:
            return json.loads(body or b"{}")
        except json.JSONDecodeError as e:
            raise HubError(400, f"Invalid JSON body: {e}") from e

    # ------------------------------------------------------------------------------------------- routing
    def _route(self, method: str, parts: list[str], params: dict, body: bytes):
        hub = self.hub
        ok = lambda payload, headers=None: (200, payload, headers, None)  # noqa: E731

        # --- /api/...
        if parts[:1] == ["api"]:
            rest = parts[1:]
            if method == "GET" and rest in (["whoami-v2"], ["whoami"]):
                hub._auth(self.headers, required=True)
                return ok({"type": "user", "name": hub.user, "fullname": hub.user, "orgs": [],
                           "auth": {"type": "access_token", "accessToken": {"displayName": "double", "role": "write"}}})
            if method == "GET" and rest == ["agent-harnesses"]:  # huggingface_hub's user-agent agent detection
                return ok({"standardEnvVars": [], "harnesses": {}})
            if method == "POST" and rest == ["repos", "create"]:
                return (*hub.create_repo(self.headers, self._json(body)), None, None)
            if method == "POST" and rest == ["validate-yaml"]:
                return self._validate_yaml(self._json(body))
            if len(rest) >= 3 and rest[0] in REPO_TYPES:
                repo_type, repo_id = REPO_TYPES[rest[0]], f"{unquote(rest[1])}/{unquote(rest[2])}"
                action, args = (rest[3] if len(rest) > 3 else None), rest[4:]
                write = method in ("POST", "PUT", "DELETE") and action != "paths-info"
                authed = hub._auth(self.headers, required=write)
                repo = hub._get_repo(repo_type, repo_id, authed)
                rev = unquote(args[0]) if args else "main"
                if method == "GET" and action is None:
                    return ok(hub.repo_info(repo, None))
                if method == "GET" and action == "revision" and args:
                    return ok(hub.repo_info(repo, rev))
                if method == "GET" and action == "tree" and args:
                    path = "/".join(unquote(a) for a in args[1:])
                    recursive = params.get("recursive", "").lower() in ("1", "true")
                    return ok(hub.tree(repo, rev, path, recursive))
                if method == "POST" and action == "paths-info" and args:
                    return ok(self._paths_info(repo, rev, body))
                if method == "GET" and action == "refs":
                    return ok(hub.refs(repo))
                if method == "GET" and action == "commits" and args:
                    return ok(hub.commits(repo, rev))
                if method == "POST" and action == "preupload" and args:
                    return ok(hub.preupload(repo, rev, self._json(body)))
                if method == "POST" and action == "commit" and args:
                    return ok(hub.commit(repo, rev, body, params))
                if method == "POST" and action == "branch" and args:
                    return ok(hub.create_branch(repo, rev, self._json(body)))
                if method == "DELETE" and action == "branch" and args:
                    if rev not in repo.branches or rev == "main":
                        raise HubError(404 if rev not in repo.branches else 403, f"Cannot delete branch {rev}")
                    del repo.branches[rev]
                    return ok({})
            return None

        # --- "presigned" LFS storage: /__lfs__/{oid}[/part/{n} | /complete]?sig=...
        if parts[:1] == ["__lfs__"] and len(parts) >= 2:
            if params.get("sig") != hub._upload_sig:
                raise HubError(403, "Bad upload signature")
            oid, tail = parts[1], parts[2:]
            if method == "PUT" and not tail:
                hub._store_lfs(oid, body)
                return ok(None, {"ETag": f'"{hashlib.md5(body).hexdigest()}"'})
            if method == "PUT" and len(tail) == 2 and tail[0] == "part":
                hub._pending_parts.setdefault(oid, {})[int(tail[1])] = body
                return ok(None, {"ETag": f'"{hashlib.md5(body).hexdigest()}"'})
            if method == "POST" and tail == ["complete"]:
                payload, got = self._json(body), hub._pending_parts.pop(oid, {})
                numbers = [p["partNumber"] for p in payload.get("parts", [])]
                if sorted(numbers) != sorted(got) or payload.get("oid") != oid:
                    raise HubError(400, f"Multipart completion does not match the uploaded parts of {oid}")
                for p in payload["parts"]:
                    if p["etag"].strip('"') != hashlib.md5(got[p["partNumber"]]).hexdigest():
                        raise HubError(400, f"Part {p['partNumber']} etag mismatch")
                hub._store_lfs(oid, b"".join(got[n] for n in sorted(got)))
                return ok({})
            return None

        # --- /{prefix}{org}/{name}.git/info/lfs/objects/{batch,verify} and /{prefix}{org}/{name}/resolve/{rev}/{path}
        repo_type = "model"
        if parts and parts[0] in ("datasets", "spaces"):
            repo_type, parts = REPO_TYPES[parts[0]], parts[1:]
        if len(parts) == 6 and parts[1].endswith(".git") and parts[2:5] == ["info", "lfs", "objects"]:
            repo_id = f"{unquote(parts[0])}/{unquote(parts[1])[:-4]}"
            authed = hub._auth(self.headers, required=True)
            repo = hub._get_repo(repo_type, repo_id, authed)
            if method == "POST" and parts[5] == "batch":
                return ok(hub.lfs_batch(repo, self._json(body)))
            if method == "POST" and parts[5] == "verify":
                req = self._json(body)
                stored = hub.lfs_store.get(req.get("oid", ""))
                if stored is None or len(stored) != int(req.get("size", -1)):
                    raise HubError(404, f"LFS object {req.get('oid')} not found or of the wrong size")
                return ok({"message": "Everything good"})
            return None
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            repo_id = f"{unquote(parts[0])}/{unquote(parts[1])}"
            authed = hub._auth(self.headers, required=False)
            repo = hub._get_repo(repo_type, repo_id, authed)
            commit = hub._commit_for(repo, unquote(parts[3]))
            path = unquote("/".join(parts[4:]))
            blob = commit.files.get(path)
            headers = {"X-Repo-Commit": commit.oid}
            if blob is None:
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound", headers)
            data = hub.file_bytes(blob)
            headers["ETag"] = f'"{blob.lfs_sha256 or blob.oid}"'
            headers["Accept-Ranges"] = "bytes"
            if blob.lfs_sha256 is not None:
                headers["X-Linked-ETag"] = f'"{blob.lfs_sha256}"'
                headers["X-Linked-Size"] = str(blob.size)
            status, rng = 200, self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                start_s, _, end_s = rng[6:].split(",")[0].partition("-")
                start = int(start_s or 0)
                end = min(int(end_s), len(data) - 1) if end_s else len(data) - 1
                if start >= len(data) and len(data) > 0:
                    raise HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                data, status = data[start:end + 1], 206
            return status, None, headers, data
        return None

    def _paths_info(self, repo: Repo, rev: str, body: bytes) -> list[dict]:
        form = parse_qs(body.decode())
        commit = self.hub._commit_for(repo, rev)
        out = []
        for path in form.get("paths", []):
            if path in commit.files:
                out.append(commit.files[path].as_tree_entry(path))
            elif any(p.startswith(path.rstrip("/") + "/") for p in commit.files):
                out.append({"type": "directory", "oid": self.hub._folder_oid(commit, path), "size": 0, "path": path})
        return out

    @staticmethod
    def _validate_yaml(body: dict):
        content = body.get("content", "")
        if content.startswith("---"):
            end = content.find("\n---", 3)
            if end == -1:
                return 400, {"errors": [{"message": "Unterminated YAML front matter"}]}, None, None
            try:
                import yaml

                meta = yaml.safe_load(content[3:end])
            except Exception as e:  # noqa: BLE001
                return 400, {"errors": [{"message": f"Invalid YAML: {e}"}]}, None, None
            if meta is not None and not isinstance(meta, dict):
                return 400, {"errors": [{"message": "YAML front matter must be a mapping"}]}, None, None
        return 200, {"errors": [], "warnings": []}, None, None


@contextlib.contextmanager
def hub_double(token: str | None = None, **kwargs) -> Iterator[HubHandle]:
    """Start a Hub double on 127.0.0.1 (free port); yield ``(endpoint_url, token)``; stop it afterwards."""
    with HubDouble(token, **kwargs) as hub:
        yield HubHandle(hub.endpoint, hub.token)


@contextlib.contextmanager
def pointed_at(endpoint: str, *, env: bool = True) -> Iterator[None]:
    """Point the (already imported) huggingface_hub at ``endpoint`` with Xet disabled, and restore afterwards.

    huggingface_hub reads ``HF_ENDPOINT`` and ``HF_HUB_DISABLE_XET`` once, at import, into
    ``huggingface_hub.constants``; ``hf_hub_download`` (hence ``snapshot_download`` and transformers'
    ``from_pretrained``) builds file URLs from ``constants.HUGGINGFACE_CO_URL_TEMPLATE`` and ``HfApi()`` defaults to
    ``constants.ENDPOINT``. This patches those constants, and (``env=True``) sets the two environment variables too,
    so that subprocesses started inside the block import huggingface_hub already pointed at the double.
    """
    from huggingface_hub import constants

    endpoint = endpoint.rstrip("/")
    saved = {k: getattr(constants, k) for k in ("ENDPOINT", "HUGGINGFACE_CO_URL_TEMPLATE", "HF_HUB_DISABLE_XET")}
    saved_env = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF_HUB_DISABLE_XET")}
    constants.ENDPOINT = endpoint
    constants.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    constants.HF_HUB_DISABLE_XET = True
    if env:
        os.environ["HF_ENDPOINT"] = endpoint
        os.environ["HF_HUB_DISABLE_XET"] = "1"
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(constants, k, v)
        if env:
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


if __name__ == "__main__":  # manual use: python tests/hub_double.py  -> prints endpoint and token, serves until ^C
    with HubDouble(os.environ.get("HUB_DOUBLE_TOKEN")) as _hub:
        print(f"HF_ENDPOINT={_hub.endpoint} HF_TOKEN={_hub.token} HF_HUB_DISABLE_XET=1", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
