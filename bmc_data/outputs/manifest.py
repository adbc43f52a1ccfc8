"""`bmc_files.json`: the files bmc wrote in a folder (writer, size, sha256, git blob id) and each writer's scope;
what is *in the way* of a writer (`check_free`): a file in its scope that the manifest does not list as unchanged."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bmc_data.errors import UsageError

logger = logging.getLogger("bmc_data.outputs")

MANIFEST = "bmc_files.json"
FORMAT = "bmc-files/1"
ABOUT = ("The files bmc wrote here, with their hashes. bmc replaces or removes only these, and only while they are "
         "unchanged; it never deletes a file it did not write.")
#: the hash of a file bmc had started to write when its run was killed (recorded before the first byte): still bmc's
PENDING = "pending"
#: a review page's writer is REPORT_WRITER + its file name (`bmc_data.report.page.report_scope`)
REPORT_WRITER = "report:"
OVERWRITE_HINT = "pass --overwrite (overwrite=True) to replace them; bmc never deletes a file it did not write"


class OutputConflict(UsageError):
    """Files bmc did not write (or that changed since it wrote them) are where it would write."""


def describe(paths: Iterable[str], limit: int = 3) -> str:
    """'a, b, c and 4 more': a few names and a count, for one-line messages."""
    items = sorted(paths)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def in_scope(rel: str, scope: Iterable[str]) -> bool:
    return any(rel == s or (s.endswith("/") and rel.startswith(s)) for s in scope)


# --- hashes and the manifest ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileRecord:
    """One file bmc wrote. `git_sha1` is git's blob id, which the Hub reports for files not stored in LFS."""

    writer: str
    size: int
    sha256: str
    git_sha1: str

    def matches(self, size: int, sha256: str) -> bool:
        return self.size == size and self.sha256 == sha256


def _hashes(chunks: Iterable[bytes], size: int) -> tuple[str, str]:
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(b"blob %d\x00" % size)
    for chunk in chunks:
        sha256.update(chunk)
        sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def _read_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        yield from iter(lambda: f.read(1 << 20), b"")


#: (path, size, mtime, inode) -> hashes: a run checks a file up to four times (the command, the writer, the write,
#: the record); a file of gigabytes is hashed once
_hashed: dict[tuple[str, int, int, int], tuple[str, str]] = {}


