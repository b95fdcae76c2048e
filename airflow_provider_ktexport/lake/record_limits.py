"""What a record's content can do to the code that lands it, and the nesting limit every record meets.

Shared by per-record isolation (:mod:`.rejects`) and the rejects table (:mod:`.rejects_table`):
an error of :data:`DATA_ERRORS` is the record's fault, and a record nested deeper than
:data:`MAX_DEPTH` is never parsed at all (:func:`nests_deeper_than` decides without parsing).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import msgspec
import pyarrow as pa

__all__ = ["DATA_ERRORS", "MAX_DEPTH", "nests_deeper_than", "too_deep", "too_deep_positions"]

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
#: Records up to this many bytes are screened by counting brackets before the exact check; a
#: longer one goes straight to it (its first step counts the brackets it keeps anyway): counting
#: a 10 KB trip's brackets first made the screen half as dear again (2.2 against 1.5 s per 100k).
_SHORT = 4096
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
    library raised would otherwise parse it. A short record with fewer brackets than levels costs
    two counts.
    """
    if len(raw) <= _SHORT and raw.count(b"{") + raw.count(b"[") <= MAX_DEPTH:
        return False
    return nests_deeper_than(raw, MAX_DEPTH)


def too_deep_positions(raws: Sequence[bytes]) -> tuple[int, ...]:
    """Positions of the records of ``raws`` that nest deeper than :data:`MAX_DEPTH` (:func:`too_deep`).

    The screen every record meets once: the drain decides as a batch joins its buffer and the
    flush carries the decision to :func:`.rejects.land_records` (it used to screen each record
    again, 0.09 s per 100k mix records and 1.5 s per 100k 100-point trips).
    """
    return tuple(j for j, raw in enumerate(raws) if too_deep(raw))
