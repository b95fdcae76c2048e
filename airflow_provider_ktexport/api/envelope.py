"""The batch body: the envelope ``{"id": .., "items": [..]}`` decoded and judged (no I/O).

:func:`classify_body` applies the envelope rules (docs/architecture.md section 3) that both
transports decide by; :func:`read_envelope` decodes a body with msgspec, falling back to the
iterative scanner (:mod:`.scan`) for bodies msgspec cannot read; :func:`sighting_digest` names
a quarantined body the same across redeliveries.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field

import msgspec

from airflow_provider_ktexport.api.scan import scan

__all__ = [
    "ENVELOPE_KEYS",
    "BatchBody",
    "Envelope",
    "classify_body",
    "envelope_id",
    "is_ackable_id",
    "read_envelope",
    "shown_id",
    "sighting_digest",
]

#: The envelope's keys; any other top-level key beside an id means the API changed under us.
ENVELOPE_KEYS = frozenset({"id", "items"})


# An id goes into a DELETE's path: nothing that could change the path, the query, or a log line.
_NOT_IN_ID = re.compile(r"[/\\?#\s\x00-\x1f\x7f-\x9f]")


_ID_SHOWN = 80  # characters of a refused id shown in a message


class Envelope(msgspec.Struct):
    """A GET body: ``Raw`` keeps each record's own bytes without building dicts.

    :param other_keys: top-level keys beside ``id`` and ``items`` (a changed API)
    :param repeated_keys: top-level keys the body holds more than once (escaped spellings
        included): a JSON reader keeps only one of each, so what it dropped was never read
    """

    id: str | int | None = None
    items: list[msgspec.Raw] | None = None
    other_keys: tuple[str, ...] = ()
    repeated_keys: tuple[str, ...] = ()

    @property
    def batch_id(self) -> str | None:
        """The id as text; None means the body carries no id."""
        return None if self.id is None else str(self.id)


class _PlainEnvelope(msgspec.Struct, forbid_unknown_fields=True):
    """The usual body, decoded in one pass; anything else falls back to the key-by-key reading."""

    id: str | int | None = None
    items: list[msgspec.Raw] | None = None


_FAST_DECODER = msgspec.json.Decoder(_PlainEnvelope)


_TOP_DECODER = msgspec.json.Decoder(dict[str, msgspec.Raw])


_ID_DECODER = msgspec.json.Decoder(str | int | None)


_ITEMS_DECODER = msgspec.json.Decoder(list[msgspec.Raw] | None)


# What separates two records of the items list (JSON whitespace around one comma).
_COMMA = re.compile(rb"[ \t\r\n]*,[ \t\r\n]*")


#: Stands for the records in a body's skeleton: a JSON number no ordinary envelope holds.
_STAND_IN = b"-0.0e-0"


def read_envelope(body: bytes) -> Envelope | str:
    """The decoded body, or what is wrong with it (a sentence for the quarantine's error).

    Never raises. msgspec reads ordinary bodies; a body it cannot read because of one
    record (nesting past the recursion limit, a lone surrogate escape) is split by the
    iterative scanner instead, so the other records still come out and the record level
    rejects the bad one. Only the envelope itself must be sound: a body cut short or broken
    outside its records is a problem.

    msgspec keeps the last of a repeated key (``"items"`` twice, or once spelled
    ``"i\\u0074ems"``), which would read a batch of records as empty: its one-pass reading
    is kept only once :func:`_one_of_each` proves the top level holds each key once.
    Anything else is read by the scanner, whose key list keeps repeats.
    """
    try:
        body.decode("utf-8")  # msgspec does not validate the UTF-8 inside Raw items
    except UnicodeDecodeError as exc:
        return f"the body is not valid UTF-8 ({exc.reason} at byte {exc.start})"
    try:
        # One pass for the usual body (measured: 0.5 ms per 400 KB batch, half the key-by-key
        # reading; the proof of its keys adds ~0.03 ms); unknown keys or odd types raise
        # ValidationError and go to the scanner, like bodies msgspec cannot read.
        plain = _FAST_DECODER.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return _scanned(body)
    if _one_of_each(body, plain.items):
        return Envelope(id=plain.id, items=plain.items)
    return _scanned(body)


def _one_of_each(body: bytes, items: list[msgspec.Raw] | None) -> bool:
    """Whether ``body``'s top level holds ``id`` and ``items`` at most once each, and nothing else.

    Cheap proof for a body msgspec decoded: the decoded records are found in the body one
    after another (a ``Raw`` value never starts with whitespace or a comma, so the first hit
    of the first record is normally the record itself, and each next one must follow a
    comma), and the small skeleton left with one stand-in number in their place is checked
    by the scanner, which decodes escaped keys and keeps repeats. The stand-in must be the
    skeleton's only items element, so a record found at the wrong place (inside the id, say)
    fails the proof; False only means "read the whole body with the scanner".
    """
    if items:
        span = _records_span(body, items)
        if span is None:
            return False
        skeleton = body[: span[0]] + _STAND_IN + body[span[1] :]
        if skeleton.count(_STAND_IN) != 1:
            return False
        expected = [_STAND_IN]
    else:
        skeleton, expected = body, []  # no records: the body is its own (small) skeleton
    found = scan(skeleton)
    if found.error is not None:
        return False
    names = [key for key, _ in found.keys]
    if len(set(names)) != len(names) or not ENVELOPE_KEYS.issuperset(names):
        return False
    return (found.items or []) == expected


def _records_span(body: bytes, items: list[msgspec.Raw]) -> tuple[int, int] | None:
    """(start of the first record, end of the last) when the records follow each other in
    ``body`` separated by single commas, as they do inside one items list; else None."""
    start = body.find(items[0])
    if start < 0:
        return None
    compact = b",".join(items)  # one comparison for the usual body (a loop costs 0.3 ms per 500)
    if body.startswith(compact, start):
        return start, start + len(compact)
    end = start + len(items[0])
    for raw in items[1:]:
        comma = _COMMA.match(body, end)
        if comma is None or not body.startswith(raw, comma.end()):
            return None
        end = comma.end() + len(raw)
    return start, end


def _scanned(body: bytes) -> Envelope | str:
    """The body split by the iterative scanner, after msgspec could not read it.

    msgspec's own message is kept for a body the scanner finds broken too (it names the byte).
    """
    found = scan(body)
    if found.error is None:
        return _envelope_of(found.keys, found.items)
    if "not a batch object" in found.error:
        return found.error
    try:
        _TOP_DECODER.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return f"the body is not valid JSON ({exc})"
    except RecursionError:
        pass
    return f"the body is not valid JSON ({found.error})"


def _envelope_of(
    keys: list[tuple[str, msgspec.Raw]] | list[tuple[str, bytes]], items: list[bytes] | None = None
) -> Envelope | str:
    """The Envelope of the top-level keys and raw values (items: already split by the scanner)."""
    values = dict(keys)
    try:
        batch_id = _ID_DECODER.decode(values["id"]) if "id" in values else None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return f"the body is JSON but not a batch object (its id is not a readable string or integer: {exc})"
    raw_items: list[msgspec.Raw] | None = None
    if items is not None:
        raw_items = [msgspec.Raw(raw) for raw in items]
    elif "items" in values:
        try:
            raw_items = _ITEMS_DECODER.decode(values["items"])
        except msgspec.ValidationError as exc:
            return f"the body is JSON but not a batch object (items is not a list: {exc})"
        except (msgspec.DecodeError, RecursionError) as exc:  # pragma: no cover - read once already
            return f"the body is not valid JSON ({exc})"
    other = tuple(key for key, _ in keys if key not in ENVELOPE_KEYS)
    counts = Counter(key for key, _ in keys)
    repeated = tuple(key for key, count in counts.items() if count > 1)
    return Envelope(id=batch_id, items=raw_items, other_keys=other, repeated_keys=repeated)


def envelope_id(body: bytes) -> str | None:
    """The envelope's own top-level ``id``, never a record's: None when it cannot be proven.

    A body that decodes gives its id. A body cut short or broken gives the id only when the
    scanner met it as a key of the outer object before the break (a record's ``id`` sits
    deeper, whatever comes first in the text). A body holding ``id`` twice has no proven id.
    """
    found = read_envelope(body)
    if isinstance(found, Envelope):
        return None if "id" in found.repeated_keys else found.batch_id
    ids = [raw for key, raw in scan(body).keys if key == "id"]
    if len(ids) != 1:
        return None  # none, or two ids before the break: neither is proven the batch's
    try:
        value = _ID_DECODER.decode(ids[0])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return None if value is None else str(value)


def sighting_digest(body: bytes) -> str:
    """The name a quarantined body is stored and counted under, the same across redeliveries.

    The service redelivers an unacknowledged batch under a new id, so a hash of the whole body
    never repeats. Hashed instead: the body with the value of each top-level ``id`` key (as
    the scanner reads the envelope: escaped spellings included, a record's ``id`` never, and
    in a body cut short only the ids before the break) replaced by ``null``; a body without
    one is hashed whole. SHA-256, hex. A redelivery that regroups the records is another body.
    """
    found = scan(body)
    spans = [span for (key, _), span in zip(found.keys, found.spans, strict=True) if key == "id"]
    parts: list[bytes] = []
    pos = 0
    for start, end in spans:
        parts += [body[pos:start], b"null"]
        pos = end
    parts.append(body[pos:])
    return hashlib.sha256(b"".join(parts)).hexdigest()


def is_ackable_id(batch_id: object) -> bool:
    """Whether ``batch_id`` may go into ``DELETE /v2/stream/{id}``.

    Refused: non-strings, empty, ``.`` and ``..`` (they change the path once resolved), and ids
    holding ``/``, ``\\``, ``?``, ``#``, whitespace or control characters. A server that sends
    such an id is not the API this provider knows; deleting by it could hit another resource.
    """
    return isinstance(batch_id, str) and batch_id not in ("", ".", "..") and not _NOT_IN_ID.search(batch_id)


def shown_id(batch_id: str) -> str:
    """An id fit for a message: quoted with escapes (control characters visible), and shortened."""
    text = batch_id if len(batch_id) <= _ID_SHOWN else batch_id[:_ID_SHOWN] + "..."
    return repr(text)


@dataclass(frozen=True)
class BatchBody:
    """What a ``200`` body means under the envelope rules (docs/architecture.md section 3).

    :param kind: ``"empty"`` (no id: the queue is empty), ``"empty_batch"`` (an id with
        ``"items": []``: acknowledge at once), ``"data"`` (records to land) or ``"problem"``
        (never acknowledged: quarantine the body)
    :param batch_id: the envelope's id (for a problem: only when it is ackable)
    :param items: each record's raw bytes (``"data"``)
    :param problem: what is wrong (``"problem"``), a sentence for the error and the quarantine
    :param note: why an ``"empty"`` body deserves a warning (it held items but no id), or ""
    """

    kind: str
    batch_id: str | None = None
    items: list[bytes] = field(default_factory=list)
    problem: str = ""
    note: str = ""


def classify_body(body: bytes) -> BatchBody:
    """Apply the envelope rules to a 200's body; the client and the trigger both decide by it.

    Only an id with ``"items": []`` is the empty batch acknowledged at once. An id with
    ``items`` missing, ``null`` or not a list, or beside unknown top-level keys, or an id that
    cannot be used in a DELETE, is a problem: a changed API must never make us delete what
    we did not read. A body without an id (``{}``, ``{"id": null}``) is read as empty, as the
    vendor's own sample client does.
    """
    if not body.strip():
        return BatchBody("empty", note="the body is empty")
    envelope = read_envelope(body)
    if isinstance(envelope, str):
        found = envelope_id(body)
        return BatchBody("problem", batch_id=found if is_ackable_id(found) else None, problem=envelope)
    if envelope.repeated_keys:
        return _repeated_keys_problem(envelope)
    batch_id = envelope.batch_id
    if batch_id is None:
        count = len(envelope.items or ())
        note = f"it holds {count} items but no id (they cannot be acknowledged)" if count else ""
        return BatchBody("empty", note=note)
    if not is_ackable_id(batch_id):
        return BatchBody(
            "problem",
            problem=f"its batch id {shown_id(batch_id)} cannot be used in a DELETE (empty, '.', '..', "
            "or holding '/', '\\', '?', '#', whitespace or control characters)",
        )
    if envelope.other_keys:
        keys = ", ".join(repr(key) for key in envelope.other_keys[:10])
        return BatchBody(
            "problem",
            batch_id=batch_id,
            problem=f"the batch object has unknown top-level keys ({keys}) beside id and items: the API "
            "may have changed, so it is not acknowledged",
        )
    if envelope.items is None:
        return BatchBody(
            "problem",
            batch_id=batch_id,
            problem="the batch has an id but its items are missing or null: the API may have changed, "
            "so it is not acknowledged",
        )
    # An item that is not an object is one bad record, not a bad batch: the drain keeps it in the
    # rejects table with its exact text and lands the rest, so it cannot stop the queue.
    items = [bytes(raw) for raw in envelope.items]
    if not items:
        return BatchBody("empty_batch", batch_id=batch_id)
    return BatchBody("data", batch_id=batch_id, items=items)


def _repeated_keys_problem(envelope: Envelope) -> BatchBody:
    """A body holding a top-level key twice: ``{"id":X,"items":[r1,r2],"items":[]}`` reads as an
    empty batch when the last key wins, and two ids name two batches: neither may be deleted."""
    batch_id = None if "id" in envelope.repeated_keys else envelope.batch_id
    keys = ", ".join(repr(key) for key in envelope.repeated_keys[:10])
    return BatchBody(
        "problem",
        batch_id=batch_id if is_ackable_id(batch_id) else None,
        problem=f"the batch object holds the top-level key(s) {keys} more than once (a JSON reader "
        "keeps only one of each, so records could be lost): it is not acknowledged",
    )
