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
* `fit_limits` shrinks the limits until that bound fits a token cap (the transformers provider's rule: a reply
  that cannot be cut, within the request's `max_tokens`): fewer array items, each string long enough for a
  sentence, then shorter strings.
* `unrolled_strings=True` writes a bounded string as a chain of rules (`strtail-N ::= "\"" | char strtail-(N-1)`)
  instead of `char{0,N}`: the same language, which xgrammar checks faster (its Earley parser is slow on a counted
  repetition of a rule with alternatives: 6.8 vs 2.1 ms a token for N = 134, bench/transformers_structured.py).
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

    def identity(self) -> dict[str, str]:
        """What a provider adds to its identity (cache key, provenance) for these limits: nothing for the
        defaults, so cache keys made before the limits existed stay valid."""
        if self == GrammarLimits():
            return {}
        return {"grammar_limits": f"{self.max_string_chars}/{self.max_array_items}"}


def gbnf_literal(text: str) -> str:
    """`text` as a GBNF string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'


class _Builder:
    def __init__(self, limits: GrammarLimits, unrolled_strings: bool = False):
        self.limits = limits
        self.unrolled_strings = unrolled_strings
        self.rules: dict[str, str] = {"space": _SPACE, "char": _CHAR}

    def rule(self, name: str, body: str) -> str:
        self.rules[name] = body
        return name

    def string_tail(self, most: int) -> str:
        """`strtail-N`: at most N more characters, then the closing quote (shared by strings of any bound)."""
        for k in range(most + 1):
            if f"strtail-{k}" not in self.rules:
                self.rules[f"strtail-{k}"] = '"\\""' + (f" | char strtail-{k - 1}" if k else "")
        return f"strtail-{most}"

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
            bound = 2 + _ESCAPED_CHAR_BYTES * most + 1
            if self.unrolled_strings:
                return self.rule(name, f'"\\"" {self.string_tail(most)} space'), bound
            return self.rule(name, f'"\\"" char{{0,{most}}} "\\"" space'), bound
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


def schema_to_gbnf(schema: dict[str, Any], limits: GrammarLimits = GrammarLimits(), *,
                   unrolled_strings: bool = False) -> tuple[str, int]:
    """`(grammar, bound)`: the GBNF grammar of `schema` (root rule `root`) and the longest reply it allows, in
    bytes (hence in tokens). `unrolled_strings`: bounded strings as chains of rules (see the module docstring)."""
    builder = _Builder(limits, unrolled_strings)
    _, bound = builder.visit(schema, "root")
    return "".join(f"{name} ::= {body}\n" for name, body in builder.rules.items()), bound


#: the shortest string bound `fit_limits` keeps before it gives up an array item: above the 99th percentile of the
#: length of a y_l segment (ECQA test: 130, GSM8K test: 165 characters), so one edit can still rewrite a sentence
MIN_FITTED_STRING_CHARS = 170


def fit_limits(schema: dict[str, Any], limits: GrammarLimits, cap: int) -> GrammarLimits | None:
    """The limits, at most `limits`, whose bound for `schema` is at most `cap` tokens: as many array items as fit
    with strings of `MIN_FITTED_STRING_CHARS` (at least one), then the longest strings that fit with that many.
    None when even empty strings do not fit (the schema's fixed parts, e.g. y_l's segments, exceed `cap`)."""
    def bound(chars: int, items: int) -> int:
        return schema_to_gbnf(schema, GrammarLimits(chars, items))[1]

    floor = min(MIN_FITTED_STRING_CHARS, limits.max_string_chars)
    items = next((k for k in range(limits.max_array_items, 0, -1) if bound(floor, k) <= cap),
                 min(1, limits.max_array_items))
    if bound(0, items) > cap:
        return None
    low, high = 0, limits.max_string_chars  # the longest string bound that fits with `items` items
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if bound(middle, items) <= cap else (low, middle - 1)
    return GrammarLimits(low, items)
