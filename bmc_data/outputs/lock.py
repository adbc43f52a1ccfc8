"""`.bmc.lock`: one bmc run at a time per output folder; the lock names its holder (pid, host, command, start time),
and a lock whose process is gone (same host) is taken over with a warning. Re-entrant within a process."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from bmc_data.errors import UsageError
from bmc_data.redaction import redact

logger = logging.getLogger("bmc_data.outputs")

LOCK = ".bmc.lock"


class OutputLocked(UsageError):
    """Another bmc run is writing to the same folder."""


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
    if pid == os.getpid():
        # this process does not hold it (re-entry is found before a lock file is read): a killed run's lock whose
        # pid came round again, as it does in containers, which start their processes at the same pids
        return True
    return isinstance(pid, int) and not _pid_alive(pid)


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


class folder_lock:  # lower case: used like a function, `with folder_lock(out):`
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

    def __exit__(self, *exc: object) -> None:
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
