"""What bmc may replace or remove where it writes: only files it wrote itself, unchanged since. One rule, here.

Every folder bmc writes to (`bridge --out`, a `save_bridged` / `publish` folder, the folder of a review page) gets
`bmc_files.json`, the manifest of the files bmc wrote there, each with its writer, size and hashes, and each
writer's *scope*: the paths it writes (`README.md`, `data/`, ...; a trailing `/` is a folder and all below it).
A pushed Hub repo gets the same manifest (`bmc_data.hub.push`).

A writer (`OutputFolder`) may replace or remove a file only when the manifest lists it and its bytes are still
the ones bmc wrote. Any other file inside its scope is *in the way*: a refusal (`OutputConflict`, exit 2) that names
it, before anything is written, unless `overwrite=True` (`--overwrite`). Overwrite means exactly: a file in the way
at a path this run writes is replaced; a file in the way at a path it does not write is left where it is (with a
warning). Nothing bmc did not write is ever deleted, and nothing outside the writer's scope is ever touched.

One run at a time per folder: `.bmc.lock` names its holder (pid, host, command, start time). A second run is
refused (`OutputLocked`, exit 2) before it does anything; a lock whose process is gone (same host) is taken over
with a warning. The lock is re-entrant within a process (publish holds it while save_bridged and the report write).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError
from .redaction import redact

__all__ = [
    "MANIFEST", "LOCK", "FORMAT", "OutputConflict", "OutputLocked", "FileRecord", "Manifest", "OutputFolder",
    "OVERWRITE_HINT", "folder_lock", "check_free", "file_record", "read_manifest", "parse_manifest", "describe", "in_scope",
]

logger = logging.getLogger("bmc_data.outputs")

MANIFEST = "bmc_files.json"
LOCK = ".bmc.lock"
FORMAT = "bmc-files/1"
ABOUT = ("The files bmc wrote here, with their hashes. bmc replaces or removes only these, and only while they are "
         "unchanged; it never deletes a file it did not write.")
OVERWRITE_HINT = "pass --overwrite (overwrite=True) to replace them; bmc never deletes a file it did not write"


class OutputConflict(UsageError):
    """Files bmc did not write (or that changed since it wrote them) are where it would write."""


class OutputLocked(UsageError):
    """Another bmc run is writing to the same folder."""


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


def file_record(content: Path | bytes, writer: str) -> FileRecord:
    if isinstance(content, (bytes, bytearray)):
        return FileRecord(writer, len(content), *_hashes([bytes(content)], len(content)))
    size = content.stat().st_size
    return FileRecord(writer, size, *_hashes(_read_chunks(content), size))


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


def _write_manifest(folder: Path, manifest: Manifest) -> None:
    tmp = folder / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_bytes(manifest.to_bytes())
    os.replace(tmp, folder / MANIFEST)


def _owned(folder: Path, rel: str, manifest: Manifest) -> bool:
    """The file at `rel` is one bmc wrote, byte for byte."""
    record = manifest.files.get(rel)
    path = folder / rel
    if record is None or path.is_symlink() or not path.is_file():
        return False
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
    blocked = {rel for rel in candidates - {MANIFEST} if not _owned(folder, rel, manifest)}
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
    if blocked and not overwrite:
        raise OutputConflict(f"{folder}: {len(blocked)} file(s) in the way that bmc did not write or that changed "
                             f"since it wrote them: {describe(blocked)}; move them, choose another output folder, "
                             f"or {OVERWRITE_HINT}")
    if blocked:
        logger.warning("%s: overwrite: %d file(s) bmc did not write are in the way: %s; those at a path this run "
                       "writes are replaced, the others are left as they are", folder, len(blocked), describe(blocked))
    return blocked


# --- the lock ---------------------------------------------------------------------------------------------------

_held: dict[str, int] = {}
_held_lock = threading.Lock()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


def _holder_text(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "an unknown holder (the lock file is empty or unreadable)"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}, "
            f"command: {holder.get('command')}")


def _read_holder(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return holder if isinstance(holder, dict) else None
    except (OSError, ValueError):
        return None


def _stale(holder: dict[str, Any] | None) -> bool:
    if not holder or holder.get("host") != socket.gethostname():
        return False  # another machine's process cannot be checked from here
    pid = holder.get("pid")
    return isinstance(pid, int) and pid != os.getpid() and not _pid_alive(pid)


def _command() -> str:
    """The command line as typed: `python -m bmc_data bridge ...` rather than the path of a __main__.py."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = f"python -m {spec.name.removesuffix('.__main__')}" if spec is not None else sys.argv[0]
    return redact(" ".join([program, *sys.argv[1:]]))[:500]


