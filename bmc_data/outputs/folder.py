"""`OutputFolder`: one writer in one folder: lock it, refuse what is in the way, write, record, remove its own
stale files."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from bmc_data.errors import UsageError

from .lock import folder_lock
from .manifest import (
    MANIFEST,
    OVERWRITE_HINT,
    PENDING,
    FileRecord,
    Manifest,
    OutputConflict,
    check_free,
    describe,
    file_record,
    in_scope,
    is_bmcs,
    read_manifest,
    write_manifest,
)

logger = logging.getLogger("bmc_data.outputs")

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
            inputs = {rel for rel in self._relative(self._protect)}  # this run's input: kept, so not in the way
            self._blocked = set(check_free(self.folder, {self.writer: self.scope}, overwrite=self.overwrite,
                                           handed=self._handed | inputs))
            manifest = self._manifest = read_manifest(self.folder)
            self.replaced = sorted(rel for rel, r in manifest.files.items()
                                   if r.writer == self.writer and (self.folder / rel).is_file() and rel not in inputs)
            if self.replaced:
                logger.info("%s: replacing the %d file(s) an earlier bmc run wrote here: %s", self.folder,
                            len(self.replaced), describe(self.replaced, limit=6))
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def _relative(self, paths: Iterable[str]) -> Iterator[str]:
        root = self.folder.resolve()
        for path in map(Path, paths):
            if root in path.parents:
                yield path.relative_to(root).as_posix()

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
        for parent in list(path.relative_to(self.folder).parents)[:-1]:
            step = self.folder / parent
            if step.is_symlink() or (step.exists() and not step.is_dir()):
                raise OutputConflict(f"{step}: bmc needs a folder here and will not write through a link or "
                                     "replace a file with a folder; move it away")
        if rel not in self._written:  # (a second write of the same file in this run is not checked again)
            if os.path.lexists(path) and rel not in self._handed and not is_bmcs(self.folder, rel, self._manifest):
                if not self.overwrite:
                    raise OutputConflict(f"{path}: bmc did not write this file (or it changed since); "
                                         f"{OVERWRITE_HINT}")
                if path.is_dir() and not path.is_symlink():
                    raise OutputConflict(f"{path}: is a folder where bmc writes a file; move it away")
                path.unlink()  # a link is replaced, never written through
            self._written.append(rel)
            self._intend(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _intend(self, rel: str) -> None:
        """Record `rel` as bmc's before its first byte is written: a run killed mid-write (SIGKILL, out of memory)
        leaves a file the next run may replace, not one it must refuse as changed."""
        manifest = read_manifest(self.folder)
        if not manifest.valid:  # someone else's file of that name: replaced only at the end (overwrite)
            return
        manifest.files[rel] = FileRecord(self.writer, -1, PENDING, "")
        manifest.scopes.setdefault(self.writer, sorted(set(self.scope)))
        write_manifest(self.folder, manifest)

    def write_bytes(self, rel: str, data: bytes) -> Path:
        path = self.path(rel)
        path.write_bytes(data)
        return path

    def write_text(self, rel: str, text: str) -> Path:
        return self.write_bytes(rel, text.encode("utf-8"))

    def adopt_tree(self, source: str | Path, prefix: str) -> None:
        """Move every file of `source` (a folder a library wrote, e.g. `save_pretrained` into a temporary folder of
        this one) to `prefix/<its path>`, each through `path()`: the same checks and the same record as a file
        this writer wrote itself."""
        source = Path(source)
        for file in sorted(f for f in source.rglob("*") if f.is_file() and not f.is_symlink()):
            os.replace(file, self.path(f"{prefix.rstrip('/')}/{file.relative_to(source).as_posix()}"))

    def keep_tree(self, prefix: str) -> bool:
        """Reuse what an earlier run of this writer wrote under `prefix/` instead of writing it again. True when
        there are files and bmc wrote each of them, unchanged since: each is then recorded again, so that the end
        of this run does not remove it as stale. Otherwise False, and nothing is recorded or touched: the caller
        writes the tree anew, through `path()` and its rules."""
        root = self.folder / prefix.rstrip("/")
        rels = sorted(f.relative_to(self.folder).as_posix() for f in root.rglob("*") if f.is_file()) \
            if root.is_dir() and not root.is_symlink() else []
        def complete(rel: str) -> bool:  # (a PENDING file's run was killed while writing it: not reusable)
            record = self._manifest.files.get(rel)
            return (record is not None and record.writer == self.writer and record.sha256 != PENDING
                    and is_bmcs(self.folder, rel, self._manifest))

        if not rels or not all(map(complete, rels)):
            return False
        for rel in rels:
            self.path(rel)
        return True

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
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
        for rel, record in mine.items():
            if rel in written:
                continue
            path = self.folder / rel
            if not os.path.lexists(path):
                continue
            if not success or self._protected(path):
                written.setdefault(rel, record)  # still bmc's, and still listed
                continue
            if is_bmcs(self.folder, rel, manifest):
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
        write_manifest(self.folder, Manifest(files, {w: s for w, s in scopes.items()
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


def remove_written(folder: str | Path) -> tuple[list[str], list[str]]:
    """Remove what bmc wrote in `folder` (`make clean`): each file its manifest lists, while unchanged, then the
    manifest and the folders this emptied. Returns (removed, kept): a listed file changed since is kept, and a file
    bmc did not write is never looked at. Takes the folder's lock, so it never removes a running writer's files."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        return [], []
    with folder_lock(folder):
        manifest = read_manifest(folder)
        if not manifest.valid:
            raise UsageError(f"{folder / MANIFEST}: is not a bmc manifest; bmc removes nothing there")
        removed, kept = [], []
        for rel in sorted(manifest.files):
            path = folder / rel
            if not os.path.lexists(path):
                continue
            # a PENDING record (its run was killed mid-write) cannot prove the bytes are bmc's: kept
            if manifest.files[rel].sha256 != PENDING and is_bmcs(folder, rel, manifest):
                path.unlink()
                removed.append(rel)
            else:
                kept.append(rel)
        write_manifest(folder, Manifest({rel: manifest.files[rel] for rel in kept}, manifest.scopes))
        if not kept:
            (folder / MANIFEST).unlink()
        # the folders of the files it listed and of its writers' scopes, deepest first, when now empty
        folders = {(folder / rel).parent for rel in manifest.files}
        folders |= {folder / entry for scope in manifest.scopes.values() for entry in scope if entry.endswith("/")}
        for directory in sorted(folders, key=lambda d: -len(d.parts)):
            while directory != folder and folder in directory.parents:
                try:
                    directory.rmdir()
                except OSError:
                    break
                directory = directory.parent
    try:
        folder.rmdir()  # only when nothing else is left in it
    except OSError:
        pass
    return removed, kept
