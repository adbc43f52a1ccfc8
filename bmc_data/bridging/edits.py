"""The edit-list reply format: the editor names spans of y_l and what replaces them, instead of rewriting y_l.

A reply in this format (templates with `reply_format: edits`):

    <verdict>REVISE</verdict>            (QA/math templates only)
    <edits>
    <edit><find>exact text of the response</find><replace>new text</replace></edit>
    ...
    </edits>

Rules of `apply_edits`, in order over the edits: each `find` must occur exactly once in the part of y_l after
the previous edit's span (so a span repeated earlier in y_l is fine once an earlier edit has passed it); that
occurrence is replaced by `replace`; everything between edits is kept as is. Failure reasons (`EditError`,
shown to the model in the repair turn, then the row's reason):

* "the <edits> block is missing" / "the <edits> block contains no <edit>"
* "edit K has no <find> block" / "edit K has no <replace> block"
* "edit K: the span to find is empty" (allowed only where nothing of y_l is left: an append at its very end)
* "edit K: the span '...' does not occur in the response" (or "... after the previous edit's span")
* "edit K: the span '...' occurs N times after the previous edit's span; quote more context to make it unique"

`edits_between(a, b)` builds the shortest such list (token-level diff, spans widened until unique) that turns
`a` into `b`: the benchmark's and the tests' reference, and what an ideal editor would write.
"""

from __future__ import annotations

import bisect
import difflib
import re
from dataclasses import dataclass

from .parsing import ParsedReply, ReplyFormatError, Verdict, reply_verdict

_TOKEN = re.compile(r"\s+|\w+|[^\w\s]")
_EDIT = re.compile(r"<\s*edit\s*>(.*?)<\s*/\s*edit\s*>", flags=re.S | re.I)


class EditError(ReplyFormatError):
    """An edit list that cannot be applied; the message is the documented reason."""


@dataclass(frozen=True)
class Edit:
    find: str  # an exact span of the text being edited
    replace: str


def quoted(text: str, limit: int = 60) -> str:
    """`text` quoted for a row's reason, cut to `limit` characters."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _locate(text: str, start: int, find: str, number: int) -> int:
    """Where `find` occurs exactly once in text[start:], else EditError with the reason."""
    first = text.find(find, start)
    if first == -1:
        where = "after the previous edit's span" if number > 1 and find in text else "in the response"
        raise EditError(f"edit {number}: the span {quoted(find)} does not occur {where}")
    if text.find(find, first + 1) != -1:
        count, at = 0, first
        while at != -1:
            count, at = count + 1, text.find(find, at + 1)
        scope = "after the previous edit's span" if number > 1 else "in the response"
        raise EditError(f"edit {number}: the span {quoted(find)} occurs {count} times {scope}; quote more context "
                        "to make it unique")
    return first


def apply_edits(text: str, edits: list[Edit]) -> str:
    """`text` with every edit applied, in order (see the module docstring for the rules and failure reasons)."""
    out: list[str] = []
    cursor = 0
    for number, edit in enumerate(edits, 1):
        find, replace = edit.find, edit.replace
        if not find and cursor < len(text):
            raise EditError(f"edit {number}: the span to find is empty")
        try:
            at = _locate(text, cursor, find, number)
        except EditError:
            # models often put the tags on lines of their own: accept a span whose only difference is that
            trimmed = find.strip("\n")
            if trimmed == find or not trimmed or text.find(trimmed, cursor) == -1:
                raise
            at = _locate(text, cursor, trimmed, number)
            find = trimmed
            if replace.startswith("\n") and replace.endswith("\n"):
                replace = replace[1:-1]
        out.append(text[cursor:at])
        out.append(replace)
        cursor = at + len(find)
    out.append(text[cursor:])
    return "".join(out)


def edits_between(a: str, b: str) -> list[Edit]:
    """The edits that turn `a` into `b` under `apply_edits`' rules (empty when they are equal)."""
    ta, tb = _TOKEN.findall(a), _TOKEN.findall(b)
    offs_a, offs_b = [0], [0]
    for token in ta:
        offs_a.append(offs_a[-1] + len(token))
    for token in tb:
        offs_b.append(offs_b[-1] + len(token))
    spans: list[list] = []  # [start, end, replacement] in characters of a
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, ta, tb, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        start, end, new = offs_a[i1], offs_a[i2], b[offs_b[j1]:offs_b[j2]]
        if spans and spans[-1][1] == start:
            spans[-1][1], spans[-1][2] = end, spans[-1][2] + new
        else:
            spans.append([start, end, new])
    bounds = offs_a  # token starts and len(a): the tokens cover a end to end
    edits: list[Edit] = []
    cursor, i = 0, 0
    while i < len(spans):
        start, end, new = spans[i]
        # widen the span, right first, then left, until it is the only occurrence after the cursor
        while not (a.find(a[start:end], cursor) == start and a.find(a[start:end], start + 1) == -1):
            if end < len(a):
                wider = bounds[bisect.bisect_right(bounds, end)]
                if i + 1 < len(spans) and spans[i + 1][0] < wider:  # ran into the next edit: one edit now
                    nxt = spans.pop(i + 1)
                    new, end = new + a[end:nxt[0]] + nxt[2], nxt[1]
                else:
                    new, end = new + a[end:wider], wider
            elif start > cursor:
                earlier = max(cursor, bounds[bisect.bisect_left(bounds, start) - 1])
                new, start = a[earlier:start] + new, earlier
            else:  # pragma: no cover - the whole remainder is always unique in itself
                break
        edits.append(Edit(a[start:end], new))
        cursor = end
        i += 1
    return edits


def format_edits(edits: list[Edit]) -> str:
    """The `<edits>` block a model would write for `edits`."""
    body = "".join(f"<edit><find>{e.find}</find><replace>{e.replace}</replace></edit>\n" for e in edits)
    return f"<edits>\n{body}</edits>"


def parse_edits(block: str) -> list[Edit]:
    """The edits of an `<edits>` block's content, in order."""
    edits = []
    for number, match in enumerate(_EDIT.finditer(block), 1):
        inner = match.group(1)
        find = re.search(r"<\s*find\s*>(.*?)<\s*/\s*find\s*>", inner, flags=re.S | re.I)
        replace = re.search(r"<\s*replace\s*>(.*?)<\s*/\s*replace\s*>", inner, flags=re.S | re.I)
        if find is None:
            raise EditError(f"edit {number} has no <find> block")
        if replace is None:
            raise EditError(f"edit {number} has no <replace> block")
        edits.append(Edit(find.group(1), replace.group(1)))
    if not edits:
        raise EditError("the <edits> block contains no <edit>")
    return edits


def parse_edit_reply(text: str, rejected: str, *, requires_verdict: bool) -> ParsedReply:
    """Parse an edit-list reply and apply it to `rejected`: `ParsedReply.revised` is the edited response."""
    body, verdict = reply_verdict(text, requires_verdict=requires_verdict, error=EditError)
    if verdict is Verdict.GOOD:
        return ParsedReply(verdict, None)
    match = re.search(r"<\s*edits\s*>(.*?)(?:<\s*/\s*edits\s*>|\Z)", body, flags=re.S | re.I)
    if match is None:
        raise EditError("the <edits> block is missing")
    return ParsedReply(verdict or Verdict.REVISE, apply_edits(rejected, parse_edits(match.group(1))))
