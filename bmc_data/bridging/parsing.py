"""Robust parsing of the editor LLM's tagged reply.

The format is tag based (`<verdict>…</verdict><revised>…</revised>`) rather than JSON: long solutions with
quotes, backslashes and LaTeX survive it without escaping, and small models follow it more reliably. A JSON
object with the same keys is accepted as well, as are code fences around either.

The `<revised>` block runs to the *last* `</revised>` of the reply (it is the reply's last block), so the
revised text may contain the tag itself. Its content is kept as written (fenced code included), except for
surrounding whitespace and, when the rejected response has no code fence, fences the editor wrapped around
the whole of it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum


class Verdict(str, Enum):
    GOOD = "good"  # y_l is already good enough: filter the pair out
    REVISE = "revise"


class ReplyFormatError(ValueError):
    """The reply cannot be used; the message says why (it is shown to the model in the repair turn)."""


_GOOD_WORDS = {"good", "good enough", "correct", "already correct", "yes", "ok", "keep", "no change", "no changes"}
_REVISE_WORDS = {"revise", "revised", "incorrect", "wrong", "no", "needs revision", "modify", "edit", "bad", "fix"}


@dataclass(frozen=True)
class ParsedReply:
    verdict: Verdict | None
    revised: str | None


def _tag(text: str, name: str, *, to_last: bool = False) -> str | None:
    """The content of the `<name>` block; `to_last`: up to the last closing tag (content may contain the tag)."""
    match = re.search(rf"<\s*{name}\s*>(.{'*' if to_last else '*?'})<\s*/\s*{name}\s*>", text, flags=re.S | re.I)
    if match:
        return match.group(1)
    # an opening tag with no closing one: take everything after it (models often drop the last tag)
    match = re.search(rf"<\s*{name}\s*>(.*)\Z", text, flags=re.S | re.I)
    return match.group(1) if match else None


def strip_fences(text: str) -> str:
    text = text.strip()
    fenced = re.fullmatch(r"```[a-zA-Z]*\s*\n?(.*?)\n?```", text, flags=re.S)
    return fenced.group(1).strip() if fenced else text


def _verdict_from_word(word: str) -> Verdict:
    key = re.sub(r"[^a-z ]", " ", word.lower())
    key = " ".join(key.split())
    if key in _GOOD_WORDS:
        return Verdict.GOOD
    if key in _REVISE_WORDS:
        return Verdict.REVISE
    raise ReplyFormatError(f"the verdict must be GOOD or REVISE, got {word.strip()[:40]!r}")


def reply_verdict(text: str, *, requires_verdict: bool, error: type[ReplyFormatError] = ReplyFormatError
                  ) -> tuple[str, Verdict | None]:
    """The first steps of reading a tagged reply (every tag format): (its body without fences around the whole
    of it, the verdict of its `<verdict>` block or None). Raises `error` when the reply is empty or a required
    verdict is missing, `ReplyFormatError` when the verdict is neither GOOD nor REVISE."""
    body = strip_fences(text or "")
    if not body:
        raise error("the reply is empty")
    verdict_raw = _tag(body, "verdict")
    if verdict_raw is not None and "<" in verdict_raw:  # an unclosed <verdict> swallowed the rest
        verdict_raw = verdict_raw.split("<", 1)[0]
    verdict = _verdict_from_word(verdict_raw) if verdict_raw is not None else None
    _require_verdict(verdict, requires_verdict, error)
    return body, verdict


def _require_verdict(verdict: Verdict | None, requires_verdict: bool, error: type[ReplyFormatError]) -> None:
    if requires_verdict and verdict is None:
        raise error("the <verdict> block is missing")


def _from_json(text: str) -> tuple[str | None, str | None] | None:
    match = re.search(r"\{.*\}", text, flags=re.S)
    if not match:
        return None
    try:
        obj = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    verdict = obj.get("verdict")
    revised = next((obj[k] for k in ("revised", "revised_response", "response", "revision") if k in obj), None)
    return (str(verdict) if verdict is not None else None, str(revised) if revised is not None else None)


def parse_reply(text: str, *, requires_verdict: bool, rejected: str | None = None) -> ParsedReply:
    """Parse the editor's reply; raise `ReplyFormatError` with a reason when it is unusable.

    `rejected`: y_l. When it has no code fence, fences around the whole revised text are the editor's wrapping
    and are removed; without it, or when y_l has fences, the revised text keeps them byte for byte."""
    body, verdict = reply_verdict(text, requires_verdict=False)
    revised = _tag(body, "revised", to_last=True)
    if verdict is None and revised is None:
        from_json = _from_json(body)
        if from_json is None:
            raise ReplyFormatError("it has neither a <verdict> nor a <revised> block")
        verdict_raw, revised = from_json
        verdict = _verdict_from_word(verdict_raw) if verdict_raw is not None else None
    _require_verdict(verdict, requires_verdict, ReplyFormatError)
    if revised is not None:
        revised = revised.strip()
        if rejected is not None and "```" not in rejected:
            revised = strip_fences(revised)
    if verdict is Verdict.GOOD:
        return ParsedReply(verdict, revised or None)
    if not revised:
        raise ReplyFormatError("the <revised> block is missing or empty")
    return ParsedReply(verdict or Verdict.REVISE, revised)
