"""Secrets never leave the process: one registry of every credential in play, and `redact` for every sink.

The registry holds the API keys passed to providers (`register_secret`) and, read afresh on each call, the
values of `SECRET_ENV_VARS`. `redact(text)` replaces each secret, and every form it takes once quoted, escaped or
encoded (a stray `\\r` and its repr `\\\\r`, `b'...'`, `"..."`, `Bearer ...`, JSON escapes, URL encoding), with
`***`. It is applied to log records (`install_log_redaction`, a log-record factory, so every logger and handler is
covered), to the one error line a CLI prints, to `bmc_reason`, summaries, dataset cards, the editor's text in
every row written to parquet/jsonl, and to what is stored in the call cache and the batch ledger (a server may
echo the key back in an error body).

Redaction protects what bmc writes about itself. It never rewrites the user's data: `redact_new(text, given)`
masks only secrets that do not already occur in the user's own text, and values too short or too common to be
keys (`placeholder_reason`: `password`, `lm-studio`, `EMPTY`, ...) are never secrets (a warning says so, once).

`check_api_key(value, source)` refuses a key with whitespace or control characters before any request is made,
naming the variable and the problem, never the value. `split_url(url)` takes the credentials out of a URL
(userinfo, key-like query parameters), registers them with their encoded forms (Basic base64, URL-encoding) and
returns the URL to show (`public`), the one to connect to and the query to send with every request.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit, urlunsplit

from .errors import CredentialError

__all__ = [
    "SECRET_ENV_VARS", "MASK", "register_secret", "registered_secrets", "redact", "redact_obj",
    "contains_secret", "secret_forms", "install_log_redaction", "check_api_key", "placeholder_reason",
    "redact_new", "replace_secrets", "split_url", "public_url", "SplitUrl",
]

#: Environment variables whose values are always treated as secrets.
SECRET_ENV_VARS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN")
MASK = "***"
#: Shorter values are not treated as secrets (they would mask ordinary words); no real key is this short.
MIN_SECRET_LENGTH = 8

#: What people put in key variables for servers that check no key: never secrets (masking them would rewrite
#: ordinary words in logs and data). Compared lower-cased.
PLACEHOLDER_KEYS = frozenset({
    "password", "passw0rd", "lm-studio", "none", "null", "empty", "dummy", "sk-dummy", "sk-no-key-required",
    "no-key", "nokey", "not-needed", "notneeded", "ollama", "vllm", "changeme", "secret", "token", "test",
    "testing", "api-key", "api_key", "apikey", "your-api-key", "your_api_key", "sk-xxx", "fake", "fake-key",
    "sk-fake", "sk-test", "sk-local", "placeholder", "anything", "local", "default", "sk-1234", "12345678",
})

_lock = threading.Lock()
_registered: set[str] = set()
_warned: set[str] = set()
logger = logging.getLogger(__name__)


def placeholder_reason(value: str) -> str | None:
    """Why `value` cannot be a real secret (too short, a common placeholder, too regular), or None.

    Real keys are long and random; a word (letters and separators only, such as `lm-studio`) or a string of
    few distinct characters (`sk-xxxxxxxx`) is a stand-in for a server that checks no key."""
    core = value.strip()
    if len(core) < MIN_SECRET_LENGTH:
        return f"it is shorter than {MIN_SECRET_LENGTH} characters"
    if core.lower() in PLACEHOLDER_KEYS:
        return "it is a common placeholder"
    counts = Counter(core)
    entropy = -sum(n / len(core) * math.log2(n / len(core)) for n in counts.values())
    if entropy < 2.5 or re.fullmatch(r"[a-z]+(?:[-_. ][a-z]+)*", core):
        return "it is too regular to be a key (a word, or few distinct characters)"
    return None


def _warn_placeholder(source: str, reason: str) -> None:
    with _lock:
        if source in _warned:
            return
        _warned.add(source)
    logger.warning("%s is not treated as a secret (%s): it is sent as given, and not masked in logs or data, "
                   "where masking it would rewrite ordinary text", source, reason)


def _is_secret(value: str | None, source: str | None = None) -> bool:
    if not isinstance(value, str) or not value.strip():
        return False
    reason = placeholder_reason(value)
    if reason is not None and source is not None:
        _warn_placeholder(source, reason)
    return reason is None


_pattern_cache: tuple[frozenset[str], re.Pattern[str] | None, tuple[str, ...]] = (frozenset(), None, ())
_SPLIT = re.compile(r"[\s\x00-\x1f\x7f]+")


def register_secret(value: str | None, source: str | None = None) -> None:
    """Treat `value` as a secret from now on, in this process (idempotent). Placeholders (`placeholder_reason`)
    are ignored, with one warning naming `source` when it is given.

    The first secret also installs the log scrubbing (`install_log_redaction`), for API users too."""
    if _is_secret(value, source):
        with _lock:
            _registered.add(value)
        install_log_redaction()


#: an option whose name ends so holds a secret, whatever the CLI (`--hub_token`, a mistyped `--hubtoken`, `--api-key`)
_SECRET_OPTION = re.compile(r"^--?[\w-]*(token|api[-_]?key|apikey|secret|password|passwd|credentials?)$", re.I)
#: values shaped like a Hugging Face token or an OpenAI/Anthropic key are secrets wherever they appear on a command line
_SECRET_SHAPED = re.compile(r"^(hf_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9_-]{20,})$")


def register_command_line_secrets(argv: Sequence[str]) -> None:
    """Register the values of secret-named options (`--x-token V`, `--x-token=V`) and secret-shaped arguments, before
    the command line is parsed: a usage error that quotes them (an unknown or mistyped option) is then masked."""
    for index, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if _SECRET_OPTION.match(name):
            register_secret(value if eq else (argv[index + 1] if index + 1 < len(argv) else None), source=name)
        elif _SECRET_SHAPED.match(arg) or (eq and _SECRET_SHAPED.match(value)):
            register_secret(value if eq else arg, source="the command line")


def registered_secrets() -> frozenset[str]:
    """Every secret known now: registered ones plus the current values of `SECRET_ENV_VARS`."""
    env = {name: os.environ.get(name) for name in SECRET_ENV_VARS}
    with _lock:
        found = set(_registered)
    found.update(v for name, v in env.items() if _is_secret(v, name))
    return frozenset(found)


def secret_forms(secret: str) -> set[str]:
    """The secret as it may appear in text: raw, stripped, repr/JSON/bytes-escaped, URL-encoded, and each
    whitespace-separated piece of it (a key with a stray newline inside is printed on two lines)."""
    core = secret.strip()
    pieces = {secret, core, *(p for p in _SPLIT.split(secret) if len(p) >= MIN_SECRET_LENGTH)}
    forms = set()
    for piece in pieces:
        forms.update({
            piece, repr(piece)[1:-1], json.dumps(piece)[1:-1], json.dumps(piece, ensure_ascii=False)[1:-1],
            repr(piece.encode("utf-8", "backslashreplace"))[2:-1], quote(piece, safe=""), quote_plus(piece),
            piece.encode("unicode_escape").decode("ascii"),
        })
    return {f for f in forms if len(f) >= MIN_SECRET_LENGTH}


_state: list[Any] = [None, None]  # (registry size, env values) the cache was built for: a cheap freshness test


def _compiled() -> tuple[re.Pattern[str] | None, tuple[str, ...]]:
    """(one regex of every form of every secret, the forms' distinct 6-character prefixes)."""
    global _pattern_cache
    env = tuple(map(os.environ.get, SECRET_ENV_VARS))
    if _state[0] == len(_registered) and _state[1] == env:  # the registry only grows: its size is its version
        return _pattern_cache[1], _pattern_cache[2]
    version = len(_registered)  # read before the secrets: a secret registered meanwhile makes the next call rebuild
    secrets = registered_secrets()
    cached_for, pattern, anchors = _pattern_cache
    if secrets != cached_for:
        forms = set().union(*(secret_forms(s) for s in secrets)) if secrets else set()
        # longest first, so "sk-abc\\r" is masked whole rather than leaving "\\r" behind
        pattern = re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))) if forms else None
        anchors = tuple(sorted({f[:6] for f in forms}))
        _pattern_cache = (secrets, pattern, anchors)
    # marked fresh only now: another thread that sees the new version finds the pattern that covers it
    _state[:] = [version, env]
    return pattern, anchors


