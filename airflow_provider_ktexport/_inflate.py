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


class BodyTooLarge(Exception):  # noqa: N818 - a signal to the caller, which raises the public error
    """The decoded body passed the limit; ``received`` decoded bytes were produced before stopping."""

    def __init__(self, limit: int, received: int, wire_bytes: int) -> None:
        super().__init__(f"the body passed {limit} bytes after decoding ({received} bytes and counting)")
        self.limit = limit
        self.received = received
        self.wire_bytes = wire_bytes


class CappedDecoder:
    """Feed the body's bytes as they arrive; :meth:`finish` returns the decoded body.

    :param encoding: the ``Content-Encoding`` header (``gzip``, ``x-gzip``, ``deflate`` or
        none/``identity``); other values raise ``ValueError`` (the client asks for gzip only)
    :param limit: the largest decoded body accepted, in bytes
    :raises BodyTooLarge: from :meth:`feed` as soon as the decoded size passes ``limit``
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

    def feed(self, data: bytes) -> None:
        """Decode one piece of the body as it came off the wire."""
        self.wire_bytes += len(data)
        if self._inflater is None:
            self._append(data)
            return
        while data:
            if not self._started and self._wbits == _ZLIB_WBITS and data[:1] and data[0] & 0x0F != 8:
                # "deflate" without the zlib header: some servers send raw deflate.
                self._wbits = _RAW_WBITS
                self._inflater = zlib.decompressobj(self._wbits)
            self._started = True
            room = self.limit + 1 - len(self._out)  # >= 1 here: _append raises past the limit
            self._append(self._inflater.decompress(data, room))
            if self._inflater.eof:
                # A gzip body may hold several members; bytes after the last one are ignored,
                # as urllib3 and httpx do.
                data = self._inflater.unused_data
                if self._wbits == _GZIP_WBITS and data[:2] == b"\x1f\x8b":
                    self._inflater = zlib.decompressobj(self._wbits)
                    continue
                return
            data = self._inflater.unconsumed_tail

    def _append(self, piece: bytes) -> None:
        self._out += piece
        if len(self._out) > self.limit:
            received = len(self._out)
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
