"""The capped decoder (_inflate.py): what follows a compressed stream's end counts against the limit."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_ktexport.api.inflate import BodyTooLarge, CappedDecoder

_REAL_DECOMPRESSOBJ = zlib.decompressobj

BODY = b'{"id":"b-1","items":[' + b",".join(b'{"n":%d}' % n for n in range(2000)) + b"]}"
KIB = 1024
MIB = 1024 * KIB


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def decode(data: bytes, limit: int, *, encoding: str = "gzip", piece: int = 64 * KIB) -> bytes:
    decoder = CappedDecoder(encoding, limit)
    for chunk in pieces(data, piece):
        decoder.feed(chunk)
    return decoder.finish()


class _Spy:
    """A zlib decompressor that counts the bytes it is handed (the work its callers ask of it)."""

    fed = 0

    def __init__(self, wbits: int) -> None:
        self._inner = _REAL_DECOMPRESSOBJ(wbits)

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        _Spy.fed += len(data)
        return self._inner.decompress(data, max_length)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_trailing_bytes_after_the_gzip_end_count_against_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zlib, "decompressobj", _Spy)
    _Spy.fed = 0
    wire = gzip.compress(BODY) + bytes(16 * MIB)  # 16 MiB of zeros after the end, limit 1 MiB
    with pytest.raises(BodyTooLarge) as caught:
        decode(wire, MIB)
    assert caught.value.limit == MIB and caught.value.received > MIB
    # Stopped at the limit, and zlib never saw the trailing bytes: no work grows with them.
    assert caught.value.wire_bytes <= len(gzip.compress(BODY)) + MIB + 64 * KIB
    assert _Spy.fed <= len(gzip.compress(BODY)) + 64 * KIB


def test_trailing_bytes_within_the_limit_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zlib, "decompressobj", _Spy)
    _Spy.fed = 0
    wire = gzip.compress(BODY) + bytes(4 * MIB) + b"\x1f"
    assert decode(wire, 8 * MIB) == BODY
    assert _Spy.fed <= len(gzip.compress(BODY)) + 64 * KIB  # not 4 MiB, fed again at every piece
    with pytest.raises(BodyTooLarge):  # the same bytes pass a limit that the body alone fits
        decode(wire, len(BODY) + MIB)


def test_concatenated_gzip_members_are_one_body() -> None:
    half = len(BODY) // 2
    wire = gzip.compress(BODY[:half]) + gzip.compress(BODY[half:])
    assert decode(wire, 8 * MIB) == BODY
    # A member's magic split between two reads is still a member.
    first = gzip.compress(BODY[:half])
    decoder = CappedDecoder("gzip", 8 * MIB)
    second = gzip.compress(BODY[half:])
    for chunk in (first + second[:1], second[1:]):
        decoder.feed(chunk)
    assert decoder.finish() == BODY


def test_members_after_the_first_count_their_wire_bytes_too() -> None:
    # Empty members decode to nothing, yet each costs a zlib object: they cannot go on forever.
    wire = gzip.compress(BODY) + gzip.compress(b"") * (MIB // 20)
    with pytest.raises(BodyTooLarge):
        decode(wire, len(BODY) + 100 * KIB)
    assert decode(gzip.compress(BODY) + gzip.compress(b"") * 10, len(BODY) + KIB) == BODY


def test_trailing_bytes_after_deflate_count_too() -> None:
    wire = zlib.compress(BODY) + b"\x00" * (2 * MIB)
    with pytest.raises(BodyTooLarge):
        decode(wire, MIB, encoding="deflate")
    assert decode(zlib.compress(BODY) + b"junk", MIB, encoding="deflate") == BODY