def _scrub(text: str, pattern: re.Pattern[str] | None, anchors: tuple[str, ...]) -> str:
    # every form starts with one of a few prefixes: C-speed substring tests skip the regex for clean text
    if pattern is None or not text or not any(anchor in text for anchor in anchors):
        return text
    return pattern.sub(MASK, text)


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every known secret, in any of its escaped forms, replaced by `***`.

    `secrets` are registered first (the signature of the older `providers.limits.redact`)."""
    for secret in secrets:
        register_secret(secret)
    if not isinstance(text, str) or not text:
        return text
    return _scrub(text, *_compiled())


def replace_secrets(text: str, replacement: Callable[[str], str]) -> str:
    """`text` with each secret (in any of its forms) replaced by `replacement(the form found)`."""
    pattern, anchors = _compiled()
    if pattern is None or not isinstance(text, str) or not any(anchor in text for anchor in anchors):
        return text
    return pattern.sub(lambda m: replacement(m.group(0)), text)


def redact_new(text: str, given: str) -> str:
    """`text` with the secrets masked that do not occur in `given` (the user's own input): data the user wrote
    is never rewritten, while a secret the model or a server added is removed."""
    return replace_secrets(text, lambda found: found if found in given else MASK)


def contains_secret(text: str | bytes) -> bool:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    pattern, _ = _compiled()
    return bool(pattern is not None and pattern.search(text))


def redact_obj(value: Any) -> Any:
    """`redact` applied to every string inside nested dicts, lists and tuples (e.g. a summary or a row)."""
    pattern, anchors = _compiled()
    if pattern is None:
        return value

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            return _scrub(item, pattern, anchors)
        if isinstance(item, dict):
            return {walk(k): walk(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return type(item)(walk(v) for v in item)
        return item

    return walk(value)


# --- logging -------------------------------------------------------------------------------------------------

_installed = False


def install_log_redaction() -> None:
    """Scrub every log record made from now on, by any logger (once per process; cheap when no secret is known).

    A record factory rather than a handler filter: it covers handlers added later (pytest's, a user's), the
    record's arguments and its traceback text."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()
    formatter = logging.Formatter()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        pattern, anchors = _compiled()  # once per record: it reads the secret variables of the environment
        if pattern is None:
            return record
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to logging's own error report
            return record
        record.msg, record.args = _scrub(message, pattern, anchors), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _scrub(formatter.formatException(record.exc_info), pattern, anchors)
        if record.stack_info:
            record.stack_info = _scrub(record.stack_info, pattern, anchors)
        return record

    logging.setLogRecordFactory(factory)


# --- key shape ------------------------------------------------------------------------------------------------

_NAMES = {"\r": "a carriage return (\\r)", "\n": "a newline (\\n)", "\t": "a tab", " ": "a space"}


def check_api_key(value: str, source: str) -> str:
    """Register `value` as a secret and return it, or raise `CredentialError` (naming `source`, never the value)
    when it cannot be a valid key: whitespace, control characters or non-ASCII characters (they break the HTTP
    header, and an HTTP library may then print the header in its error)."""
    register_secret(value, source)
    bad = next((i for i, ch in enumerate(value) if ch.isspace() or ord(ch) < 32 or ord(ch) == 127 or ord(ch) > 126),
               None)
    if bad is None:
        return value
    ch = value[bad]
    what = _NAMES.get(ch, f"the character U+{ord(ch):04X}")
    where = "at its end" if bad >= len(value.rstrip()) else "at its start" if bad < len(value) - len(value.lstrip()) \
        else f"at position {bad + 1} of {len(value)}"
    raise CredentialError(
        f"the API key from {source} contains {what} {where} (a copy-paste accident?); keys have no whitespace or "
        f"control characters: set it again without them (the key itself is not shown)"
    )


# --- credentials in URLs --------------------------------------------------------------------------------------

#: query parameters whose values are credentials (`?api_key=`, `?key=`, `?token=`, `?sig=`, ...)
_CREDENTIAL_PARAM = re.compile(r"key|token|secret|pass|pwd|auth|sig|credential|session", re.IGNORECASE)


@dataclass(frozen=True)
class SplitUrl:
    """A base URL taken apart: `public` (no credentials: for summaries, logs, cache identity and ledgers),
    `connect` (with its userinfo, without its query: what the HTTP client is given; the SDK appends paths)
    and `query` (every query parameter, sent with each request)."""

    public: str
    connect: str
    query: dict[str, str] = field(default_factory=dict)


def split_url(url: str, source: str = "the base URL") -> SplitUrl:
    """`url` without its credentials; each credential (userinfo password, `user:password`, its Basic base64,
    key-like query values) is registered as a secret, as the user wrote it and decoded."""
    bare = "://" not in url  # `user:pw@host/v1`, a URL missing its scheme: still no credential shown
    parts = urlsplit("//" + url if bare else url)
    secrets: list[str] = []
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        secrets += [password or user, userinfo]
        for form in {userinfo, f"{unquote(user)}:{unquote(password)}"}:
            secrets.append(base64.b64encode(form.encode("utf-8")).decode("ascii"))  # the Basic header's value
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    raw_values = dict(pair.split("=", 1) for pair in parts.query.split("&") if "=" in pair)
    public_query = []
    for name, value in query.items():
        if _CREDENTIAL_PARAM.search(name):
            secrets += [value, raw_values.get(quote_plus(name), value)]
        else:
            public_query.append(f"{quote_plus(name)}={quote_plus(value)}")
    for secret in secrets:
        register_secret(unquote(secret), f"the credential in {source}")
        register_secret(secret)
    public = urlunsplit((parts.scheme, netloc, parts.path, "&".join(public_query), "")).rstrip("/")
    connect = urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")).rstrip("/")
    if bare:
        public, connect = public.removeprefix("//"), connect.removeprefix("//")
    return SplitUrl(public, connect, query)


def public_url(url: str | None) -> str | None:
    """`url` as it may be shown: no userinfo, no key-like query parameters (its secrets are registered)."""
    return split_url(url).public if url else url
