"""Versioned prompt templates for targeted modification, loaded from the top-level `prompts/` folder.

Each template file carries a human version id; its SHA-256 is computed from the file bytes, so any edit —
even one that forgets to bump the version — changes `Template.version_id`, the cache key and provenance.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from bmc_data.pairs.schema import Task

_PACKAGE = "bmc_data.prompts"
_FIELDS = {"prompt", "chosen", "rejected"}


@dataclass(frozen=True)
class Template:
    name: str
    version: str
    tasks: tuple[Task, ...]
    requires_verdict: bool
    system: str
    user: str
    repair: str
    sha256: str
    text: str  # the whole file, for dataset cards
    reply_format: str = "full"  # one of REPLY_FORMATS

    @property
    def version_id(self) -> str:
        """`<version>@<first 12 hex of sha256>`: what provenance columns and cache keys record."""
        return f"{self.version}@{self.sha256[:12]}"

    def render(self, *, prompt: str, chosen: str, rejected: str) -> list[dict[str, str]]:
        user = self.user.format(prompt=prompt, chosen=chosen, rejected=rejected)
        messages = [{"role": "system", "content": self.system.strip()}] if self.system.strip() else []
        messages.append({"role": "user", "content": user.strip()})
        return messages

    def render_repair(self, error: str) -> str:
        return self.repair.format(error=error).strip()


def _check_placeholders(name: str, field: str, text: str, allowed: set[str]) -> None:
    used = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    unknown = used - allowed
    if unknown:
        raise ValueError(f"template {name!r}: field {field!r} uses unknown placeholders {sorted(unknown)}; allowed: {sorted(allowed)}")


def parse_template(raw: bytes, *, source: str = "<bytes>") -> Template:
    try:
        spec = yaml.safe_load(raw.decode("utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"template {source}: invalid YAML: {err}") from err
    missing = {"name", "version", "tasks", "user", "repair"} - set(spec or {})
    if missing:
        raise ValueError(f"template {source}: missing keys {sorted(missing)}")
    _check_placeholders(spec["name"], "user", spec["user"], _FIELDS)
    _check_placeholders(spec["name"], "repair", spec["repair"], {"error"})
    return Template(
        name=spec["name"],
        version=str(spec["version"]),
        tasks=tuple(Task(t) for t in spec["tasks"]),
        requires_verdict=bool(spec.get("requires_verdict", False)),
        system=spec.get("system", ""),
        user=spec["user"],
        repair=spec["repair"],
        sha256=hashlib.sha256(raw).hexdigest(),
        text=raw.decode("utf-8"),
        reply_format=_reply_format(spec.get("reply_format", "full"), source),
    )


#: "full": the editor writes ỹ_w; "edits": tagged replacements (`edits`); "structured": a JSON object constrained
#: by a per-pair schema, edits anchored to segments of y_l (`protocol`)
REPLY_FORMATS = ("full", "edits", "structured")


def _reply_format(value: object, source: str) -> str:
    if value not in REPLY_FORMATS:
        raise ValueError(f"template {source}: reply_format must be one of {list(REPLY_FORMATS)}, got {value!r}")
    return str(value)


def available_templates() -> list[Template]:
    folder = resources.files(_PACKAGE)
    return [parse_template(p.read_bytes(), source=p.name) for p in sorted(folder.iterdir(), key=lambda p: p.name) if p.name.endswith(".yaml")]


def load_template(task: Task | str | None = None, *, path: str | Path | None = None, version: str | None = None,
                  reply_format: str = "full") -> Template:
    """The template for `task` and `reply_format` (newest version unless `version` is given), or the file at `path`."""
    if path is not None:
        return parse_template(Path(path).read_bytes(), source=str(path))
    if task is None:
        raise ValueError("load_template needs a task ('qa', 'math' or 'instruction') or a path")
    task = Task(task)
    _reply_format(reply_format, "request")
    candidates = [t for t in available_templates() if task in t.tasks and (
        t.version == version if version is not None else t.reply_format == reply_format)]
    if not candidates:
        raise ValueError(f"no prompt template for task {task.value!r}" + (
            f" with version {version!r}" if version else f" with reply_format {reply_format!r}"))
    return sorted(candidates, key=lambda t: t.version)[-1]
