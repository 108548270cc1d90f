"""Bounds on what a request may hand an LLM engine, checked in Python before it gets there.

Measured on llama.cpp, whose native code is the least forgiving: its GBNF parser recurses once per
nested group, and its left-recursion check once per rule in a chain: on a worker thread's 8 MiB stack,
20,000 nested groups or a 100,000-rule chain end the process with SIGSEGV (10,000 and 30,000 pass).
Python's json and the chat template's `tojson` recurse per level too, and raise RecursionError near
1,000. The limits below sit far under all of these and far above what real requests use, so a hostile
request gets INVALID_ARGUMENT and the model keeps serving.
"""

from __future__ import annotations

import json
import math
import re

from localfleet.errors import BadInput
from localfleet.inputs import excerpt, parse_json

#: Grammar size: a chain of rules, which is what crashes the left-recursion check, needs at least ~10
#: bytes a rule, so 64 KiB bounds a chain at ~6,500 rules, a fifth of a chain that passed. Grammars core
#: writes from JSON schemas, even for many tools, are a few KiB.
MAX_GRAMMAR_BYTES = 64 * 1024
#: Nested groups `( ... )`: 20,000 crash the parser; schema-made grammars nest a few dozen at most.
MAX_GRAMMAR_DEPTH = 256
#: Nesting of [ and { in Tools, tool calls and LogitBias: tool schemas nest two levels an object
#: property, so 64 holds 30 nested objects, while json and tojson fail near 1,000.
MAX_JSON_DEPTH = 64
#: LogitBias entries: each is applied to every token; thousands cover banning whole classes of tokens.
MAX_LOGIT_BIAS = 4096
#: StopPrompts are matched in Python at every token: their number and size bound that work. Stop strings
#: are markers, a few bytes to a few dozen in practice.
MAX_STOP_PROMPTS = 256
MAX_STOP_BYTES = 1024
#: Sampler numbers (temperature, penalties, logit biases) stay within this size, and a temperature or a
#: repeat penalty at least MIN_DIVISOR: logits (tens) scaled by them then stay far below float32's
#: 3.4e38. Past it a logit turns infinite, every probability NaN, and llama.cpp picks an arbitrary token
#: (one that a grammar forbids, too).
MAX_SAMPLER_VALUE = 1e6
#: Optional character classes in a row (`[a-z]? [a-z]? ...`, `.* .*`): llama.cpp matches each candidate
#: token along every way of splitting it across them, so one sampling step grows exponentially with the
#: run (measured on a 262k vocabulary: 8 printable classes 1.8 s a step, 12 over 5 s, 60 never ends).
#: A class with a bounded repetition (`[a-z]{0,60}`) nests instead and costs one class (0.17 s).
MAX_OPTIONAL_CLASSES = 6
MIN_DIVISOR = 1e-6