def _create_lock(path: Path) -> None:
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(),
          "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(me, f)


def _acquire(folder: Path) -> None:
    path = folder / LOCK
    for _ in range(3):
        try:
            _create_lock(path)
            return
        except FileExistsError:
            holder = _read_holder(path)
            if not _stale(holder):
                raise OutputLocked(f"{folder} is in use by another bmc run ({_holder_text(holder)}); wait for it to "
                                   f"finish, or delete {path} if that run is gone") from None
            aside = path.with_name(f"{LOCK}.stale-{os.getpid()}")
            try:  # move it aside, then check it is the stale lock we read and not a fresh one from a racing run
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            if _read_holder(aside) != holder:
                try:
                    os.link(aside, path)
                except FileExistsError:
                    pass
                aside.unlink(missing_ok=True)
                continue
            aside.unlink(missing_ok=True)
            logger.warning("%s: took over the lock of a bmc run that is gone (%s)", folder, _holder_text(holder))
    raise OutputLocked(f"{folder} is in use by another bmc run: could not take its lock {path}")


def _mkdirs(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; the ones created, deepest first."""
    created = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{folder}: is a file, expected a folder") from None
    except OSError as error:
        raise UsageError(f"{folder}: cannot create the output folder: {error.strerror or error}") from None
    return created


class folder_lock:  # noqa: N801 - used like a function: `with folder_lock(out):`
    """Hold `folder/.bmc.lock` (created with the folder if needed); re-entrant within the process. Folders it
    created are removed again on release when nothing was written to them."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._created: list[Path] = []

    def __enter__(self) -> Path:
        self._created = _mkdirs(self.folder)
        key = str(self.folder.resolve())
        with _held_lock:
            if _held.get(key):
                _held[key] += 1
                return self.folder
            try:
                _acquire(self.folder)
            except PermissionError as error:
                self._cleanup()
                raise UsageError(f"{self.folder}: cannot write there: {error.strerror or error}") from None
            except BaseException:
                self._cleanup()
                raise
            _held[key] = 1
        return self.folder

    def __exit__(self, *exc: Any) -> None:
        key = str(self.folder.resolve())
        with _held_lock:
            _held[key] -= 1
            if _held[key]:
                return
            del _held[key]
            holder = _read_holder(self.folder / LOCK)
            if holder and holder.get("pid") == os.getpid():
                (self.folder / LOCK).unlink(missing_ok=True)
        self._cleanup()

    def _cleanup(self) -> None:
        for made in self._created:  # deepest first; only while empty
            try:
                made.rmdir()
            except OSError:
                break


# --- one writer's session ---------------------------------------------------------------------------------------


class OutputFolder:
    """One writer in one folder: lock, refuse what is in the way, write, record, remove its own stale files.

        with OutputFolder(out, "bridge", ["bridged.parquet", "summary.json"], overwrite=False) as folder:
            dataset.to_parquet(folder.path("bridged.parquet"))
            folder.write_text("summary.json", text)

    On success the writer's files from an earlier run that it did not write again are removed (when unchanged),
    and `bmc_files.json` lists what it wrote. On failure what it did write is recorded and nothing is removed.
    `protect`: files that are this run's input; never replaced or removed. `handed`: files (relative) the caller
    gave the writer to put exactly where they already are, e.g. plots drawn into the folder: not in the way.
    """

    def __init__(self, folder: str | Path, writer: str, scope: Sequence[str], *, overwrite: bool = False,
                 protect: Iterable[str | Path] = (), handed: Iterable[str] = ()):
        self.folder = Path(folder)
        self.writer = writer
        self.scope = list(scope)
        self.overwrite = overwrite
        self._protect = {str(Path(p).resolve()) for p in protect}
        self._lock = folder_lock(self.folder)
        self._written: list[str] = []
        self._blocked: set[str] = set()
        self._manifest = Manifest()
        self._handed = set(handed)
        self.replaced: list[str] = []  # files an earlier run wrote that this run replaces or removes

    def __enter__(self) -> OutputFolder:
        self._lock.__enter__()
        try:
            self._blocked = set(check_free(self.folder, {self.writer: self.scope}, overwrite=self.overwrite,
                                           handed=self._handed))
            manifest = self._manifest = read_manifest(self.folder)
            self.replaced = sorted(rel for rel, r in manifest.files.items()
                                   if r.writer == self.writer and (self.folder / rel).is_file())
            if self.replaced:
                logger.info("%s: replacing the %d file(s) an earlier bmc run wrote here: %s", self.folder,
                            len(self.replaced), describe(self.replaced, limit=6))
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def _protected(self, path: Path) -> bool:
        return str(path.resolve()) in self._protect

    def path(self, rel: str) -> Path:
        """The path to write `rel` to (its folder created); recorded as written by this writer."""
        if not in_scope(rel, self.scope):
            raise ValueError(f"{self.writer} writes {rel!r}, outside its declared scope {self.scope}")
        path = self.folder / rel
        if self._protected(path):
            raise UsageError(f"{path}: is an input of this run; bmc will not overwrite it: choose another output "
                             "folder")
        if rel not in self._written:  # (a second write of the same file in this run is not checked again)
            if os.path.lexists(path) and rel not in self._handed and not _owned(self.folder, rel, self._manifest):
                if not self.overwrite:
                    raise OutputConflict(f"{path}: bmc did not write this file (or it changed since); "
                                         f"{OVERWRITE_HINT}")
                if path.is_dir() and not path.is_symlink():
                    raise OutputConflict(f"{path}: is a folder where bmc writes a file; move it away")
                path.unlink()  # a link is replaced, never written through
            self._written.append(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_bytes(self, rel: str, data: bytes) -> Path:
        path = self.path(rel)
        path.write_bytes(data)
        return path

    def write_text(self, rel: str, text: str) -> Path:
        return self.write_bytes(rel, text.encode("utf-8"))

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self._record(success=exc_type is None)
        finally:
            self._lock.__exit__(exc_type, exc, tb)

    def _record(self, *, success: bool) -> None:
        manifest = read_manifest(self.folder)  # afresh: another writer of this process may have recorded since
        if not manifest.valid:
            manifest = Manifest()
        mine = {rel: r for rel, r in manifest.files.items() if r.writer == self.writer}
        written = {rel: file_record(self.folder / rel, self.writer) for rel in self._written
                   if (self.folder / rel).is_file() and not (self.folder / rel).is_symlink()}
        if not written and not mine and not success:
            return
        removed, kept = [], []
        for rel in mine:
            if rel in written:
                continue
            path = self.folder / rel
            if not os.path.lexists(path):
                continue
            if not success or self._protected(path):
                written.setdefault(rel, mine[rel])  # still bmc's, and still listed
                continue
            if _owned(self.folder, rel, manifest):
                path.unlink()
                removed.append(rel)
                self._prune(path.parent)
            else:
                kept.append(rel)  # changed since bmc wrote it (only reachable with overwrite): it is theirs now
        files = {rel: r for rel, r in manifest.files.items() if r.writer != self.writer and rel not in written}
        files.update(written)
        if not files and not (self.folder / MANIFEST).exists():
            return
        scopes = dict(manifest.scopes)
        scopes[self.writer] = sorted(set(self.scope))
        _write_manifest(self.folder, Manifest(files, {w: s for w, s in scopes.items()
                                                       if any(r.writer == w for r in files.values())}))
        if removed:
            logger.info("%s: removed %d file(s) an earlier bmc run wrote and this one did not: %s", self.folder,
                        len(removed), describe(removed, limit=6))
        if kept:
            logger.warning("%s: left %d file(s) that changed since bmc wrote them: %s", self.folder, len(kept),
                           describe(kept))
        untouched = sorted(self._blocked - set(written) - {MANIFEST})
        if untouched:
            logger.warning("%s: left %d file(s) bmc did not write inside its own paths: %s (they are not bmc's: "
                           "not pushed, not replaced)", self.folder, len(untouched), describe(untouched))

    def _prune(self, folder: Path) -> None:
        """Remove folders emptied by removing a stale file, up to the output folder."""
        root = self.folder.resolve()
        while folder.resolve() != root and root in folder.resolve().parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent
