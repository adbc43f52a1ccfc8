"""A small, real Hugging Face Hub stand-in for tests: an HTTP server on 127.0.0.1 that speaks the part of the Hub
API that `huggingface_hub` 2.x (HfApi, HfFileSystem, hf_hub_download) and `datasets` 5.x use to create a dataset
repo, commit a folder to it (preupload, LFS batch + upload + verify, NDJSON commit) and read it back (repo info,
tree, paths-info, refs, commits, resolve with Range support).

State lives in memory: every repo has a linear commit history on `main` (commit ids are sha1 hex), a commit is
applied atomically (all of its operations or none), LFS objects are content-addressed by sha256 and only stored
once their upload is complete and its hash checks out. Faults can be injected to drop a connection mid-request.

Use with `hub_endpoint(server)` (patches huggingface_hub/datasets module constants in-process) or by setting
`HF_ENDPOINT=server.url` and `HF_HUB_DISABLE_XET=1` in a subprocess's environment.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

# What the Hub's default .gitattributes routes to LFS (subset that matters for datasets).
LFS_PATTERNS = (
    "*.parquet", "*.arrow", "*.bin", "*.pt", "*.pth", "*.safetensors", "*.gguf", "*.npy", "*.npz", "*.pkl",
    "*.png", "*.jpg", "*.jpeg", "*.gif", "*.webp", "*.zip", "*.gz", "*.tar", "*.zst", "*.h5", "*.onnx",
)
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub also routes any file >= 10 MiB to LFS
_OP_SEGMENTS = {"revision", "tree", "paths-info", "preupload", "commit", "refs", "commits", "lfs-files", "settings"}
_REPO_PREFIX = {"dataset": "datasets/", "space": "spaces/", "model": ""}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass(frozen=True)
class RepoEntry:
    """One file in a commit's tree. LFS files keep only their sha256; the bytes live in the LFS store."""

    path: str
    size: int
    blob_id: str  # git oid of the blob as git stores it (the pointer file for LFS files)
    lfs_sha256: str | None = None
    content: bytes | None = None  # regular files only


@dataclass(frozen=True)
class Commit:
    oid: str
    parent: str | None
    title: str
    description: str
    date: str
    files: dict[str, RepoEntry]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: list[Commit] = field(default_factory=list)  # oldest first; `main` is the last one

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def resolve(self, revision: str) -> Commit | None:
        revision = unquote(revision)
        if revision in ("main", "refs/heads/main"):
            return self.head
        for commit in self.commits:
            if commit.oid == revision or (len(revision) >= 7 and commit.oid.startswith(revision)):
                return commit
        return None


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    status: int = 0


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class _DropConnection(Exception):
    """Raised by a handler to close the socket without answering (an injected network fault)."""