# What the GBNF parser reads as one unit, in which parentheses do not nest: a comment, a string literal,
# a character class, a token (`<...>`, `!<...>`); each may run to the end when unclosed, as the parser
# then fails anyway. Escapes are skipped as pairs, so `"\""` and `[\]]` stay one unit.
_GBNF_UNITS = re.compile(
    r"""\#[^\r\n]*
      | "(?:\\.|[^"\\])*"?
      | \[(?:\\.|[^\]\\])*\]?
      | !?<[^>]*>?
      | [()]""",
    re.VERBOSE | re.DOTALL,
)
# GBNF as items and the marks between them, for counting optional character classes in a row.
_GBNF_ITEMS = re.compile(
    r"""(?P<skip>\#[^\r\n]*|\s+)
      | (?P<wide>\[(?:\\.|[^\]\\])*\]?|\.)
      | (?P<item>"(?:\\.|[^"\\])*"?|!?<[^>]*>?|[A-Za-z0-9_-]+)
      | (?P<open>\()
      | (?P<close>\))
      | (?P<reset>::=|\|)
      | (?P<optional>[?*]|\{\s*0?\s*,[^}]*\}?)
      | (?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)
# JSON strings, in which brackets do not nest, and the brackets that do.
_JSON_UNITS = re.compile(r'"(?:\\.|[^"\\])*"?|[\[\]{}]', re.DOTALL)


def check_grammar(grammar: str) -> None:
    """Raise BadInput when `grammar` is larger or nests deeper than llama.cpp's parser safely takes."""
    size = len(grammar.encode("utf-8", errors="surrogatepass"))
    if size > MAX_GRAMMAR_BYTES:
        raise BadInput(
            f"Grammar {excerpt(grammar)} is {size} bytes; at most {MAX_GRAMMAR_BYTES} are accepted: "
            "send a smaller grammar"
        )
    depth = _grammar_depth(grammar)
    if depth > MAX_GRAMMAR_DEPTH:
        raise BadInput(
            f"Grammar {excerpt(grammar)} nests groups {depth} deep; at most {MAX_GRAMMAR_DEPTH} levels of "
            "( ) are accepted: flatten it with named rules"
        )
    classes = _optional_classes(grammar)
    if classes > MAX_OPTIONAL_CLASSES:
        raise BadInput(
            f"Grammar {excerpt(grammar)} has {classes} optional character classes in a row; at most "
            f"{MAX_OPTIONAL_CLASSES} are accepted (each one multiplies the work of every step): write one "
            "class with a bounded repetition instead, e.g. [a-z]{0,60}"
        )


def _optional_classes(grammar: str) -> int:
    """The longest run of optional character classes in one sequence of `grammar`."""
    runs = [0]  # per open group: the run in its sequence so far
    longest = 0
    pending = ""  # the kind of the item just read, until what follows says whether it is optional
    for unit in _GBNF_ITEMS.finditer(grammar):
        kind = unit.lastgroup or "other"
        if kind == "skip":
            continue
        if kind == "optional" and pending:
            runs[-1] = runs[-1] + 1 if pending == "wide" else 0
            longest = max(longest, runs[-1])
            pending = ""
            continue
        if pending:  # the item before was not optional: the run ends
            runs[-1] = 0
        pending = ""
        if kind in ("wide", "item"):
            pending = kind
        elif kind == "open":
            runs.append(0)
        elif kind == "close":
            if len(runs) > 1:
                runs.pop()
            pending = "item"  # a group counts as one item, not a class
        else:  # a new alternative or rule, or a mark such as +
            runs[-1] = 0
    return longest


def _grammar_depth(grammar: str) -> int:
    depth = deepest = 0
    for unit in _GBNF_UNITS.finditer(grammar):
        if unit[0] == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif unit[0] == ")":
            depth = max(depth - 1, 0)
    return deepest


def check_json(field: str, text: str) -> None:
    """Raise BadInput when the JSON in `field` nests deeper than MAX_JSON_DEPTH (before parsing it)."""
    depth = deepest = 0
    for unit in _JSON_UNITS.finditer(text):
        mark = unit[0]
        if mark in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:  # enough to refuse: the rest may be megabytes
                break
        elif mark in "]}":
            depth = max(depth - 1, 0)
    if deepest > MAX_JSON_DEPTH:
        raise BadInput(
            f"{field} {excerpt(text)} nests [ and {{ more than {MAX_JSON_DEPTH} levels deep; at most "
            f"{MAX_JSON_DEPTH} are accepted"
        )


def check_stop_prompts(stops: list[str]) -> None:
    if len(stops) > MAX_STOP_PROMPTS:
        raise BadInput(f"StopPrompts has {len(stops)} strings; at most {MAX_STOP_PROMPTS} are accepted")
    for index, stop in enumerate(stops):
        size = len(stop.encode("utf-8", errors="surrogatepass"))
        if size > MAX_STOP_BYTES:
            raise BadInput(
                f"StopPrompts[{index}] {excerpt(stop)} is {size} bytes; at most {MAX_STOP_BYTES} are accepted"
            )


def bounded(field: str, value: float, *, least: float = 0.0) -> float:
    """`value` when finite and at most MAX_SAMPLER_VALUE in size (and, when not 0, at least `least`)."""
    if not math.isfinite(value) or abs(value) > MAX_SAMPLER_VALUE:
        most = int(MAX_SAMPLER_VALUE)
        raise BadInput(f"{field} is {value:g}; send a number between -{most} and {most}")
    if value and abs(value) < least:
        raise BadInput(f"{field} is {value:g}; send 0 (off) or at least {least:g}")
    return value


def probability(field: str, value: float) -> float:
    """A probability cut-off (TopP, MinP, TypicalP): finite, within [0, 1]; 0 leaves it off."""
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise BadInput(f"{field} is {value:g}; send a number between 0 and 1 (0 leaves it off)")
    return value


def count(field: str, value: int, most: int) -> int:
    """A count such as TopK: 0 (off) up to `most`."""
    if not 0 <= value <= most:
        raise BadInput(f"{field} is {value}; send 0 (off) up to {most}")
    return value


def temperature(value: float) -> float:
    """Temperature, with 0 for greedy; a tiny one is greedy too (the same choice, without the division
    that would push the logits to infinity)."""
    value = bounded("Temperature", value)
    return value if value >= MIN_DIVISOR else 0.0


def penalty(value: float) -> float:
    """The repeat penalty, a divisor of logits: 0 (or less) turns it off, which is 1.0 for llama.cpp."""
    value = bounded("Penalty", value, least=MIN_DIVISOR)
    return value if value > 0 else 1.0


def logit_bias(text: str, n_vocab: int) -> dict[int, float]:
    """`LogitBias` (`{"token id": bias}`) checked against a vocabulary of `n_vocab` tokens."""
    if not text.strip():
        return {}
    check_json("LogitBias", text)
    raw = parse_json(text, "LogitBias")
    if not isinstance(raw, dict):
        raise BadInput('LogitBias must be a JSON object of token id to bias, e.g. {"15043": -100}')
    if len(raw) > MAX_LOGIT_BIAS:
        raise BadInput(f"LogitBias has {len(raw)} entries; at most {MAX_LOGIT_BIAS} are accepted")
    bias: dict[int, float] = {}
    for key, value in raw.items():
        try:
            token, amount = int(key), float(value)
        except (TypeError, ValueError):
            raise BadInput(
                f"LogitBias {excerpt(key)}: {excerpt(json.dumps(value))} is not a token id and a number"
            ) from None
        if not 0 <= token < n_vocab:
            raise BadInput(f"LogitBias token {token} is outside the vocabulary (0..{n_vocab - 1})")
        bias[token] = bounded(f"LogitBias[{token}]", amount)  # -100 bans a token
    return bias
