"""Hostile records for the emulator's poison mode: valid JSON that breaks a naive pipeline.

Written as text, one kind at a time, each numbered by ``emulator_seq`` (last), so a test can say
exactly which bytes the lake must keep. The ordinary record generator is in
:mod:`airflow_provider_ktexport.testing.records`, which re-exports these names.
"""

from __future__ import annotations

import json

#: Records that are valid JSON yet break a naive pipeline, one kind each (issue 11). Built as
#: text, not with ``json.dumps``: Python cannot write ``1e400`` or a lone surrogate escape, and
#: its encoder would recurse on the deep ones.
HOSTILE_KINDS: tuple[str, ...] = (
    "number_out_of_range",
    "deep_list",
    "deep_object",
    "date_before_year_1",
    "date_after_year_9999",
    "lone_surrogate",
    "type_lone_surrogate",
    "type_cjk_120",
    "type_emoji_70",
    "type_rejected",
    "type_quarantine",
)
#: The hostile kinds that are valid records: their type makes a bad folder or table name, yet
#: every one must land as a row (the others must land as rejects, with their exact text).
HOSTILE_ROW_KINDS: frozenset[str] = frozenset(
    {"type_cjk_120", "type_emoji_70", "type_rejected", "type_quarantine"}
)
#: The record types of the ``type_*`` kinds (a lone surrogate escape is written as text below).
HOSTILE_TYPES: dict[str, str] = {
    "type_cjk_120": "\u6570" * 120,  # 360 UTF-8 bytes
    "type_emoji_70": "\U0001f69a" * 70,  # 280 UTF-8 bytes
    "type_rejected": "_rejected",
    "type_quarantine": "_quarantine",
}
#: Nesting of the deep kinds: past msgspec's and Python's default recursion limits (1000) for
#: the object, past a naive flattener's for the list.
DEEP_LIST_LEVELS = 400
DEEP_OBJECT_LEVELS = 1000


def hostile_record(kind: str, seq: int) -> bytes:
    """The exact JSON text of a hostile record of ``kind``, numbered ``seq`` (``emulator_seq``, last).

    - ``number_out_of_range``: ``{"type":"telemetry","v":1e400}`` (no double holds it)
    - ``deep_list``: a list nested ``DEEP_LIST_LEVELS`` deep
    - ``deep_object``: an object nested ``DEEP_OBJECT_LEVELS`` deep
    - ``date_before_year_1`` / ``date_after_year_9999``: an ``eventDate`` whose UTC instant falls
      outside years 1-9999 (``0001-01-01T00:30:00+01:00``, ``9999-12-31T23:30:00-01:00``)
    - ``lone_surrogate``: a string holding the escape ``\\ud800`` alone
    - ``type_lone_surrogate``: the record type ``"trip\\ud800"`` (a reject: no folder can say it)
    - ``type_cjk_120`` / ``type_emoji_70``: a type of 120 CJK characters (360 UTF-8 bytes) or 70
      emoji (280 bytes), past file systems' 255-byte names
    - ``type_rejected`` / ``type_quarantine``: a type named like the lake's own folders and tables

    The ``type_*`` kinds other than the surrogate are valid records (:data:`HOSTILE_ROW_KINDS`).
    """
    if kind == "number_out_of_range":
        body = b'"type":"telemetry","v":1e400'
    elif kind == "deep_list":
        body = b'"type":"telemetry","deep":' + b"[" * DEEP_LIST_LEVELS + b"1" + b"]" * DEEP_LIST_LEVELS
    elif kind == "deep_object":
        deep = b'{"a":' * DEEP_OBJECT_LEVELS + b"1" + b"}" * DEEP_OBJECT_LEVELS
        body = b'"type":"telemetry","deep":' + deep
    elif kind == "date_before_year_1":
        body = b'"type":"event","eventDate":"0001-01-01T00:30:00+01:00","eventClass":"hostile"'
    elif kind == "date_after_year_9999":
        body = b'"type":"event","eventDate":"9999-12-31T23:30:00-01:00","eventClass":"hostile"'
    elif kind == "lone_surrogate":
        body = b'"type":"telemetry","name":"Truck \\ud800 lone"'
    elif kind == "type_lone_surrogate":
        body = b'"type":"trip\\ud800","dateEnd":"2026-11-25T10:00:00Z","tripType":"hostile"'
    elif kind in HOSTILE_TYPES:
        rtype = json.dumps(HOSTILE_TYPES[kind], ensure_ascii=False).encode("utf-8")
        body = b'"type":' + rtype + b',"date":"2026-11-25T10:00:00Z","kind":"hostile"'
    else:
        raise ValueError(f"unknown hostile kind {kind!r}; known: {', '.join(HOSTILE_KINDS)}")
    return b"{" + body + b',"emulator_seq":%d}' % seq


# -- key-text records (poison mode, named in poison_kinds only) ---------------------------------------

#: Records that are good rows yet test how the API key is masked in stored data (issue 18). Not
#: in :data:`HOSTILE_KINDS`, whose records all end as rejects: served only when named in
#: ``poison_kinds``.
KEY_TEXT_KINDS: tuple[str, ...] = ("foreign_token_url", "api_key_echo")
#: The other service's URL a ``foreign_token_url`` record carries: it must land exactly.
FOREIGN_TOKEN_URL = "https://files.example.com/r.csv?token=abc123"  # noqa: S105 - not our key


def key_text_record(kind: str, seq: int, api_key: str) -> bytes:
    """The exact JSON text of a ``KEY_TEXT_KINDS`` record numbered ``seq`` (``emulator_seq``, last).

    - ``foreign_token_url``: ``"file"`` holds :data:`FOREIGN_TOKEN_URL` and ``"map"`` an
      upper-case ``TOKEN=`` URL: other services' tokens, data to land byte for byte
    - ``api_key_echo``: a record echoing ``api_key`` as a proxy might, JSON-escaped the ways
      writers do: ``"note"`` (``proxy said: GET /v2/stream?token=<key>``, ASCII-only escapes),
      ``"echo"`` (``\\"`` and ``\\\\`` only) and ``"echo_slash"`` (``/`` as ``\\/`` too); each
      lands with the key masked
    """
    if kind == "foreign_token_url":
        body = b'"type":"telemetry","file":"%b","map":"https://maps.example.com/t?TOKEN=Zz9&x=1"' % (
            FOREIGN_TOKEN_URL.encode()
        )
    elif kind == "api_key_echo":
        note = json.dumps("proxy said: GET /v2/stream?token=" + api_key)
        echo = json.dumps(api_key, ensure_ascii=False)
        body = b'"type":"telemetry","note":%b,"echo":%b,"echo_slash":%b' % (
            note.encode(),
            echo.encode(),
            echo.replace("/", "\\/").encode(),
        )
    else:
        raise ValueError(f"unknown key-text kind {kind!r}; known: {', '.join(KEY_TEXT_KINDS)}")
    return b"{" + body + b',"emulator_seq":%d}' % seq
