"""Push a `save_bridged` folder to a Hub dataset repo in one commit, touching only what bmc wrote there.

What is uploaded: the files the folder's `bmc_files.json` lists (what bmc wrote: the card, data/, figures/, the
review page), never anything else in the folder. The repo gets its own `bmc_files.json`, the files bmc pushed with
their hashes; the next push deletes or replaces a remote file only when that manifest lists it and it is unchanged
on the Hub. A remote file bmc did not push (or that changed since) at a path bmc writes or inside its folders is
refused (`OutputConflict`, exit 2) unless `overwrite=True`, which replaces those at paths the push writes and
leaves the others. A README.md that bmc did not write is kept, with the generated card merged into it
(`bmc_data.hub.card_merge`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bmc_data.outputs import (
    MANIFEST,
    OVERWRITE_HINT,
    REPORT_WRITER,
    FileRecord,
    Manifest,
    OutputConflict,
    describe,
    file_record,
    in_scope,
    parse_manifest,
    read_manifest,
)

from .card_merge import merge_card
from .save import WRITER as SAVE_WRITER

logger = logging.getLogger(__name__)

README = "README.md"


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    commit_oid: str
    commit_url: str
    created_commit: bool  # False when the remote already had exactly this content
    uploaded: tuple[str, ...]  # paths added or changed by the commit
    deleted: tuple[str, ...]  # files bmc had pushed before and this folder no longer has
    readme_merged: bool = False  # the README on the Hub is someone else's: the card was merged into it
    kept: tuple[str, ...] = ()  # remote files in bmc's paths that bmc did not push, left as they are (overwrite)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def local_files(folder: str | Path) -> dict[str, Path]:
    """Files `push_bridged` uploads: those the folder's bmc_files.json lists as the dataset's (written by
    `save_bridged` or a review page), and the manifest itself. What other bmc commands wrote into the same folder
    (`bridge --out`'s files, a demo's call cache) stays local."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    out = {rel: folder / rel for rel, record in sorted(manifest.files.items())
           if (record.writer == SAVE_WRITER or record.writer.startswith(REPORT_WRITER)) and (folder / rel).is_file()}
    if manifest.files and (folder / MANIFEST).is_file():
        out[MANIFEST] = folder / MANIFEST
    return dict(sorted(out.items()))


def _same(record: FileRecord, remote: Any) -> bool:
    """The remote file has these bytes (LFS files by sha256, the others by git blob id)."""
    if remote.size != record.size:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == record.sha256
    return remote.blob_id == record.git_sha1


def _pushed_by_bmc(rel: str, remote: Any, manifest: Manifest) -> bool:
    record = manifest.files.get(rel)
    return record is not None and _same(record, remote)


@dataclass
class _Plan:
    uploads: dict[str, bytes | Path]
    deletes: list[str]
    blocked: list[str]
    kept: list[str]
    records: dict[str, FileRecord]
    readme_merged: bool


def _plan(folder: Path, repo_id: str, remote: dict[str, Any], read_remote: Any, *, overwrite: bool) -> _Plan:
    """What one push uploads, deletes and refuses; `read_remote(rel) -> bytes` downloads a remote file."""
    local_manifest = read_manifest(folder)
    local = {rel: path for rel, path in local_files(folder).items() if rel != MANIFEST}
    remote_manifest = parse_manifest(read_remote(MANIFEST)) if MANIFEST in remote else Manifest()
    plan = _Plan({}, [], [], [], {}, False)
    for rel, path in local.items():
        writer = local_manifest.files[rel].writer
        there = remote.get(rel)
        if rel == README and there is not None and not _pushed_by_bmc(rel, there, remote_manifest):
            merged = merge_card(read_remote(rel).decode("utf-8", errors="replace"), path.read_text(encoding="utf-8"))
            plan.readme_merged = True  # someone else's README: not listed as bmc's, so the next push merges again
            if not _same(file_record(merged.encode(), writer), there):
                plan.uploads[rel] = merged.encode("utf-8")
            continue
        record = file_record(path, writer)
        if there is not None and not _same(record, there) and not _pushed_by_bmc(rel, there, remote_manifest):
            plan.blocked.append(rel)
            if not overwrite:
                continue
        if there is None or not _same(record, there):
            plan.uploads[rel] = path
        plan.records[rel] = record
    scope = local_manifest.scope()
    for rel, there in remote.items():
        if rel in local or rel == MANIFEST or rel == README:
            continue
        if rel in remote_manifest.files and _pushed_by_bmc(rel, there, remote_manifest):
            plan.deletes.append(rel)  # bmc pushed it and the folder no longer has it: a stale shard or figure
        elif rel in remote_manifest.files or in_scope(rel, scope):
            plan.blocked.append(rel)  # changed since bmc pushed it, or someone else's file inside bmc's paths
            plan.kept.append(rel)
    if MANIFEST in remote and not remote_manifest.valid:
        plan.blocked.append(MANIFEST)
    if plan.blocked and not overwrite:
        raise OutputConflict(
            f"{repo_id} on the Hub: {len(plan.blocked)} file(s) in bmc's paths that bmc did not push or that changed "
            f"since: {describe(plan.blocked)}; remove them on the Hub, push to another repo, or {OVERWRITE_HINT}")
    scopes = {w: s for w, s in local_manifest.scopes.items() if any(r.writer == w for r in plan.records.values())}
    manifest_bytes = Manifest(plan.records, scopes).to_bytes()
    if MANIFEST not in remote or not _same(file_record(manifest_bytes, "push"), remote[MANIFEST]):
        plan.uploads[MANIFEST] = manifest_bytes
    return plan


