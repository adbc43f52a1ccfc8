"""Robust parsing of the editor LLM's structured reply.

The format is tag based (`<verdict>…</verdict><revised>…</revised>`) rather than JSON: long solutions with
quotes, backslashes and LaTeX survive it without escaping, and small models follow it more reliably. A JSON
object with the same keys is accepted as well, as are code fences around either.
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


def _tag(text: str, name: str) -> str | None:
    match = re.search(rf"<\s*{name}\s*>(.*?)<\s*/\s*{name}\s*>", text, flags=re.S | re.I)
    if match:
        return match.group(1)
    # an opening tag with no closing one: take everything after it (models often drop the last tag)
    match = re.search(rf"<\s*{name}\s*>(.*)\Z", text, flags=re.S | re.I)
    return match.group(1) if match else None


def _strip_fences(text: str) -> str:
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


def parse_reply(text: str, *, requires_verdict: bool) -> ParsedReply:
    """Parse the editor's reply; raise `ReplyFormatError` with a reason when it is unusable."""
    body = _strip_fences(text or "")
    if not body:
        raise ReplyFormatError("the reply is empty")
    verdict_raw, revised = _tag(body, "verdict"), _tag(body, "revised")
    if verdict_raw is None and revised is None:
        from_json = _from_json(body)
        if from_json is None:
            raise ReplyFormatError("it has neither a <verdict> nor a <revised> block")
        verdict_raw, revised = from_json
    # <verdict> may have swallowed the rest when its closing tag is missing
    if verdict_raw is not None and "<" in verdict_raw:
        verdict_raw = verdict_raw.split("<", 1)[0]
    verdict = _verdict_from_word(verdict_raw) if verdict_raw is not None else None
    if requires_verdict and verdict is None:
        raise ReplyFormatError("the <verdict> block is missing")
    revised = _strip_fences(revised) if revised is not None else None
    if verdict is Verdict.GOOD:
        return ParsedReply(verdict, revised or None)
    if not revised:
        raise ReplyFormatError("the <revised> block is missing or empty")
    return ParsedReply(verdict or Verdict.REVISE, revised)
