"""A README on the Hub that bmc did not write is kept: the generated card is merged into it, never put in its place.

The generated body goes between `<!-- bmc:begin -->` and `<!-- bmc:end -->`: it replaces what is between the
markers when the README has them, else it is appended after the README's own text. In the YAML header the keys that
describe the data bmc pushes (`configs`, `dataset_info`, `size_categories`) are the generated ones, so `datasets`
reads the right files, except that the README's entries of `configs` / `dataset_info` for configs bmc does not write
(its own files) are kept after bmc's; every other key the README has (license, tags, a description, ...) is kept,
and the ones it lacks are added. The header's text is kept as written (comments, quoting, order): only the blocks
of the keys bmc sets are replaced, and new keys are appended; a header whose text cannot be edited that way (flow
style, anchors) is written out again from its values, which are all kept.
"""

from __future__ import annotations

import re

import yaml

from .card import BEGIN, END

__all__ = ["BMC_KEYS", "merge_card"]

#: YAML keys the generated card decides even in a merged README: they must describe the files bmc pushed
BMC_KEYS = ("configs", "dataset_info", "size_categories")


_HEADER = re.compile(r"\A---[ \t]*\r?\n(.*?\r?\n)?---[ \t]*(\r?\n|\Z)", re.DOTALL)


def _split(text: str) -> tuple[dict, str, str]:
    """(YAML header, its text, body), keys in the README's order; a header that does not parse stays in the body,
    untouched."""
    match = _HEADER.match(text)
    if not match:
        return {}, "", text
    try:
        meta = yaml.safe_load(match.group(1) or "") or {}
    except yaml.YAMLError:
        return {}, "", text
    if not isinstance(meta, dict):
        return {}, "", text
    return meta, match.group(1) or "", text[match.end():]


_TOP_KEY = re.compile(r"^([^\s#'\"{}\[\]:-][^:#]*?|'[^']*'|\"[^\"]*\"):(\s|$)")


def _key(text: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def _edited_header(text: str, meta: dict, changed: dict) -> str:
    """`text` (the README's header) with the top-level blocks of `changed`'s keys replaced and its new keys
    appended; every other line as written. Checked by parsing: when the result does not read back as `meta`,
    the header is written out again from `meta` instead."""
    lines = text.splitlines(keepends=True)
    starts = [(i, _key(m.group(1))) for i, line in enumerate(lines) if (m := _TOP_KEY.match(line))]
    blocks = {}
    for k, (i, key) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(lines)
        while end > i + 1 and (not lines[end - 1].strip() or lines[end - 1].startswith("#")):
            end -= 1  # blank lines and comments before the next key are kept with it
        blocks[key] = (i, end)
    replaced = {}
    for key, value in changed.items():
        dumped = yaml.safe_dump({key: value}, sort_keys=False, allow_unicode=True)
        if key in blocks:
            replaced[blocks[key][0]] = (blocks[key][1], dumped)
        else:
            lines.append(("" if not lines or lines[-1].endswith("\n") else "\n") + dumped)
    out, i = [], 0
    while i < len(lines):
        if i in replaced:
            end, dumped = replaced[i]
            out.append(dumped)
            i = end
        else:
            out.append(lines[i])
            i += 1
    edited = "".join(out).strip("\n")
    try:
        if yaml.safe_load(edited) == meta:
            return edited
    except yaml.YAMLError:
        pass
    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip()


def _section(body: str) -> str:
    """The marked section of a body, markers included (the whole body, marked, when it has none)."""
    start, end = body.find(BEGIN), body.find(END)
    if start != -1 and end > start:
        return body[start:end + len(END)]
    return f"{BEGIN}\n{body.strip()}\n{END}"


_PER_CONFIG = ("configs", "dataset_info")  # lists with one entry per `config_name`


def _other_configs(theirs: list, ours: list) -> list:
    """The README's entries for configs bmc does not write (their own files): kept. Only one config may be the
    default, and bmc's `default` is by its name, so such an entry loses its `default: true`."""
    names = {entry.get("config_name") for entry in ours if isinstance(entry, dict)}
    kept = [entry for entry in theirs if isinstance(entry, dict) and entry.get("config_name") not in names]
    return [{k: v for k, v in entry.items() if k != "default"} if "default" in names else entry for entry in kept]


def merge_card(existing: str, generated: str) -> str:
    """The README to push when the one on the Hub (`existing`) is not bmc's own: see the module docstring."""
    meta, header_text, body = _split(existing)
    generated_meta, _, generated_body = _split(generated)
    changed = {}
    for key, value in generated_meta.items():
        if key in _PER_CONFIG and isinstance(value, list) and isinstance(meta.get(key), list):
            changed[key] = value + _other_configs(meta[key], value)
        elif key in BMC_KEYS or key not in meta:
            changed[key] = value
    changed = {key: value for key, value in changed.items() if meta.get(key, object()) != value}
    meta.update(changed)
    section = _section(generated_body)
    start, end = body.find(BEGIN), body.find(END)
    if start != -1 and end > start:
        body = body[:start] + section + body[end + len(END):]
    else:
        body = body.rstrip() + ("\n\n" if body.strip() else "") + section + "\n"
    header = _edited_header(header_text, meta, changed)
    return f"---\n{header}\n---\n\n{body.lstrip()}"
