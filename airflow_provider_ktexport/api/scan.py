"""An iterative scanner of a batch body's top level: no recursion, so no depth can crash it.

msgspec skips a ``Raw`` value recursively and gives up at Python's recursion limit (a record
nested ~1000 deep raises ``RecursionError``), and it refuses a whole body when one string
inside one record holds a lone surrogate escape (``"\\ud800"``). Either way every record of
the batch would be lost to the quarantine, for one record that the record level can reject on
its own. This scanner walks the body with a regex tokenizer (strings, brackets, commas and
colons) and a stack, checks the envelope's grammar strictly, and returns the top-level keys
with the raw bytes of their values and of each element of the top-level ``items`` list,
byte-identical to what ``msgspec.Raw`` gives. What is *inside* an element is not judged here:
the record level decodes each one and rejects what it cannot read.

A body cut short (or broken) is reported with what was seen before the break, so the
envelope's own ``id`` can still be named when it came before the break, and only then.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Scan", "scan"]

# A complete JSON string (escapes skipped pairwise), or one structural byte. Numbers, true,
# false and null are not tokens: they are the text between tokens, checked where it matters.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]', re.DOTALL)
# Runs of text and whole strings, from the start: where this stops, a string opens that never
# closes (the body was cut inside it). Tokens are only read up to there.
_LEXABLE = re.compile(rb'(?:[^"]+|"[^"\\]*(?:\\.[^"\\]*)*")*', re.DOTALL)
_SCALAR = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null")
_WS = b" \t\r\n"
_CLOSER = {ord("{"): ord("}"), ord("["): ord("]")}
_OPENERS = frozenset(b"{[")
_CLOSERS = frozenset(b"}]")


@dataclass
class Scan:
    """What the scanner saw of a body's top level.

    :param keys: each top-level key (decoded text) with the raw bytes of its value, in order;
        only keys whose value was complete before any break
    :param items: the raw bytes of each element of the top-level ``items`` list, when that list
        was complete
    :param error: why the body is not a well-formed envelope (None when it is)
    :param spans: where each value of ``keys`` sits in the body, as ``(start, end)`` offsets
    """

    keys: list[tuple[str, bytes]] = field(default_factory=list)
    items: list[bytes] | None = None
    error: str | None = None
    spans: list[tuple[int, int]] = field(default_factory=list)

    def add(self, key: str | None, body: bytes, start: int, end: int) -> bytes:
        """Keep ``key`` (None: an unreadable key, not kept) with its value, ``body[start:end]``
        without the whitespace around it; returns that value."""
        raw = body[start:end]
        start += len(raw) - len(raw.lstrip(_WS))
        raw = raw.strip(_WS)
        if key is not None:
            self.keys.append((key, raw))
            self.spans.append((start, start + len(raw)))
        return raw


def _key_text(token: bytes) -> str | None:
    # Keys are compared with "id" and "items"; a key with escapes is decoded by the json module,
    # which tolerates a lone surrogate (such a key is unknown anyway).
    inner = token[1:-1]
    if b"\\" not in inner:
        try:
            return inner.decode("utf-8")
        except UnicodeDecodeError:
            return None
    import json

    try:
        return str(json.loads(token))
    except ValueError:
        return None


def _gap_ok(gap: bytes) -> bool:
    return not gap.strip(_WS)


class _Slot:
    """One value position at the envelope level (a top-level value, or an element of ``items``)."""

    __slots__ = ("done", "start")

    def __init__(self, start: int) -> None:
        self.start = start
        self.done = False


def scan(body: bytes) -> Scan:
    """Scan ``body`` as ``{"key": value, ...}``; never raises, never recurses.

    The grammar of the top-level object and of the ``items`` list is checked (separators,
    scalars, matching brackets, nothing after the end); inside a value only the brackets are
    matched and strings skipped.
    """
    out = Scan()
    stack = bytearray()  # expected closers, one per open container
    pos = 0
    # Envelope-level state: "start", then "key", "colon", "value" (until its , or }) in turn, "end".
    state = "start"
    key: str | None = None
    slot: _Slot | None = None  # the top-level value being read
    in_items = False  # the current top-level value is the items list
    item: _Slot | None = None  # the element of items being read
    items: list[bytes] = []
    items_expect_value = False

    def fail(message: str) -> Scan:
        out.error = message
        return out

    lexable = _LEXABLE.match(body)
    end = lexable.end() if lexable else 0
    for match in _TOKEN.finditer(body, 0, end):
        depth = len(stack)
        if depth > 2 or (depth == 2 and not in_items):
            # Inside a record or another top-level value: only brackets matter, and this loop
            # runs for most tokens of a body, so it does as little as it can.
            c = body[match.start()]
            if c in _OPENERS:
                stack.append(c + 2)  # '{' + 2 == '}', '[' + 2 == ']'
            elif c in _CLOSERS:
                if stack[-1] != c:
                    return fail(f"brackets do not match at byte {match.start()}")
                stack.pop()
                pos = match.end()
                if len(stack) == 2 and in_items:
                    assert item is not None
                    item.done = True
                elif len(stack) == 1:
                    assert slot is not None
                    slot.done = True
            continue
        tok = match.group()
        gap = body[pos : match.start()]
        pos = match.end()
        if state == "end":
            return fail(f"text follows the end of the body at byte {match.start()}")

        if depth == 0:
            if not _gap_ok(gap):
                return fail("the body does not start with a JSON object")
            if tok == b"{":
                stack.append(ord("}"))
                state = "key"
                continue
            return fail("the body is JSON but not a batch object (it is not an object)")

        if depth == 1:  # inside the envelope object
            if state == "key":
                if not _gap_ok(gap):
                    return fail(f"unexpected text before byte {match.start()} in the body")
                if tok[:1] == b'"':
                    key = _key_text(tok)
                    state = "colon"
                    continue
                if tok == b"}" and not out.keys:
                    stack.pop()
                    state = "end"
                    continue
                return fail(f"expected a key at byte {match.start()}")
            if state == "colon":
                if tok != b":" or not _gap_ok(gap):
                    return fail(f"expected ':' at byte {match.start()}")
                slot = _Slot(pos)
                in_items = key == "items"
                state = "value"
                continue
            if state == "value":
                assert slot is not None
                value_gap = gap.strip(_WS)
                if tok in (b",", b"}"):
                    if slot.done:
                        if value_gap:
                            return fail(f"unexpected text before byte {match.start()} in the body")
                    elif not _SCALAR.fullmatch(value_gap):
                        return fail(f"a top-level value before byte {match.start()} is not JSON")
                    raw = out.add(key, body, slot.start, match.start())
                    if in_items and slot.done and raw[:1] == b"[":
                        out.items = items
                    in_items = False
                    if tok == b"}":
                        stack.pop()
                        state = "end"
                    else:
                        state = "key"
                    continue
                if slot.done or value_gap:
                    return fail(f"unexpected text before byte {match.start()} in the body")
                if tok[:1] == b'"':
                    slot.done = True
                    continue
                if tok in (b"{", b"["):
                    stack.append(_CLOSER[tok[0]])
                    if in_items and tok == b"[":
                        items = []
                        item = _Slot(pos)
                        items_expect_value = True
                    else:
                        in_items = False  # items holds an object: not a list of records
                    continue
                return fail(f"unexpected {tok.decode()!r} at byte {match.start()}")
            return fail(f"unexpected {tok.decode(errors='replace')!r} at byte {match.start()}")

        if depth == 2 and in_items:  # directly inside the items list
            assert item is not None
            value_gap = gap.strip(_WS)
            if tok in (b",", b"]"):
                if item.done:
                    if value_gap:
                        return fail(f"unexpected text inside items before byte {match.start()}")
                elif value_gap:
                    if not _SCALAR.fullmatch(value_gap):
                        return fail(f"an element of items before byte {match.start()} is not JSON")
                elif tok == b"]" and not items and items_expect_value:
                    pass  # "items": []
                else:
                    return fail(f"an element of items is missing before byte {match.start()}")
                raw = body[item.start : match.start()].strip(_WS)
                if raw:
                    items.append(raw)
                if tok == b"]":
                    stack.pop()
                    assert slot is not None
                    slot.done = True
                    item = None
                else:
                    item = _Slot(pos)
                    items_expect_value = False
                continue
            if item.done or value_gap:
                return fail(f"unexpected text inside items before byte {match.start()}")
            if tok[:1] == b'"':
                item.done = True
                continue
            if tok in (b"{", b"["):
                stack.append(_CLOSER[tok[0]])
                continue
            return fail(f"unexpected {tok.decode()!r} inside items at byte {match.start()}")

        return fail(
            f"unexpected {tok.decode(errors='replace')!r} at byte {match.start()}"
        )  # pragma: no cover
    tail = body[pos:]
    if state == "value" and slot is not None and slot.done and key is not None and _gap_ok(tail):
        # Cut right after a complete string or container value: that key's value is whole (a
        # number is not: "7" may have been "71").
        out.add(key, body, slot.start, len(body))
    if end < len(body):
        return fail(f"a string opened at byte {end} is not closed (the body ends inside it: truncated?)")
    if stack or state != "end":
        return fail(f"the body ends before the batch object does ({len(body)} bytes: truncated?)")
    if not _gap_ok(tail):
        return fail("text follows the end of the body")
    return out
