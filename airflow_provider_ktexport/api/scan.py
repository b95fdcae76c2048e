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
    return _Scanner(body).run()


class _Scanner:
    """One scan's state: a stack of expected closers and the envelope's grammar, token by token.

    Envelope-level ``state``: "start", then "key", "colon", "value" (until its , or }) in turn,
    "end". Each handler returns an error sentence, or None to go on.
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.out = Scan()
        self.stack = bytearray()  # expected closers, one per open container
        self.pos = 0
        self.state = "start"
        self.key: str | None = None
        self.slot: _Slot | None = None  # the top-level value being read
        self.in_items = False  # the current top-level value is the items list
        self.item: _Slot | None = None  # the element of items being read
        self.items: list[bytes] = []
        self.items_expect_value = False

    def run(self) -> Scan:
        body, stack = self.body, self.stack
        lexable = _LEXABLE.match(body)
        end = lexable.end() if lexable else 0
        for match in _TOKEN.finditer(body, 0, end):
            depth = len(stack)
            if depth > 2 or (depth == 2 and not self.in_items):
                # Inside a record or another top-level value: only brackets matter, and this
                # runs for most tokens of a body, so it does as little as it can.
                c = body[match.start()]
                if c in _OPENERS:
                    stack.append(c + 2)  # '{' + 2 == '}', '[' + 2 == ']'
                elif c in _CLOSERS:
                    error = self._close_nested(c, match)
                    if error:
                        return self._fail(error)
                continue
            # Directly inside the items list (one token per record edge), else the envelope's own.
            error = self._element(match) if depth == 2 else self._token(match, depth)
            if error:
                return self._fail(error)
        return self._finish(end)

    def _fail(self, message: str) -> Scan:
        self.out.error = message
        return self.out

    def _close_nested(self, c: int, match: re.Match[bytes]) -> str | None:
        stack = self.stack
        if stack[-1] != c:
            return f"brackets do not match at byte {match.start()}"
        stack.pop()
        self.pos = match.end()
        if len(stack) == 2 and self.in_items:
            assert self.item is not None
            self.item.done = True
        elif len(stack) == 1:
            assert self.slot is not None
            self.slot.done = True
        return None

    def _token(self, match: re.Match[bytes], depth: int) -> str | None:
        tok = match.group()
        gap = self.body[self.pos : match.start()]
        self.pos = match.end()
        at = match.start()
        if self.state == "end":
            return f"text follows the end of the body at byte {at}"
        if depth == 0:
            if not _gap_ok(gap):
                return "the body does not start with a JSON object"
            if tok == b"{":
                self.stack.append(ord("}"))
                self.state = "key"
                return None
            return "the body is JSON but not a batch object (it is not an object)"
        if depth == 1:  # inside the envelope object
            if self.state == "key":
                return self._key(tok, gap, at)
            if self.state == "colon":
                return self._colon(tok, gap, at)
            if self.state == "value":
                return self._value(tok, gap, at)
            return f"unexpected {tok.decode(errors='replace')!r} at byte {at}"
        return f"unexpected {tok.decode(errors='replace')!r} at byte {at}"  # pragma: no cover

    def _key(self, tok: bytes, gap: bytes, at: int) -> str | None:
        if not _gap_ok(gap):
            return f"unexpected text before byte {at} in the body"
        if tok[:1] == b'"':
            self.key = _key_text(tok)
            self.state = "colon"
            return None
        if tok == b"}" and not self.out.keys:
            self.stack.pop()
            self.state = "end"
            return None
        return f"expected a key at byte {at}"

    def _colon(self, tok: bytes, gap: bytes, at: int) -> str | None:
        if tok != b":" or not _gap_ok(gap):
            return f"expected ':' at byte {at}"
        self.slot = _Slot(self.pos)
        self.in_items = self.key == "items"
        self.state = "value"
        return None

    def _value(self, tok: bytes, gap: bytes, at: int) -> str | None:
        slot = self.slot
        assert slot is not None
        value_gap = gap.strip(_WS)
        if tok in (b",", b"}"):
            return self._value_end(tok, value_gap, at)
        if slot.done or value_gap:
            return f"unexpected text before byte {at} in the body"
        if tok[:1] == b'"':
            slot.done = True
            return None
        if tok in (b"{", b"["):
            self.stack.append(_CLOSER[tok[0]])
            if self.in_items and tok == b"[":
                self.items = []
                self.item = _Slot(self.pos)
                self.items_expect_value = True
            else:
                self.in_items = False  # items holds an object: not a list of records
            return None
        return f"unexpected {tok.decode()!r} at byte {at}"

    def _value_end(self, tok: bytes, value_gap: bytes, at: int) -> str | None:
        """A top-level value ends at ``,`` or ``}``: keep it (and the records, for items)."""
        slot = self.slot
        assert slot is not None
        if slot.done:
            if value_gap:
                return f"unexpected text before byte {at} in the body"
        elif not _SCALAR.fullmatch(value_gap):
            return f"a top-level value before byte {at} is not JSON"
        raw = self.out.add(self.key, self.body, slot.start, at)
        if self.in_items and slot.done and raw[:1] == b"[":
            self.out.items = self.items
        self.in_items = False
        if tok == b"}":
            self.stack.pop()
            self.state = "end"
        else:
            self.state = "key"
        return None

    def _element(self, match: re.Match[bytes]) -> str | None:
        """A token directly inside the items list."""
        tok = match.group()
        at = match.start()
        value_gap = self.body[self.pos : at].strip(_WS)
        self.pos = match.end()
        item = self.item
        assert item is not None
        if tok in (b",", b"]"):
            return self._element_end(tok, value_gap, at)
        if item.done or value_gap:
            return f"unexpected text inside items before byte {at}"
        if tok[:1] == b'"':
            item.done = True
            return None
        if tok in (b"{", b"["):
            self.stack.append(_CLOSER[tok[0]])
            return None
        return f"unexpected {tok.decode()!r} inside items at byte {at}"

    def _element_end(self, tok: bytes, value_gap: bytes, at: int) -> str | None:
        """An element of items ends at ``,`` or ``]``: keep its raw bytes."""
        item = self.item
        assert item is not None
        if item.done:
            if value_gap:
                return f"unexpected text inside items before byte {at}"
        elif value_gap:
            if not _SCALAR.fullmatch(value_gap):
                return f"an element of items before byte {at} is not JSON"
        elif not (tok == b"]" and not self.items and self.items_expect_value):  # else: "items": []
            return f"an element of items is missing before byte {at}"
        raw = self.body[item.start : at].strip(_WS)
        if raw:
            self.items.append(raw)
        if tok == b"]":
            self.stack.pop()
            assert self.slot is not None
            self.slot.done = True
            self.item = None
        else:
            self.item = _Slot(self.pos)
            self.items_expect_value = False
        return None

    def _finish(self, end: int) -> Scan:
        """After the last token: keep a value cut right after it ended, then judge the end."""
        body, slot, key = self.body, self.slot, self.key
        tail = body[self.pos :]
        if self.state == "value" and slot is not None and slot.done and key is not None and _gap_ok(tail):
            # Cut right after a complete string or container value: that key's value is whole (a
            # number is not: "7" may have been "71").
            self.out.add(key, body, slot.start, len(body))
        if end < len(body):
            return self._fail(
                f"a string opened at byte {end} is not closed (the body ends inside it: truncated?)"
            )
        if self.stack or self.state != "end":
            return self._fail(f"the body ends before the batch object does ({len(body)} bytes: truncated?)")
        if not _gap_ok(tail):
            return self._fail("text follows the end of the body")
        return self.out
