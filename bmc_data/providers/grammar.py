"""JSON Schema → GBNF grammar for the local runtimes, with strict strings and a provable length bound.

llama-cpp-python's converter (`llama_cpp.llama_grammar.json_schema_to_gbnf`) writes the grammar; two things are
changed so that every reply a constrained decoder can produce is one that `json.loads` accepts and that ends
before a known number of tokens:

* strings are strict JSON: the converter's `char` rule lets raw control characters (a raw newline) into a
  string; ours allows only printable characters and JSON's escapes;
* free strings get `maxLength` and arrays `maxItems` (`GrammarLimits`) before conversion, so the longest reply the
  grammar allows is finite. `max_reply_bytes` computes it; a byte-level BPE token is at least one byte, so a
  decoder capped at that many tokens always reaches the grammar's end: a schema-constrained reply is never cut
  at its token cap (its `max_tokens` is replaced by this bound; only the context window can still end it).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

#: printable characters, or JSON's escapes; never a raw control character (U+0000–U+001F, U+007F)
STRICT_CHAR_RULE = r'char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
_SPACE_BYTES = 1  # the converter's `space ::= " "?`
_ESCAPED_CHAR_BYTES = 6  # \uXXXX


@dataclass(frozen=True)
class GrammarLimits:
    """Bounds added to a schema's free strings and arrays (only where the schema sets none)."""

    max_string_chars: int = 400
    max_array_items: int = 16


def bounded_schema(schema: dict[str, Any], limits: GrammarLimits = GrammarLimits()) -> dict[str, Any]:
    """A copy of `schema` where every string without `enum` has `maxLength` and every array `maxItems`."""
    out = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if not isinstance(node, dict):
            return
        if node.get("type") == "string" and "enum" not in node:
            node.setdefault("maxLength", limits.max_string_chars)
        if node.get("type") == "array":
            node.setdefault("maxItems", limits.max_array_items)
        for child in node.get("properties", {}).values():
            visit(child)
        visit(node.get("items"))

    visit(out)
    return out


def max_reply_bytes(schema: dict[str, Any]) -> int:
    """The longest reply, in UTF-8 bytes, that the grammar of a bounded schema allows (object, array, string)."""
    kind = schema.get("type")
    if "enum" in schema:
        return max(len(json.dumps(v).encode()) for v in schema["enum"]) + _SPACE_BYTES
    if kind == "string":
        return 2 + _ESCAPED_CHAR_BYTES * int(schema["maxLength"]) + _SPACE_BYTES
    if kind == "array":
        item = max_reply_bytes(schema["items"]) + 1 + _SPACE_BYTES  # the item and its ", "
        return 2 + 2 * _SPACE_BYTES + int(schema["maxItems"]) * item
    if kind == "object":
        total = 2 + 2 * _SPACE_BYTES
        for name, child in schema.get("properties", {}).items():
            total += len(json.dumps(name).encode()) + 2 + 3 * _SPACE_BYTES + max_reply_bytes(child)
        return total
    raise ValueError(f"a local grammar supports object, array, string and enum schemas, not {kind!r}")


def schema_to_gbnf(schema: dict[str, Any], limits: GrammarLimits = GrammarLimits()) -> tuple[str, int]:
    """`(grammar, bound)`: the strict GBNF grammar of `schema` (root rule `root`) and the longest reply it allows
    in bytes (hence in tokens)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    bounded = bounded_schema(schema, limits)
    lines = json_schema_to_gbnf(json.dumps(bounded)).splitlines()
    if not any(line.startswith("space ::=") and line.strip() == 'space ::= " "?' for line in lines):
        raise RuntimeError("llama_cpp's JSON schema converter changed its whitespace rule; update bmc's grammar bound")
    lines = [STRICT_CHAR_RULE if line.startswith("char ::=") else line for line in lines]
    return "\n".join(lines) + "\n", max_reply_bytes(bounded)
