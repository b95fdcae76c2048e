"""Undo a response's content-encoding with a ceiling on the decoded size (shared by client and trigger).

A gzip body of 305 KB can expand to 300 MB (a proxy's error page, a bug, or a hostile server):
decoded in one call it costs the process that much memory, per fetcher. Here the compressed
bytes are fed in as they arrive and the output is cut at ``limit + 1`` bytes, so memory stays
near the limit whatever the body claims. Standard library only (``zlib``); no HTTP library.
"""

from __future__ import annotations

import zlib

__all__ = ["BodyTooLarge", "CappedDecoder"]

# gzip (and x-gzip): a gzip header; deflate: a zlib header, or raw deflate from broken servers.
_GZIP_WBITS = zlib.MAX_WBITS | 16
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_WBITS = -zlib.MAX_WBITS
_GZIP_MAGIC = b"\x1f\x8b"


class BodyTooLarge(Exception):  # noqa: N818 - a signal to the caller, which raises the public error
    """The decoded body passed the limit; ``received`` decoded bytes were produced before stopping."""

    def __init__(self, limit: int, received: int, wire_bytes: int) -> None:
        super().__init__(f"the body passed {limit} bytes after decoding ({received} bytes and counting)")
        self.limit = limit
        self.received = received
        self.wire_bytes = wire_bytes


class CappedDecoder:
    """Feed the body's bytes as they arrive; :meth:`finish` returns the decoded body.

    What counts against ``limit``: the decoded bytes, plus every wire byte after the end of
    the first compressed stream. Concatenated gzip members are legal gzip and are decoded
    (their output and their compressed bytes both count); bytes that follow the end and are
    not a gzip member are ignored, as urllib3 and httpx do, but counted and never fed to zlib
    (a zlib object past its end copies all it is fed into ``unused_data``: 96 MiB of trailing
    zeros once cost 5.5 s of CPU, growing with the square of their size). So a body's bytes
    on the wire and its decoded size are both bounded by ``limit``, whatever follows the end.

    :param encoding: the ``Content-Encoding`` header (``gzip``, ``x-gzip``, ``deflate`` or
        none/``identity``); other values raise ``ValueError`` (the client asks for gzip only)
    :param limit: the largest decoded body accepted, in bytes
    :raises BodyTooLarge: from :meth:`feed` as soon as the counted size passes ``limit``
    :raises zlib.error: the compressed stream is corrupt
    """

    def __init__(self, encoding: str | None, limit: int) -> None:
        self.limit = limit
        self.wire_bytes = 0
        self._out = bytearray()
        name = (encoding or "identity").strip().lower()
        if name in ("", "identity"):
            self._wbits: int | None = None
        elif name in ("gzip", "x-gzip"):
            self._wbits = _GZIP_WBITS
        elif name == "deflate":
            self._wbits = _ZLIB_WBITS
        else:
            raise ValueError(f"content-encoding {encoding!r} is not supported (the client asks for gzip)")
        self._inflater = None if self._wbits is None else zlib.decompressobj(self._wbits)
        self._started = False
        self._past_first = False  # the first compressed stream has ended
        self._trailing = False  # what follows the end is not a gzip member: count it, drop it
        self._held = b""  # a lone first byte of what may be a gzip member's magic
        self._extra = 0  # wire bytes after the first stream's end

    def feed(self, data: bytes) -> None:
        """Decode one piece of the body as it came off the wire."""
        self.wire_bytes += len(data)
        if self._inflater is None:
            self._append(data)
            return
        if self._past_first:
            self._count_extra(len(data))
        if self._trailing:
            return
        while data:
            if self._inflater.eof:
                data = self._next_member(data)
                if not data:
                    return
            if not self._started and self._wbits == _ZLIB_WBITS and data[0] & 0x0F != 8:
                # "deflate" without the zlib header: some servers send raw deflate.
                self._wbits = _RAW_WBITS
                self._inflater = zlib.decompressobj(self._wbits)
            self._started = True
            room = self.limit + 1 - len(self._out) - self._extra  # >= 1: _append raises past it
            self._append(self._inflater.decompress(data, room))
            if self._inflater.eof:
                data = self._inflater.unused_data
                if not self._past_first:
                    self._past_first = True
                    self._count_extra(len(data))
                continue
            data = self._inflater.unconsumed_tail

    def _next_member(self, data: bytes) -> bytes:
        """What follows a stream's end: a new gzip member's bytes to inflate, or b"" (trailing
        bytes, dropped from now on; or one byte held until the next piece tells)."""
        head, self._held = self._held + data, b""
        if self._wbits == _GZIP_WBITS:
            if head.startswith(_GZIP_MAGIC):
                self._inflater = zlib.decompressobj(self._wbits)
                return head
            if head == _GZIP_MAGIC[:1]:
                self._held = head
                return b""
        self._trailing = True
        return b""

    def _count_extra(self, count: int) -> None:
        self._extra += count
        self._check()

    def _append(self, piece: bytes) -> None:
        self._out += piece
        self._check()

    def _check(self) -> None:
        if len(self._out) + self._extra > self.limit:
            received = len(self._out) + self._extra
            self._out = bytearray()  # free it now: the caller only reports
            raise BodyTooLarge(self.limit, received, self.wire_bytes)

    def finish(self) -> bytes:
        """The decoded body. A compressed stream that ended early gives what it held (as urllib3
        and httpx do): the JSON layer then finds the body truncated."""
        if self._inflater is not None and self._started and not self._inflater.eof:
            self._append(self._inflater.flush())
        out = bytes(self._out)
        self._out = bytearray()
        return out
