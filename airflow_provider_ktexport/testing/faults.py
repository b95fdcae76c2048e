"""The emulator's fault injection: fault names and settings, the seeded dice, scripted answers.

A :class:`FaultPlan` holds no lock: the emulator calls it while holding its own, so a roll and
the lease it breaks are decided together. Rolls draw only for active faults, so a fault-free run
consumes no randomness and stays reproducible by seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from airflow_provider_ktexport.testing.wire import JSON_TYPE, Response, batch_body, error

#: Fault rates (0..1 per API request), in the order they are rolled.
FAULT_NAMES: tuple[str, ...] = (
    "reset",
    "status_429",
    "status_502",
    "status_503",
    "status_504",
    "html_error",
    "truncated",
    "invalid_utf8",
    "slow",
    "reset_after_ack",
    "items_missing",
    "items_null",
    "items_renamed",
    "items_twice",
    "items_escaped",
    "id_twice",
    "gzip_trailer",
)
#: Envelope faults: the batch is leased and served with its id but no readable ``items`` (the key
#: left out, ``null``, or renamed to ``records``): a client must never acknowledge such a batch.
ENVELOPE_FAULTS: tuple[str, ...] = ("items_missing", "items_null", "items_renamed")
#: Faults of a batch's first delivery only (what a broken proxy or gateway makes of a body); its
#: redelivery is served properly. ``items_twice`` adds ``"items":[]`` after the records,
#: ``items_escaped`` adds it spelled ``"i\u0074ems"``, ``id_twice`` adds a second id: a reader
#: that keeps the last key sees an empty batch or another id. ``gzip_trailer`` appends
#: ``gzip_trailer_bytes`` zero bytes after the end of the gzip stream.
FIRST_DELIVERY_FAULTS: tuple[str, ...] = ("items_twice", "items_escaped", "id_twice", "gzip_trailer")
#: The first-delivery faults whose records a reader keeping the last key never sees.
REPEATED_KEY_FAULTS = ("items_twice", "items_escaped", "id_twice")
#: Fault settings that are not rates.
FAULT_SETTINGS: dict[str, float] = {"retry_after": 1.0, "slow_seconds": 2.0, "gzip_trailer_bytes": 1 << 20}
#: Faults rolled before anything is leased or acknowledged.
PRE_LEASE = ("reset", "status_429", "status_502", "status_503", "status_504", "html_error")
_HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
_REASONS = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


@dataclass
class Script:
    """A hand-made answer for the next ``times`` requests of ``method``."""

    status: int
    body: bytes
    headers: dict[str, str]
    times: int
    lease: bool
    method: str


@dataclass
class Served:
    """What the dice did to one leased batch as it is served."""

    #: The body fault (an envelope, byte or first-delivery fault), or None.
    fault: str | None
    #: Seconds to hold the answer (the ``slow`` fault), 0 for none.
    delay: float
    #: Zero bytes after the gzip stream (the ``gzip_trailer`` fault).
    trailer: int

    @property
    def hides_records(self) -> bool:
        """True when a reader cannot see the batch's records: acking it would lose them."""
        return self.fault in ENVELOPE_FAULTS or self.fault in REPEATED_KEY_FAULTS

    def body(self, batch_id: str, records: list[bytes]) -> bytes:
        """The batch's body as this fault breaks it."""
        body = batch_body(batch_id.encode(), b",".join(records), self.fault)
        if self.fault == "truncated":
            return body[: len(body) // 2]
        if self.fault == "invalid_utf8":
            # Bad bytes inside the first record's first key: valid JSON shape, invalid UTF-8.
            cut = body.index(b'"items":[') + len(b'"items":[') + 2
            return body[:cut] + b"\xff\xfe\xc3" + body[cut:]
        return body


class FaultPlan:
    """Fault rates and settings, how often each fault fired, and the scripted answers queued."""

    def __init__(self, seed: int) -> None:
        self.values: dict[str, float] = dict.fromkeys(FAULT_NAMES, 0.0) | FAULT_SETTINGS
        self.counts: dict[str, int] = dict.fromkeys(FAULT_NAMES, 0)
        self.scripts: list[Script] = []
        self._rng = random.Random(seed)

    def check_names(self, names: Sequence[str], *also: str) -> None:
        """Refuse names that are neither faults, fault settings nor ``also``, listing the known ones."""
        unknown = set(names) - set(self.values) - set(also)
        if unknown:
            raise ValueError(f"unknown fault(s): {sorted(unknown)}; known: {sorted(self.values)}")

    def set(self, name: str, value: float) -> None:
        """Set one fault rate (0..1) or setting."""
        value = float(value)
        if name in FAULT_NAMES and not 0.0 <= value <= 1.0:
            raise ValueError(f"fault rate {name}={value} is not within 0..1")
        self.values[name] = value

    def clear(self) -> None:
        """Every fault rate to zero (settings kept) and no scripted answers."""
        self.values.update(dict.fromkeys(FAULT_NAMES, 0.0))
        self.scripts.clear()

    def take_script(self, method: str) -> Script | None:
        """The first scripted answer for ``method``, used up once its ``times`` run out."""
        for s in self.scripts:
            if s.method == method:
                s.times -= 1
                if s.times <= 0:
                    self.scripts.remove(s)
                return s
        return None

    def roll(self, names: Sequence[str]) -> str | None:
        """The first of ``names`` whose dice come up, counted; None when none does."""
        for name in names:
            rate = self.values[name]
            if rate > 0 and self._rng.random() < rate:
                self.counts[name] += 1
                return name
        return None

    def roll_served(self, first_delivery: bool) -> Served:
        """Roll the faults of a batch being served; first-delivery faults only on its first delivery."""
        fault = self.roll(
            (
                "truncated",
                "invalid_utf8",
                *ENVELOPE_FAULTS,
                *(FIRST_DELIVERY_FAULTS if first_delivery else ()),
            )
        )
        delay = self.values["slow_seconds"] if self.roll(("slow",)) else 0.0
        trailer = int(self.values["gzip_trailer_bytes"]) if fault == "gzip_trailer" else 0
        return Served(fault, delay, trailer)

    def response(self, name: str) -> Response:
        """The answer of a fault rolled before leasing (:data:`PRE_LEASE`)."""
        if name == "reset":
            return Response(0, reset=True)
        if name == "status_429":
            return error(429, "Too Many Requests", **{"Retry-After": f"{self.values['retry_after']:g}"})
        if name == "html_error":
            return Response(502, _HTML_502, {"Content-Type": "text/html"})
        status = int(name.rsplit("_", 1)[1])
        return error(status, _REASONS[status])


def script_headers(headers: dict[str, str] | None) -> dict[str, str]:
    """A script's headers: JSON's content type unless the script names its own."""
    return {"Content-Type": JSON_TYPE} if headers is None else dict(headers)