def _remote_state(api: Any, repo_id: str, revision: str | None = None) -> tuple[str, dict[str, Any]]:
    from huggingface_hub.hf_api import RepoFile

    head = api.repo_info(repo_id, repo_type="dataset", revision=revision).sha
    return head, {f.path: f for f in api.list_repo_tree(repo_id, repo_type="dataset", revision=head, recursive=True)
                  if isinstance(f, RepoFile)}


def check_remote_free(repo_id: str, scopes: Mapping[str, Sequence[str]], *, overwrite: bool = False,
                      token: str | None = None, endpoint: str | None = None) -> None:
    """Before any paid call: refuse (`OutputConflict`) when the repo holds files in bmc's paths (`scopes`, writer ->
    paths) that bmc did not push or that changed since; the push checks again, file by file. A repo that does not
    exist yet, or a Hub that cannot be asked now, is no refusal (the push reports it)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    api = HfApi(endpoint=endpoint, token=token)
    try:
        head, remote = _remote_state(api, repo_id)
        manifest = parse_manifest(Path(api.hf_hub_download(repo_id, MANIFEST, repo_type="dataset", revision=head))
                                  .read_bytes()) if MANIFEST in remote else Manifest()
    except RepositoryNotFoundError:
        return
    except (HfHubHTTPError, OSError) as error:
        logger.debug("could not look at %s before the run (%s); the push checks it", repo_id, error)
        return
    scope = {s for paths in scopes.values() for s in paths}
    blocked = sorted(rel for rel, there in remote.items()
                     if rel != README and (rel in manifest.files or in_scope(rel, scope))
                     and not _pushed_by_bmc(rel, there, manifest))
    if MANIFEST in remote and not manifest.valid:
        blocked.append(MANIFEST)
    if blocked and not overwrite:
        raise OutputConflict(
            f"{repo_id} on the Hub: {len(blocked)} file(s) in bmc's paths that bmc did not push or that changed "
            f"since: {describe(blocked)}; remove them on the Hub, push to another repo, or {OVERWRITE_HINT}")


def push_bridged(
    out_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload BMC bridged dataset",
    commit_description: str | None = None,
    endpoint: str | None = None,
    overwrite: bool = False,
) -> PushResult:
    """Push a `save_bridged` folder to the Hub dataset repo `repo_id` in a single commit.

    The repo is created if needed. Only the files bmc wrote in the folder are uploaded, files identical to the
    remote ones are not re-uploaded, and remote files that an earlier push wrote and the folder no longer has are
    deleted in the same commit (only while unchanged on the Hub). Anything else on the Hub is never deleted; a file
    bmc did not push at a path it writes, or inside data/, figures/ or the review page's folder, is an
    `OutputConflict` unless `overwrite=True` (then those at paths this push writes are replaced, the others kept).
    A README.md bmc did not write is kept and the card merged into it. When nothing changed no commit is made: the
    result names the existing head commit (`created_commit=False`).

    The token comes from `token`, else `HF_TOKEN`, else the saved `hf auth login`; it is never printed or logged.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    folder = Path(out_dir)
    if README not in read_manifest(folder).files or not (folder / README).is_file():
        raise FileNotFoundError(f"{folder} is not a save_bridged folder (README.md and {MANIFEST}, the list of the "
                                "files bmc wrote, expected; save it again, with overwrite for a folder an older bmc "
                                "wrote)")
    api = HfApi(endpoint=endpoint, token=token)
    repo_url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    repo_id = getattr(repo_url, "repo_id", None) or repo_id
    head, remote = _remote_state(api, repo_id)

    def read_remote(rel: str) -> bytes:
        return Path(api.hf_hub_download(repo_id, rel, repo_type="dataset", revision=head)).read_bytes()

    plan = _plan(folder, repo_id, remote, read_remote, overwrite=overwrite)
    if plan.readme_merged:
        logger.warning("%s: README.md on the Hub was not written by bmc (or was edited since): kept, with the "
                       "generated card merged between <!-- bmc:begin --> and <!-- bmc:end -->", repo_id)
    if plan.kept:
        logger.warning("%s: left %d file(s) bmc did not push in its paths on the Hub: %s (datasets may read files "
                       "under data/ that match the card's configs: remove them there if they do not belong)",
                       repo_id, len(plan.kept), describe(plan.kept))
    base_url = f"{api.endpoint}/datasets/{repo_id}/commit/"
    if not plan.uploads and not plan.deletes:
        logger.info("%s already has this content at %s: nothing to push", repo_id, head)
        return PushResult(repo_id, head, base_url + head, False, (), (), plan.readme_merged, tuple(plan.kept))

    operations: list[Any] = [CommitOperationDelete(path_in_repo=rel) for rel in plan.deletes]
    operations += [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=src if isinstance(src, bytes) else str(src))
                   for rel, src in plan.uploads.items()]
    # parent_commit: fail instead of silently overwriting a commit someone pushed since we looked.
    info = api.create_commit(repo_id, operations, repo_type="dataset", commit_message=commit_message,
                             commit_description=commit_description, parent_commit=head)
    logger.info("pushed %d changed and %d deleted file(s) to %s at %s", len(plan.uploads), len(plan.deletes),
                repo_id, info.oid)
    return PushResult(repo_id, info.oid, info.commit_url, info.oid != head, tuple(plan.uploads), tuple(plan.deletes),
                      plan.readme_merged, tuple(plan.kept))
