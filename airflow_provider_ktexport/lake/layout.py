"""The lake's names: the folders it reserves, and how a record type becomes a folder and a table.

A record's ``type`` is free text from the server, yet it names a hive partition folder
(``record_type=<folder>``, ``_rejected/record_type=<folder>``, the schema store's
:func:`schema_folder`) and an Iceberg table. :func:`record_type_folder` is the one rule for that, used by every writer, reader,
sink and compaction, so they all agree on where a type lives:

- valid UTF-8 whatever the text (a lone surrogate is percent-encoded, never written raw);
- at most :data:`MAX_NAME_BYTES` UTF-8 bytes (file systems refuse names past 255 bytes): a longer
  name is cut and gets a stable hash of the whole type, so two long types never share a folder;
- never a name the lake reserves: nothing starts with :data:`RESERVED_PREFIX` (``_rejected``,
  ``_quarantine``, ``_schema`` and the Iceberg tables of the same names);
- an ordinary type is its own folder and table (``telemetry``, ``trip``, ``event``...), and any
  name that is not cut decodes back to its type (percent escapes, as readers decode them).

The engine keys everything by the folder (a record type's schema, tables and counts), so the
folder, not the raw text, is what reaches a sink.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from urllib.parse import unquote

__all__ = [
    "FLUSH_DIR",
    "MAX_NAME_BYTES",
    "PROBE_DIR",
    "QUARANTINE_DIR",
    "REJECTED_DIR",
    "RESERVED_PREFIX",
    "SCHEMA_DIR",
    "UNKNOWN_TYPE",
    "folder_table",
    "is_safe_folder_name",
    "record_type_folder",
    "record_type_of_folder",
    "record_type_table",
    "safe_folder_name",
    "schema_folder",
]

#: Names starting with this are the lake's own (its folders and tables); a record type never is one.
RESERVED_PREFIX = "_"
#: The schema store: ``_schema/<name>/<writer id>.json`` (see :func:`schema_folder`).
SCHEMA_DIR = "_schema"
#: The rejects table: ``_rejected/record_type=<folder>/ingest_date=<day>/`` (an Iceberg table too).
REJECTED_DIR = "_rejected"
#: Undecodable bodies (an Iceberg table too).
QUARANTINE_DIR = "_quarantine"
#: The flush ledger: ``_flushes/<source>/<flush id>.json``, one per flush still in doubt (:mod:`.ledger`).
FLUSH_DIR = "_flushes"
#: Where a drain writes, reads back and deletes a small probe file before its first lease.
PROBE_DIR = "_probe"
#: The folder of records without a usable ``type``.
UNKNOWN_TYPE = "unknown"
#: Longest folder or table name, in UTF-8 bytes: room under the usual 255-byte file name limit.
MAX_NAME_BYTES = 200

# Kept from earlier versions so existing folders keep their names: at most 100 characters before
# the hash suffix "~" + 16 hex digits.
_MAX_CHARS = 100
_HASH_SUFFIX_LEN = 17
#: The usual file name limit (ext4, APFS, NTFS in UTF-16 units; S3 keys allow more).
_FS_NAME_BYTES = 255
_UNSAFE = frozenset('/\\=%:*?"<>|#')
_PLAIN_TABLE = re.compile(r"^[a-z0-9][a-z0-9_]{0,99}$")


def _pct(c: str) -> str:
    return "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))


def _must_escape(c: str, i: int, prev: str) -> bool:
    o = ord(c)
    return (
        c in _UNSAFE
        or o < 0x20
        or 0x7F <= o <= 0x9F
        or 0xD800 <= o <= 0xDFFF  # a lone surrogate: no valid UTF-8 spells it
        or (c == "." and (i == 0 or prev == "."))
        or (i == 0 and c == RESERVED_PREFIX)
    )


def _escape(text: str) -> str:
    out = []
    prev = ""
    for i, c in enumerate(text):
        out.append(_pct(c) if _must_escape(c, i, prev) else c)
        prev = c
    return "".join(out)


def _cut(safe: str, text: str) -> str:
    """``safe`` cut to fit the limits with room for the hash of ``text``; never halves an escape."""
    budget = MAX_NAME_BYTES - _HASH_SUFFIX_LEN
    kept: list[str] = []
    size = 0
    for c in safe[:_MAX_CHARS]:  # whole characters only, so the cut text stays valid UTF-8
        size += len(c.encode("utf-8"))
        if size > budget:
            break
        kept.append(c)
    cut = "".join(kept)
    pos = cut.rfind("%", len(cut) - 2)
    if pos != -1:
        cut = cut[:pos]
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return f"{cut}~{digest}"


def safe_folder_name(value: object) -> str:
    """Any value as a folder name by the record type rule (used for writer ids too); ``None``
    and empty text become ``unknown``."""
    text = "" if value is None else str(value)
    if not text:
        return UNKNOWN_TYPE
    safe = _escape(text)
    if len(safe) > _MAX_CHARS or len(safe.encode("utf-8")) > MAX_NAME_BYTES:
        return _cut(safe, text)
    return safe


def is_safe_folder_name(value: str) -> bool:
    """True for a name that is safe as one path segment (checked before every write, and on the
    folders compaction visits): no separator, ``..``, ``=`` or control character, valid UTF-8 and
    short enough for a file system. Names of earlier versions (up to 255 bytes, a leading ``_``)
    pass, so their lakes still compact.
    """
    if not value or value.startswith(".") or ".." in value or len(value) > _MAX_CHARS + _HASH_SUFFIX_LEN:
        return False
    try:
        if len(value.encode("utf-8")) > _FS_NAME_BYTES:
            return False
    except UnicodeEncodeError:  # a lone surrogate: no file system can store the name
        return False
    return not any(c in "/\\=" or ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value)


def record_type_folder(record_type: object) -> str:
    """The folder name (the ``record_type=`` value) of a record type; see the module docstring.

    Unsafe characters (``/ \\ = % : * ? " < > | #``, control characters, lone surrogates, a
    leading ``.`` or ``_`` and a ``.`` after a ``.``) become ``%XX`` escapes of their UTF-8
    bytes, which DuckDB, pyarrow and Spark decode back; a non-string or empty type is
    ``unknown``; past 100 characters or :data:`MAX_NAME_BYTES` bytes the name is cut and ends in
    ``~`` plus 16 hex digits of the type's hash.
    """
    if type(record_type) is not str:
        return UNKNOWN_TYPE
    return safe_folder_name(record_type)


def schema_folder(folder: str) -> str:
    """The schema store's folder of a record type folder, relative to the lake root.

    ``_schema/`` plus the folder escaped once more by the same rule: every version has written it
    so (an ordinary type's folder escapes to itself), and keeping it keeps existing stores found.
    """
    return posixpath.join(SCHEMA_DIR, safe_folder_name(folder))


def record_type_of_folder(folder: str) -> str:
    """The record type a folder holds, as readers see it (escapes decoded; a cut name stays cut).

    A lone surrogate cannot be Arrow text: it reads back as U+FFFD, as DuckDB and pyarrow show it.
    """
    return unquote(folder)


def folder_table(folder: str) -> str:
    """The Iceberg table of a record type's folder: the folder itself when it is a plain lowercase
    name, else a lowercase spelling plus a short hash of the folder (two types never share one)."""
    if _PLAIN_TABLE.match(folder):
        return folder
    plain = re.sub(r"[^a-z0-9_]+", "_", folder.lower()).strip("_")[:60] or "type"
    return f"{plain}_{hashlib.blake2b(folder.encode('utf-8'), digest_size=4).hexdigest()}"


def record_type_table(record_type: object) -> str:
    """The Iceberg table of a record type (the table of its :func:`record_type_folder`)."""
    return folder_table(record_type_folder(record_type))
