"""What a record's content can do to the code that lands it, and the nesting limit every record meets.

Shared by per-record isolation (:mod:`.rejects`) and the rejects table (:mod:`.rejects_table`):
an error of :data:`DATA_ERRORS` is the record's fault, and a record nested deeper than
:data:`MAX_DEPTH` is never parsed at all (:func:`nests_deeper_than` decides without parsing).
"""

from __future__ import annotations

import re

import msgspec
import pyarrow as pa

__all__ = ["DATA_ERRORS", "MAX_DEPTH", "nests_deeper_than", "too_deep"]

#: What building a record's row can raise because of the record's content (not of our code's
#: state): these route the record to the rejects table; anything else still fails the flush.
DATA_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    OverflowError,
    RecursionError,
    UnicodeError,
    ArithmeticError,
    msgspec.MsgspecError,
    pa.ArrowException,
)

#: Deepest nesting of objects and lists a record may have to become a row.
MAX_DEPTH = 64
#: What :func:`nests_deeper_than` keeps of a record: quotes and brackets, one kind of bracket.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"{}[]')
_ONE_BRACKET_KIND = bytes.maketrans(b"[]", b"{}")
_QUOTED = re.compile(rb'"[^"]*"')


def nests_deeper_than(raw: bytes, limit: int) -> bool:
    """Whether objects and lists nest more than ``limit`` levels deep in a JSON text (strings skipped).

    Only C-speed steps, no loop per byte (a Python loop over every byte cost 0.3-0.5 ms per
    100-point trip, a third of the drain): escapes that could hide a quote go; every byte but
    quotes and brackets is deleted (``[`` ``]`` become ``{`` ``}``: in valid JSON brackets pair up
    in order, so one kind is enough); strings go with any brackets inside them; then each
    ``replace(b"{}", b"")`` peels exactly one level (it removes the innermost pairs only), and
    after ``limit`` peels anything left was deeper. No recursion, so no depth can crash it.
    """
    s = bytes(raw)
    if b"\\" in s:
        # Left to right, as JSON reads escapes: pairs of backslashes first, then escaped quotes.
        s = s.replace(b"\\\\", b"").replace(b'\\"', b"")
    s = s.translate(_ONE_BRACKET_KIND, _NOT_STRUCTURE)
    if s.count(b"{") <= limit:  # fewer openers (strings' included) than levels
        return False
    # Quotes alternate open, close. When they all pair up as adjacent "" from the left, no string
    # holds a bracket and the quotes can simply go; else cut the strings out (rare).
    s = s.translate(None, b'"') if 2 * s.count(b'""') == s.count(b'"') else _QUOTED.sub(b"", s)
    for _ in range(limit):
        if not s:
            return False
        s = s.replace(b"{}", b"")
    return bool(s)


def too_deep(raw: bytes) -> bool:
    """Whether a record nests deeper than :data:`MAX_DEPTH` (so it is a reject, never a row).

    Decided on the text, not by a parser's RecursionError: a process whose recursion limit a
    library raised would otherwise parse it. Records with fewer brackets than levels cost two counts.
    """
    return raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and nests_deeper_than(raw, MAX_DEPTH)
