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

`remove_written(folder)` (`make clean`) removes the listed files that are unchanged, and nothing else.
"""

from __future__ import annotations

from .folder import OutputFolder, remove_written
from .lock import LOCK, OutputLocked, folder_lock
from .manifest import (
    FORMAT,
    MANIFEST,
    OVERWRITE_HINT,
    REPORT_WRITER,
    FileRecord,
    Manifest,
    OutputConflict,
    check_free,
    describe,
    file_record,
    in_scope,
    parse_manifest,
    read_manifest,
)

__all__ = [
    "MANIFEST", "LOCK", "FORMAT", "OVERWRITE_HINT", "OutputConflict", "OutputLocked", "FileRecord", "Manifest",
    "OutputFolder", "folder_lock", "check_free", "file_record", "read_manifest", "parse_manifest", "describe",
    "in_scope", "remove_written", "REPORT_WRITER",
]
