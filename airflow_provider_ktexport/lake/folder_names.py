"""How any text becomes a safe folder name: the escape and cut mechanics of :mod:`.layout`'s rule.

:mod:`.layout` owns the rule (:func:`~.layout.record_type_folder`, :func:`~.layout.safe_folder_name`)
and re-exports what is public here; this module only holds the character-level work (which
characters are escaped, how a long name is cut and hashed) so the layout reads as the layout.
"""

from __future__ import annotations

import hashlib

__all__ = ["MAX_NAME_BYTES", "RESERVED_PREFIX", "cut", "escape", "is_safe_folder_name", "too_long"]

#: Names starting with this are the lake's own (its folders and tables); a record type never is one.
RESERVED_PREFIX = "_"
#: Longest folder or table name, in UTF-8 bytes: room under the usual 255-byte file name limit.
MAX_NAME_BYTES = 200

# Kept from earlier versions so existing folders keep their names: at most 100 characters before
# the hash suffix "~" + 16 hex digits.
_MAX_CHARS = 100
_HASH_SUFFIX_LEN = 17
#: The usual file name limit (ext4, APFS, NTFS in UTF-16 units; S3 keys allow more).
_FS_NAME_BYTES = 255
_UNSAFE = frozenset('/\\=%:*?"<>|#')


def _pct(c: str) -> str:
    """``c`` as ``%XX`` escapes of its UTF-8 bytes (a lone surrogate too)."""
    return "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))


def _must_escape(c: str, i: int, prev: str) -> bool:
    """Whether ``c`` (at ``i``, after ``prev``) would make the name unsafe or reserved as itself."""
    o = ord(c)
    return (
        c in _UNSAFE
        or o < 0x20
        or 0x7F <= o <= 0x9F
        or 0xD800 <= o <= 0xDFFF  # a lone surrogate: no valid UTF-8 spells it
        or (c == "." and (i == 0 or prev == "."))
        or (i == 0 and c == RESERVED_PREFIX)
    )


def escape(text: str) -> str:
    """``text`` with every character a folder name must not hold as itself escaped (:func:`_must_escape`)."""
    out = []
    prev = ""
    for i, c in enumerate(text):
        out.append(_pct(c) if _must_escape(c, i, prev) else c)
        prev = c
    return "".join(out)


def cut(safe: str, text: str) -> str:
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


def too_long(safe: str) -> bool:
    """Whether an escaped name is past the limits and must be :func:`cut`."""
    return len(safe) > _MAX_CHARS or len(safe.encode("utf-8")) > MAX_NAME_BYTES


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