class HubState:
    """Everything the server knows; thread-safe through one lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs: dict[str, bytes] = {}  # sha256 hex -> content (content-addressed, shared by all repos)
        self.requests: list[RecordedRequest] = []
        self.faults: dict[str, int] = {}  # fault name -> how many more requests to sabotage
        self.dropped: list[str] = []  # what was sabotaged, for tests
        self.release = threading.Event()  # ends a "lfs_upload_stall" fault
        self._counter = 0
        self.valid_tokens: set[str] | None = None  # None: any token is accepted

    # --- helpers -------------------------------------------------------------------------------------------
    def repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository {repo_type}s/{repo_id} not found", "RepoNotFound")
        return repo

    def commit_at(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {unquote(revision)}", "RevisionNotFound")
        return commit

    def take_fault(self, name: str) -> bool:
        with self.lock:
            if self.faults.get(name, 0) > 0:
                self.faults[name] -= 1
                self.dropped.append(name)
                return True
            return False

    def new_commit(self, repo: Repo, files: dict[str, RepoEntry], title: str, description: str) -> Commit:
        with self.lock:
            self._counter += 1
            parent = repo.commits[-1].oid if repo.commits else None
            tree = "\n".join(f"{p} {e.blob_id}" for p, e in sorted(files.items()))
            oid = hashlib.sha1(f"{parent}\n{tree}\n{title}\n{description}\n{self._counter}".encode()).hexdigest()
            commit = Commit(oid, parent, title, description, _now(), dict(files))
            repo.commits.append(commit)
            return commit

    def entry_bytes(self, entry: RepoEntry) -> bytes:
        if entry.lfs_sha256 is None:
            return entry.content or b""
        return self.lfs[entry.lfs_sha256]


def _make_entry(path: str, data: bytes, *, lfs: bool) -> RepoEntry:
    if lfs:
        sha = hashlib.sha256(data).hexdigest()
        return RepoEntry(path, len(data), git_blob_sha1(lfs_pointer(sha, len(data))), sha)
    return RepoEntry(path, len(data), git_blob_sha1(data), None, data)


def _folders(files: dict[str, RepoEntry]) -> set[str]:
    out = set()
    for path in files:
        parts = path.split("/")[:-1]
        out.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return out


def _folder_oid(commit: Commit, folder: str) -> str:
    prefix = folder + "/"
    return hashlib.sha1("".join(f"{p}{e.blob_id}" for p, e in sorted(commit.files.items())
                                if p.startswith(prefix)).encode()).hexdigest()


def _last_commit(repo: Repo, upto: Commit, path: str) -> dict[str, str]:
    """The newest commit (not newer than `upto`) that changed `path` (a file or a folder prefix)."""
    history = repo.commits[: repo.commits.index(upto) + 1]

    def view(c: Commit) -> dict[str, str]:
        return {p: e.blob_id for p, e in c.files.items() if p == path or p.startswith(path + "/")}

    found = history[-1]
    for older, newer in zip(reversed(history[:-1]), reversed(history)):
        if view(older) != view(newer):
            found = newer
            break
        found = older
    return {"id": found.oid, "title": found.title, "date": found.date}


def _entry_json(repo: Repo, commit: Commit, path: str, *, expand: bool) -> dict[str, Any]:
    entry = commit.files.get(path)
    if entry is None:  # a folder
        info: dict[str, Any] = {"type": "directory", "oid": _folder_oid(commit, path), "size": 0, "path": path}
    else:
        info = {"type": "file", "oid": entry.blob_id, "size": entry.size, "path": path}
        if entry.lfs_sha256 is not None:
            info["lfs"] = {"oid": entry.lfs_sha256, "size": entry.size,
                           "pointerSize": len(lfs_pointer(entry.lfs_sha256, entry.size))}
    if expand:
        info["lastCommit"] = _last_commit(repo, commit, path)
    return info


def _card_data(commit: Commit) -> dict[str, Any] | None:
    readme = commit.files.get("README.md")
    if readme is None or readme.content is None:
        return None
    text = readme.content.decode("utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    try:
        meta = yaml.safe_load(text.split("---", 2)[1])
    except yaml.YAMLError:
        return None
    return meta if isinstance(meta, dict) else None


SIZE_CATEGORIES = {"n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B",
                   "1B<n<10B", "10B<n<100B", "100B<n<1T", "n>1T"}


def _metadata_errors(meta: dict[str, Any], repo_type: str) -> list[str]:
    """The checks of the Hub's metadata validation that a dataset card most often trips on."""
    errors = []
    for key in ("tags", "task_categories", "size_categories", "language"):
        value = meta.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            errors.append(f'"{key}" must be a list of strings')
    for value in meta.get("size_categories") or []:
        if value not in SIZE_CATEGORIES:
            errors.append(f'"size_categories" has an unknown value {value!r}')
    if "license" in meta and not isinstance(meta["license"], (str, list)):
        errors.append('"license" must be a string or a list of strings')
    if repo_type == "dataset" and "configs" in meta:
        configs = meta["configs"]
        if not isinstance(configs, list):
            errors.append('"configs" must be a list')
        else:
            names = [c.get("config_name") if isinstance(c, dict) else None for c in configs]
            if any(not isinstance(n, str) for n in names) or len(set(names)) != len(names):
                errors.append('every "configs" item needs a unique "config_name"')
            for config in configs:
                files = config.get("data_files") if isinstance(config, dict) else None
                if isinstance(files, list):
                    if not all(isinstance(f, dict) and {"split", "path"} <= set(f) for f in files):
                        errors.append(f'"data_files" of {config.get("config_name")!r} must be a list of '
                                      "{split, path} items")
                elif files is not None and not isinstance(files, (str, dict)):
                    errors.append(f'"data_files" of {config.get("config_name")!r} is malformed')
            if sum(bool(c.get("default")) for c in configs if isinstance(c, dict)) > 1:
                errors.append("at most one config can be the default")
    return errors


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    # --- plumbing ------------------------------------------------------------------------------------------
    @property
    def state(self) -> HubState:
        return self.server.state

    @property
    def base(self) -> str:
        return self.server.url

    def _read_body(self, *, drop_after: int | None = None) -> bytes:
        """Read the request body (Content-Length or chunked); with `drop_after`, read that many bytes then drop."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
                if drop_after is not None and sum(map(len, chunks)) >= drop_after:
                    raise _DropConnection()
            body = b"".join(chunks)
        else:
            length = int(self.headers.get("Content-Length") or 0)
            if drop_after is not None:
                self.rfile.read(min(drop_after, length))
                raise _DropConnection()
            body = self.rfile.read(length)
        if drop_after is not None:
            raise _DropConnection()
        return body

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              *, head_only: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if not any(k.lower() == "content-length" for k in (headers or {})):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and not head_only and self.command != "HEAD":
            self.wfile.write(body)
        self._status = status

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, err: HubError) -> None:
        headers = {"X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._json(err.status, {"error": err.message}, headers)

    def _dispatch(self) -> None:
        self._status = 0
        record = RecordedRequest(self.command, self.path, dict(self.headers.items()))
        with self.state.lock:
            self.state.requests.append(record)
        auth = self.headers.get("Authorization", "")
        valid = self.state.valid_tokens
        if (auth and not auth.startswith("Bearer ")) or (valid is not None and auth[7:] not in valid):
            self._error(HubError(401, "Invalid credentials in Authorization header"))
        else:
            try:
                self._route()
            except HubError as err:
                self._error(err)
            except _DropConnection:
                # Simulate a network failure: no answer, socket closed (the client sees a protocol error).
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
            except Exception as err:  # a bug in the stand-in: answer 500 so the test fails loudly
                self._json(500, {"error": f"hub stand-in error: {type(err).__name__}: {err}"})
        record.status = self._status

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _dispatch

    # --- routing -------------------------------------------------------------------------------------------
    def _route(self) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        method = self.command
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo()
        if path == "/api/repos/delete" and method == "DELETE":
            return self._delete_repo()
        if path == "/api/validate-yaml" and method == "POST":
            return self._validate_yaml()
        if path == "/api/whoami-v2":
            return self._json(200, {"type": "user", "name": "bmc-tester", "fullname": "BMC Tester", "orgs": [],
                                    "auth": {"type": "access_token", "accessToken": {"role": "write"}}})
        if path.startswith("/__lfs/upload/") and method == "PUT":
            return self._lfs_upload(path.rsplit("/", 1)[1])
        if path == "/__lfs/verify" and method == "POST":
            return self._lfs_verify()
        for repo_type in ("model", "dataset", "space"):
            prefix = f"/api/{repo_type}s/"
            if path.startswith(prefix):
                return self._repo_api(repo_type, path[len(prefix):], query)
        if path.endswith(".git/info/lfs/objects/batch") and method == "POST":
            return self._lfs_batch(path[1: -len(".git/info/lfs/objects/batch")])
        if "/resolve/" in path and method in ("GET", "HEAD"):
            return self._resolve(path[1:])
        raise HubError(404, f"no route for {method} {path}")

    def _split_repo(self, rest: str) -> tuple[str, list[str]]:
        parts = rest.split("/")
        if len(parts) >= 2 and parts[1] not in _OP_SEGMENTS:
            return "/".join(parts[:2]), parts[2:]
        return parts[0], parts[1:]

    def _repo_api(self, repo_type: str, rest: str, query: dict[str, list[str]]) -> None:
        repo_id, tail = self._split_repo(rest)
        repo = self.state.repo(repo_type, repo_id)
        self._check_access(repo)
        op = tail[0] if tail else ""
        revision = unquote(tail[1]) if len(tail) > 1 else "main"
        method = self.command
        if op in ("", "revision") and method == "GET":
            return self._repo_info(repo, revision)
        if op == "tree" and method == "GET":
            return self._tree(repo, revision, unquote("/".join(tail[2:])), query)
        if op == "paths-info" and method == "POST":
            return self._paths_info(repo, revision)
        if op == "preupload" and method == "POST":
            return self._preupload(repo, revision)
        if op == "commit" and method == "POST":
            return self._commit(repo, revision)
        if op == "refs" and method == "GET":
            return self._json(200, {"branches": [{"name": "main", "ref": "refs/heads/main",
                                                  "targetCommit": repo.head.oid}], "tags": [], "converts": []})
        if op == "commits" and method == "GET":
            return self._commits(repo, revision)
        raise HubError(404, f"no route for {method} /api/{repo_type}s/{rest}")

    def _check_access(self, repo: Repo) -> None:
        if repo.private and not self.headers.get("Authorization"):
            raise HubError(401, "Repository not found", "RepoNotFound")

    # --- repos ---------------------------------------------------------------------------------------------
    def _create_repo(self) -> None:
        if not self.headers.get("Authorization"):
            raise HubError(401, "You must be authenticated to create a repo")
        payload = json.loads(self._read_body() or b"{}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        url = f"{self.base}/{_REPO_PREFIX[repo_type]}{repo_id}"
        with self.state.lock:
            if (repo_type, repo_id) in self.state.repos:
                return self._json(409, {"error": "You already created this repo", "url": url})
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            repo = Repo(repo_type, repo_id, private, _now())
            self.state.repos[(repo_type, repo_id)] = repo
            # Like the Hub: a new repo starts with one commit holding .gitattributes.
            entry = _make_entry(".gitattributes", GITATTRIBUTES, lfs=False)
            self.state.new_commit(repo, {".gitattributes": entry}, "initial commit", "")
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self) -> None:
        payload = json.loads(self._read_body() or b"{}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        with self.state.lock:
            self.state.repo(repo_type, repo_id)
            del self.state.repos[(repo_type, repo_id)]
        self._json(200, {})

    def _validate_yaml(self) -> None:
        payload = json.loads(self._read_body() or b"{}")
        content = payload.get("content", "")
        if content.startswith("---"):
            try:
                meta = yaml.safe_load(content.split("---", 2)[1])
            except yaml.YAMLError as err:
                return self._json(400, {"errors": [{"message": f"Invalid YAML: {err}"}], "warnings": []})
            if meta is not None and not isinstance(meta, dict):
                return self._json(400, {"errors": [{"message": "metadata must be a YAML mapping"}], "warnings": []})
            errors = _metadata_errors(meta or {}, payload.get("repoType") or "model")
            if errors:
                return self._json(400, {"errors": [{"message": m} for m in errors], "warnings": []})
        self._json(200, {"errors": [], "warnings": []})

    def _repo_info(self, repo: Repo, revision: str) -> None:
        commit = self.state.commit_at(repo, revision)
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sib: dict[str, Any] = {"rfilename": path, "size": entry.size, "blobId": entry.blob_id}
            if entry.lfs_sha256:
                sib["lfs"] = {"size": entry.size, "sha256": entry.lfs_sha256,
                              "pointerSize": len(lfs_pointer(entry.lfs_sha256, entry.size))}
            siblings.append(sib)
        card = _card_data(commit) or {}
        tags = [f"{k}:{v}" for k in ("license",) if isinstance(card.get(k), str) for v in [card[k]]]
        tags += [t for t in card.get("tags", []) or [] if isinstance(t, str)]
        self._json(200, {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else "bmc-tester",
            "sha": commit.oid, "lastModified": commit.date, "createdAt": repo.created_at,
            "private": repo.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
            "tags": tags, "cardData": _card_data(commit), "siblings": siblings,
            "usedStorage": sum(e.size for e in commit.files.values()),
        })

    def _tree(self, repo: Repo, revision: str, folder: str, query: dict[str, list[str]]) -> None:
        commit = self.state.commit_at(repo, revision)
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = query.get("expand", ["false"])[0].lower() in ("1", "true")
        folder = folder.strip("/")
        folders = _folders(commit.files)
        if folder and folder not in folders:
            raise HubError(404, f"{folder} does not exist on {revision}", "EntryNotFound")
        prefix = f"{folder}/" if folder else ""
        paths = sorted(p for p in set(commit.files) | folders if p.startswith(prefix) and p != folder)
        if not recursive:
            paths = [p for p in paths if "/" not in p[len(prefix):]]
        # Directories first, like the Hub; one page, no Link header (pagination-free answer).
        entries = [_entry_json(repo, commit, p, expand=expand) for p in paths]
        entries.sort(key=lambda e: (e["type"] != "directory", e["path"]))
        self._json(200, entries)

    def _paths_info(self, repo: Repo, revision: str) -> None:
        commit = self.state.commit_at(repo, revision)
        body = self._read_body()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            form = json.loads(body or b"{}")
            paths, expand = form.get("paths", []), bool(form.get("expand"))
        else:
            form = parse_qs(body.decode())
            paths = form.get("paths", [])
            expand = form.get("expand", ["False"])[0].lower() in ("1", "true")
        folders = _folders(commit.files)
        out = [_entry_json(repo, commit, p.strip("/"), expand=expand) for p in paths
               if p.strip("/") in commit.files or p.strip("/") in folders]
        self._json(200, out)

    def _commits(self, repo: Repo, revision: str) -> None:
        commit = self.state.commit_at(repo, revision)
        history = repo.commits[: repo.commits.index(commit) + 1]
        self._json(200, [{"id": c.oid, "title": c.title, "message": c.description, "date": c.date,
                          "authors": [{"user": "bmc-tester"}]} for c in reversed(history)])

    # --- upload --------------------------------------------------------------------------------------------
    def _is_lfs(self, path: str, size: int, sample: bytes) -> bool:
        name = path.rsplit("/", 1)[-1]
        return (any(fnmatch.fnmatch(name, pattern) for pattern in LFS_PATTERNS)
                or size >= LFS_SIZE_THRESHOLD or b"\x00" in sample)

    def _require_write(self) -> None:
        if not self.headers.get("Authorization"):
            raise HubError(401, "You must be authenticated to write to a repo")

    def _preupload(self, repo: Repo, revision: str) -> None:
        self._require_write()
        commit = self.state.commit_at(repo, revision)
        payload = json.loads(self._read_body() or b"{}")
        files = []
        for item in payload.get("files", []):
            sample = base64.b64decode(item.get("sample", ""))
            mode = "lfs" if self._is_lfs(item["path"], int(item.get("size", 0)), sample) else "regular"
            existing = commit.files.get(item["path"])
            # The oid the client compares with its local one to skip unchanged files: sha256 for LFS, git sha1 else.
            oid = None if existing is None else (existing.lfs_sha256 or existing.blob_id)
            files.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._json(200, {"files": files, "commitOid": commit.oid})

    def _lfs_batch(self, prefixed_repo: str) -> None:
        self._require_write()
        repo_type = "model"
        for kind, prefix in _REPO_PREFIX.items():
            if prefix and prefixed_repo.startswith(prefix):
                repo_type, prefixed_repo = kind, prefixed_repo[len(prefix):]
        self.state.repo(repo_type, prefixed_repo)
        payload = json.loads(self._read_body() or b"{}")
        if payload.get("operation") != "upload":
            raise HubError(400, "only the upload operation is supported by the stand-in")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            if oid in self.state.lfs:  # already stored: no action, the client skips the upload
                objects.append({"oid": oid, "size": size})
                continue
            objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                "upload": {"href": f"{self.base}/__lfs/upload/{oid}", "header": {}},
                "verify": {"href": f"{self.base}/__lfs/verify", "header": {}},
            }})
        self._json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_upload(self, oid: str) -> None:
        half = max(1, int(self.headers.get("Content-Length") or 2) // 2)
        if self.state.take_fault("lfs_upload"):
            # Drop the connection halfway through the body: nothing may be stored.
            self._read_body(drop_after=half)
        if self.state.take_fault("lfs_upload_stall"):
            # Take half the body, then wait (the test kills the client meanwhile) and drop: nothing is stored.
            self.rfile.read(half)
            self.state.release.wait(timeout=60)
            raise _DropConnection()
        data = self._read_body()
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"uploaded content does not match oid {oid}")
        with self.state.lock:
            self.state.lfs[oid] = data
        self._send(200, b"", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    def _lfs_verify(self) -> None:
        payload = json.loads(self._read_body() or b"{}")
        data = self.state.lfs.get(payload.get("oid", ""))
        if data is None or len(data) != payload.get("size"):
            raise HubError(404, f"LFS object {payload.get('oid')} is missing or has the wrong size")
        self._json(200, {"success": True})

    def _commit(self, repo: Repo, revision: str) -> None:
        self._require_write()
        body = self._read_body()
        if self.state.take_fault("commit"):
            raise _DropConnection()  # the whole request was received, but nothing is applied
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        with self.state.lock:
            base = self.state.commit_at(repo, revision)
            if base is not repo.head:
                raise HubError(400, "the stand-in only commits to main")
            parent = header.get("parentCommit")
            if parent is not None and parent != repo.head.oid:
                raise HubError(412, f"parent commit {parent} is not the head of main ({repo.head.oid})")
            # Build the new tree on a copy: any error below leaves the repo untouched (atomic commit).
            files = dict(base.files)
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                if key == "file":
                    data = base64.b64decode(value["content"]) if value.get("encoding") == "base64" else \
                        value["content"].encode()
                    files[value["path"]] = _make_entry(value["path"], data, lfs=False)
                elif key == "lfsFile":
                    data = self.state.lfs.get(value["oid"])
                    if data is None:
                        raise HubError(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                    files[value["path"]] = _make_entry(value["path"], data, lfs=True)
                elif key == "deletedFile":
                    if value["path"] not in files:
                        raise HubError(404, f"A file with this name doesn't exist: {value['path']}",
                                       "EntryNotFound")
                    del files[value["path"]]
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: e for p, e in files.items() if not p.startswith(prefix)}
                else:
                    raise HubError(400, f"unsupported commit operation {key!r}")
            commit = self.state.new_commit(repo, files, header.get("summary", ""), header.get("description", ""))
        url = f"{self.base}/{_REPO_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{commit.oid}"
        self._json(200, {"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None})

    # --- download ------------------------------------------------------------------------------------------
    def _resolve(self, rest: str) -> None:
        repo_type = "model"
        for kind, prefix in _REPO_PREFIX.items():
            if prefix and rest.startswith(prefix):
                repo_type, rest = kind, rest[len(prefix):]
        repo_part, _, tail = rest.partition("/resolve/")
        repo = self.state.repo(repo_type, unquote(repo_part))
        self._check_access(repo)
        revision, _, file_path = tail.partition("/")
        commit = self.state.commit_at(repo, revision)
        file_path = unquote(file_path)
        entry = commit.files.get(file_path)
        if entry is None:
            raise HubError(404, f"Entry not found: {file_path}", "EntryNotFound")
        data = self.state.entry_bytes(entry)
        headers = {"X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if entry.lfs_sha256:
            headers.update({"ETag": f'"{entry.lfs_sha256}"', "X-Linked-Etag": f'"{entry.lfs_sha256}"',
                            "X-Linked-Size": str(entry.size)})
        else:
            headers["ETag"] = f'"{entry.blob_id}"'
        status, body = 200, data
        range_header = self.headers.get("Range")
        if range_header and range_header.startswith("bytes="):
            start_s, _, end_s = range_header[6:].partition("-")
            start = int(start_s) if start_s else max(0, len(data) - int(end_s))
            end = min(int(end_s), len(data) - 1) if (start_s and end_s) else len(data) - 1
            if start >= len(data) and len(data) > 0:
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}", **headers})
            status, body = 206, data[start: end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        headers["Content-Length"] = str(len(body))
        self._send(status, body, headers, head_only=self.command == "HEAD")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state: HubState):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class HubServer:
    """Start/stop the stand-in; `url` is the HF_ENDPOINT to use."""

    def __init__(self, valid_tokens: set[str] | None = None) -> None:
        self.state = HubState()
        self.state.valid_tokens = valid_tokens  # set: other tokens get 401, as the Hub answers a bad token
        self._server = _Server(self.state)
        self.url = self._server.url
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-stand-in", daemon=True)

    def start(self) -> "HubServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.state.release.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- test helpers ---------------------------------------------------------------------------------------
    def inject_fault(self, name: str, times: int = 1) -> None:
        """Sabotage the next `times` requests of a kind: "lfs_upload" (drop mid-body), "lfs_upload_stall" (read
        half the body, then hang until `state.release` is set, then drop) or "commit" (drop it unapplied)."""
        with self.state.lock:
            self.state.faults[name] = self.state.faults.get(name, 0) + times

    def commits(self, repo_id: str, repo_type: str = "dataset") -> list[Commit]:
        return list(self.state.repo(repo_type, repo_id).commits)

    def files(self, repo_id: str, repo_type: str = "dataset", revision: str = "main") -> dict[str, bytes]:
        repo = self.state.repo(repo_type, repo_id)
        commit = self.state.commit_at(repo, revision)
        return {p: self.state.entry_bytes(e) for p, e in commit.files.items()}

    def lfs_paths(self, repo_id: str, repo_type: str = "dataset") -> set[str]:
        return {p for p, e in self.state.repo(repo_type, repo_id).head.files.items() if e.lfs_sha256}

    def seen_tokens(self) -> set[str]:
        return {r.headers[k][len("Bearer "):] for r in self.state.requests for k in r.headers
                if k.lower() == "authorization" and r.headers[k].startswith("Bearer ")}


@contextlib.contextmanager
def hub_endpoint(server: HubServer, cache_dir: "str | os.PathLike[str] | None" = None) -> Iterator[str]:
    """Point huggingface_hub and datasets (already imported or not) at `server` for the duration, in-process.

    With `cache_dir`, the Hub download cache and the datasets cache also live there (never ~/.cache).
    """

    import datasets.config
    import huggingface_hub.constants as hc

    saved_env = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF_HUB_DISABLE_XET")}
    saved = {
        (hc, "ENDPOINT"): hc.ENDPOINT,
        (hc, "HUGGINGFACE_CO_URL_TEMPLATE"): hc.HUGGINGFACE_CO_URL_TEMPLATE,
        (hc, "HF_HUB_DISABLE_XET"): hc.HF_HUB_DISABLE_XET,
        (datasets.config, "HF_ENDPOINT"): datasets.config.HF_ENDPOINT,
        (datasets.config, "HUB_DATASETS_URL"): datasets.config.HUB_DATASETS_URL,
    }
    if cache_dir is not None:
        from pathlib import Path

        root = Path(cache_dir)
        for module, name, value in ((hc, "HF_HUB_CACHE", str(root / "hub")),
                                    (datasets.config, "HF_DATASETS_CACHE", root / "datasets"),
                                    (datasets.config, "DOWNLOADED_DATASETS_PATH", root / "datasets" / "downloads")):
            saved[(module, name)] = getattr(module, name)
            setattr(module, name, value)
    os.environ["HF_ENDPOINT"] = server.url
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    hc.ENDPOINT = server.url
    hc.HUGGINGFACE_CO_URL_TEMPLATE = server.url + "/{repo_id}/resolve/{revision}/{filename}"
    hc.HF_HUB_DISABLE_XET = True
    datasets.config.HF_ENDPOINT = server.url
    datasets.config.HUB_DATASETS_URL = server.url + "/datasets/{repo_id}/resolve/{revision}/{path}"
    _clear_fs_cache()
    try:
        yield server.url
    finally:
        for (module, name), value in saved.items():
            setattr(module, name, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _clear_fs_cache()


def _clear_fs_cache() -> None:
    """HfFileSystem instances are cached per process; a fresh endpoint needs fresh instances."""
    from huggingface_hub import HfFileSystem

    HfFileSystem.clear_instance_cache()


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


__all__ = ["HubServer", "HubState", "hub_endpoint", "git_blob_sha1", "lfs_pointer", "wait_until"]
