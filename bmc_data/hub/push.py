"""Push a `save_bridged` folder to a Hub dataset repo in one commit."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# remote files there that the folder no longer has are deleted on push (report_files/: the review page's data)
MANAGED_PREFIXES = ("data/", "figures/", "report_files/")


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    commit_oid: str
    commit_url: str
    created_commit: bool  # False when the remote already had exactly this content
    uploaded: tuple[str, ...]  # paths added or changed by the commit
    deleted: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1()
    h.update(b"blob %d\x00" % path.stat().st_size)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def local_files(folder: str | Path) -> dict[str, Path]:
    """Files `push_bridged` uploads: everything in the folder except hidden files and the bridge cache."""
    folder = Path(folder)
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or any(part.startswith(".") for part in rel.split("/")) or rel.startswith("cache/"):
            continue
        out[rel] = path
    return out


def _unchanged(local: Path, remote: Any) -> bool:
    if remote.size != local.stat().st_size:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == _sha256(local)
    return remote.blob_id == _git_blob_sha1(local)


def push_bridged(
    out_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload BMC bridged dataset",
    commit_description: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Push a `save_bridged` folder to the Hub dataset repo `repo_id` in a single commit.

    The repo is created if needed. Files identical to the remote ones are not re-uploaded, remote files under
    data/ and figures/ that the folder no longer has are deleted in the same commit, and when nothing changed no
    commit is made: the result names the existing head commit (`created_commit=False`).

    The token comes from `token`, else `HF_TOKEN`, else the saved `hf auth login`; it is never printed or logged.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.hf_api import RepoFile

    folder = Path(out_dir)
    if not (folder / "README.md").is_file() or not (folder / "data").is_dir():
        raise FileNotFoundError(f"{folder} is not a save_bridged folder (README.md and data/ expected)")
    api = HfApi(endpoint=endpoint, token=token)
    repo_url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    repo_id = getattr(repo_url, "repo_id", None) or repo_id
    head = api.repo_info(repo_id, repo_type="dataset").sha
    remote = {f.path: f for f in api.list_repo_tree(repo_id, repo_type="dataset", revision=head, recursive=True)
              if isinstance(f, RepoFile)}
    local = local_files(folder)

    changed = [rel for rel, path in local.items() if rel not in remote or not _unchanged(path, remote[rel])]
    stale = [rel for rel in remote if rel not in local and rel.startswith(MANAGED_PREFIXES)]
    base_url = f"{api.endpoint}/datasets/{repo_id}/commit/"
    if not changed and not stale:
        logger.info("%s already has this content at %s: nothing to push", repo_id, head)
        return PushResult(repo_id, head, base_url + head, False, (), ())

    operations: list[Any] = [CommitOperationDelete(path_in_repo=rel) for rel in stale]
    operations += [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(local[rel])) for rel in changed]
    # parent_commit: fail instead of silently overwriting a commit someone pushed since we looked.
    info = api.create_commit(repo_id, operations, repo_type="dataset", commit_message=commit_message,
                             commit_description=commit_description, parent_commit=head)
    logger.info("pushed %d changed and %d deleted file(s) to %s at %s", len(changed), len(stale), repo_id, info.oid)
    return PushResult(repo_id, info.oid, info.commit_url, info.oid != head, tuple(changed), tuple(stale))




def hf_token_from_env() -> str | None:
    """The token `push_bridged` would use when none is passed (for callers that need to know one exists)."""
    from huggingface_hub import get_token

    return os.environ.get("HF_TOKEN") or get_token()