def file_record(content: Path | bytes, writer: str) -> FileRecord:
    if isinstance(content, (bytes, bytearray)):
        return FileRecord(writer, len(content), *_hashes([bytes(content)], len(content)))
    stat = content.stat()
    key = (str(content.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _hashed:
        _hashed[key] = _hashes(_read_chunks(content), stat.st_size)
    return FileRecord(writer, stat.st_size, *_hashed[key])


@dataclass
class Manifest:
    """`bmc_files.json`: path -> FileRecord, and writer -> scope. `valid` is False for a file of that name that is
    not a bmc manifest (it is then in the way like any other file bmc did not write)."""

    files: dict[str, FileRecord] = field(default_factory=dict)
    scopes: dict[str, list[str]] = field(default_factory=dict)
    valid: bool = True

    def to_bytes(self) -> bytes:
        payload = {
            "format": FORMAT, "about": ABOUT,
            "files": {rel: {"writer": r.writer, "size": r.size, "sha256": r.sha256, "git_sha1": r.git_sha1}
                      for rel, r in sorted(self.files.items())},
            "scopes": {w: sorted(s) for w, s in sorted(self.scopes.items())},
        }
        return (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    def scope(self) -> set[str]:
        return {s for scope in self.scopes.values() for s in scope}


def parse_manifest(blob: bytes | None) -> Manifest:
    if blob is None:
        return Manifest()
    try:
        payload = json.loads(blob.decode("utf-8"))
        if payload.get("format") != FORMAT:
            return Manifest(valid=False)
        files = {str(rel): FileRecord(str(r["writer"]), int(r["size"]), str(r["sha256"]), str(r["git_sha1"]))
                 for rel, r in payload.get("files", {}).items()}
        scopes = {str(w): [str(s) for s in scope] for w, scope in payload.get("scopes", {}).items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        return Manifest(valid=False)
    return Manifest(files, scopes)


def read_manifest(folder: str | Path) -> Manifest:
    path = Path(folder) / MANIFEST
    if path.is_symlink() or (path.exists() and not path.is_file()):
        return Manifest(valid=False)
    return parse_manifest(path.read_bytes() if path.is_file() else None)


def write_manifest(folder: Path, manifest: Manifest) -> None:
    tmp = folder / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_bytes(manifest.to_bytes())
    os.replace(tmp, folder / MANIFEST)


def is_bmcs(folder: Path, rel: str, manifest: Manifest) -> bool:
    """The file at `rel` is one bmc wrote, byte for byte (or was writing when its run was killed)."""
    record = manifest.files.get(rel)
    path = folder / rel
    if record is None or path.is_symlink() or not path.is_file():
        return False
    if record.sha256 == PENDING:
        return True
    size = path.stat().st_size
    return size == record.size and file_record(path, record.writer).sha256 == record.sha256


def _existing(folder: Path, scope: Iterable[str]) -> Iterator[str]:
    """Every path inside `scope` that exists: files, links and (for exact entries) folders, relative to `folder`."""
    for entry in sorted(set(scope)):
        path = folder / entry.rstrip("/")
        if not os.path.lexists(path):
            continue
        if entry.endswith("/") and path.is_dir() and not path.is_symlink():
            for root, dirs, files in os.walk(path):
                for name in sorted(files) + sorted(d for d in dirs if Path(root, d).is_symlink()):
                    yield Path(root, name).relative_to(folder).as_posix()
        else:
            yield entry.rstrip("/")


def in_the_way(folder: Path, scope: Iterable[str], manifest: Manifest, previous: Iterable[str] = ()) -> list[str]:
    """Paths inside `scope` (and the writer's `previous` files) that bmc may not replace or remove."""
    candidates = set(_existing(folder, scope)) | {rel for rel in previous if os.path.lexists(folder / rel)}
    blocked = {rel for rel in candidates - {MANIFEST} if not is_bmcs(folder, rel, manifest)}
    if not manifest.valid:  # a file of that name that is not bmc's manifest
        blocked.add(MANIFEST)
    return sorted(blocked)


def check_free(folder: str | Path, scopes: Mapping[str, Sequence[str]], *, overwrite: bool = False,
               handed: Iterable[str] = ()) -> list[str]:
    """Refuse (`OutputConflict`) when a file bmc did not write is inside one of `scopes` (writer -> scope), or a
    file a writer wrote before has changed since; with `overwrite`, warn instead. Returns those paths.
    `handed`: files the caller gave the writer to put where they already are (not in the way).

    For a command to call before its first paid call; each writer checks again when it starts."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    manifest = read_manifest(folder)
    previous = [rel for rel, r in manifest.files.items() if r.writer in scopes]
    blocked = in_the_way(folder, {s for scope in scopes.values() for s in scope}, manifest, previous)
    blocked = [rel for rel in blocked if rel not in set(handed)]
    # A folder (or a link to one) where bmc writes a file, or a file or link where it needs a folder: overwrite
    # cannot help, since bmc replaces files only and never writes through a link.
    folders = {s.rstrip("/") for scope in scopes.values() for s in scope if s.endswith("/")}
    hard = [rel for rel in blocked if (folder / rel).is_dir() or rel in folders]
    if hard:
        raise OutputConflict(f"{folder}: {len(hard)} folder(s), link(s) or file(s) where bmc needs the other kind: "
                             f"{describe(hard)}; move them or choose another output folder")
    if blocked and not overwrite:
        raise OutputConflict(f"{folder}: {len(blocked)} file(s) in the way that bmc did not write or that changed "
                             f"since it wrote them: {describe(blocked)}; move them, choose another output folder, "
                             f"or {OVERWRITE_HINT}")
    if blocked:
        logger.warning("%s: overwrite: %d file(s) bmc did not write are in the way: %s; those at a path this run "
                       "writes are replaced, the others are left as they are", folder, len(blocked), describe(blocked))
    return blocked
