"""JSON Schema → GBNF grammar for the local runtimes: strict JSON strings and a provable length bound.

Written here rather than taken from llama-cpp-python's converter (`json_schema_to_gbnf`), which lets raw control
characters (a raw newline) into strings and writes a broken literal for an `enum` value that contains a double
quote (`"The answer is \\"x\\""` became `\\\\"`: llama.cpp refused the grammar). It covers the subset that
`bmc_data.bridging.protocol` uses and every API accepts: `object` (all properties in order, no others),
`array` of one `items` schema, `string`, and `enum` of strings.

* Strings are strict JSON: printable characters or JSON's escapes, never a raw control character.
* Free strings get at most `GrammarLimits.max_string_chars` characters and arrays at most `max_array_items` items
  (unless the schema's `maxLength` / `maxItems` say less), so the longest reply the grammar allows is finite:
  `schema_to_gbnf` returns it in bytes. A byte-level BPE token is at least one byte, so a decoder capped at that
  many tokens always reaches the grammar's end: a schema-constrained reply is never cut at its token cap (the
  request's `max_tokens` is replaced by this bound; only the context window can still end it).
* Whitespace between tokens is at most one space (`space`), as JSON needs none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: printable characters, or JSON's escapes; never a raw control character (U+0000–U+001F, U+007F)
_CHAR = r'[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
_SPACE = ' " "?'
_ESCAPED_CHAR_BYTES = 6  # the longest a character can be written: \uXXXX


@dataclass(frozen=True)
class GrammarLimits:
    """Bounds for a schema's free strings and arrays."""

    max_string_chars: int = 400
    max_array_items: int = 16


def gbnf_literal(text: str) -> str:
    """`text` as a GBNF string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'


class _Builder:
    def __init__(self, limits: GrammarLimits):
        self.limits = limits
        self.rules: dict[str, str] = {"space": _SPACE, "char": _CHAR}

    def rule(self, name: str, body: str) -> str:
        self.rules[name] = body
        return name

    def visit(self, schema: dict[str, Any], name: str) -> tuple[str, int]:
        """(rule name, longest text in bytes) of `schema`; every value ends with its optional space."""
        if "enum" in schema:
            values = [json.dumps(v, ensure_ascii=False) for v in schema["enum"]]
            if not values or not all(isinstance(v, str) for v in schema["enum"]):
                raise ValueError(f"{name}: a local grammar supports an enum of strings only")
            body = "(" + " | ".join(gbnf_literal(v) for v in values) + ") space"
            return self.rule(name, body), max(len(v.encode()) for v in values) + 1
        kind = schema.get("type")
        if kind == "string":
            most = min(int(schema.get("maxLength", self.limits.max_string_chars)), self.limits.max_string_chars)
            return self.rule(name, f'"\\"" char{{0,{most}}} "\\"" space'), 2 + _ESCAPED_CHAR_BYTES * most + 1
        if kind == "array":
            most = min(int(schema.get("maxItems", self.limits.max_array_items)), self.limits.max_array_items)
            item, item_bytes = self.visit(schema["items"], f"{name}-item")
            rest = f' ("," space {item}){{0,{most - 1}}}' if most > 1 else ""
            body = f'"[" space ({item}{rest})? "]" space' if most > 0 else '"[" space "]" space'
            return self.rule(name, body), 2 + 2 + most * (item_bytes + 2)
        if kind == "object":
            parts, total = [], 2 + 2
            for key, child in schema.get("properties", {}).items():
                value, value_bytes = self.visit(child, f"{name}-{key.replace('_', '-')}")
                literal = json.dumps(key, ensure_ascii=False)
                parts.append(f'{gbnf_literal(literal)} space ":" space {value}')
                total += len(literal.encode()) + 4 + value_bytes
            inner = ' "," space '.join(parts)
            return self.rule(name, f'"{{" space {inner} "}}" space' if parts else '"{" space "}" space'), total
        raise ValueError(f"{name}: a local grammar supports object, array, string and enum schemas, not {kind!r}")


def schema_to_gbnf(schema: dict[str, Any], limits: GrammarLimits = GrammarLimits()) -> tuple[str, int]:
    """`(grammar, bound)`: the GBNF grammar of `schema` (root rule `root`) and the longest reply it allows, in
    bytes (hence in tokens)."""
    builder = _Builder(limits)
    _, bound = builder.visit(schema, "root")
    return "".join(f"{name} ::= {body}\n" for name, body in builder.rules.items()), bound
