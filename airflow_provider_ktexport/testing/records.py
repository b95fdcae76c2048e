"""Deterministic generator of realistic export-task records for the emulator.

Each record is a pure function of ``(seed, emulator_seq)``: the same seed always
yields the same records, whatever order or batch size they are asked for in, so
a test or benchmark can rebuild what the server sent. The mix follows docs/architecture.md
section 1 (telemetry, trip, event, changenotification, plus a few unknown
types) and drifts after ``drift_after`` records the way a real feed does (new
keys appear, an int field starts to carry floats).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

# Hostile and key-text records have their own module; their names stay importable from here.
from airflow_provider_ktexport.testing.hostile import (
    DEEP_LIST_LEVELS,
    DEEP_OBJECT_LEVELS,
    FOREIGN_TOKEN_URL,
    HOSTILE_KINDS,
    HOSTILE_ROW_KINDS,
    HOSTILE_TYPES,
    KEY_TEXT_KINDS,
    hostile_record,
    key_text_record,
)

# Share of each record type; a few percent are types the provider has never seen.
_TYPE_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("telemetry", 62),
    ("event", 15),
    ("trip", 10),
    ("changenotification", 10),
    ("diagnostic", 2),
    ("driverlog", 1),
)
_TYPES = [t for t, _ in _TYPE_WEIGHTS]
_CUM_WEIGHTS: list[int] = []
_total = 0
for _, _w in _TYPE_WEIGHTS:
    _total += _w
    _CUM_WEIGHTS.append(_total)

KNOWN_TYPES = frozenset({"telemetry", "event", "trip", "changenotification"})
UNKNOWN_TYPES = frozenset({"diagnostic", "driverlog"})

# 2026-11-23T00:00:00Z; records spread over three days from there.
_BASE_MS = 1795392000000
_SPAN_MS = 3 * 24 * 3600 * 1000

_CITIES = (
    ("ZA", "Western Cape", "Cape Town", -33.92, 18.42),
    ("ZA", "Gauteng", "Johannesburg", -26.20, 28.05),
    ("GB", "England", "Manchester", 53.48, -2.24),
    ("US", "Texas", "Houston", 29.76, -95.37),
    ("AU", "Victoria", "Melbourne", -37.81, 144.96),
    ("DE", "Bayern", "München", 48.14, 11.58),
)
_STREETS = ("Main Road", "Long Street", "Church Street", "Station Road", "Beach Road", "Hauptstraße")
_EVENT_KINDS = (
    ("zone", ("enter", "exit")),
    ("speeding", ("start", "end")),
    ("ignition", ("on", "off")),
    ("harsh", ("braking", "acceleration", "cornering")),
    ("io", ("din1_on", "din1_off", "panic")),
)
_OPERATIONS = ("added", "modified", "deleted")
_DOC_TYPES = ("asset", "zone", "driver", "device", "geofence")


def _mix(record_types: Sequence[str] | None) -> tuple[list[str], list[int]]:
    """The record types to draw from and their cumulative weights (the whole mix by default)."""
    if record_types is None:
        return _TYPES, _CUM_WEIGHTS
    unknown = sorted(set(record_types) - set(_TYPES))
    if unknown or not record_types:
        raise ValueError(f"unknown record type(s) {unknown}; choose among {', '.join(_TYPES)}")
    kinds, cum, total = [], [], 0
    for t, w in _TYPE_WEIGHTS:
        if t in record_types:
            total += w
            kinds.append(t)
            cum.append(total)
    return kinds, cum


def iso_utc(ms: int) -> str:
    """Format epoch milliseconds as ISO-8601 UTC with millis, e.g. ``2026-11-25T10:11:12.345Z``."""
    secs, frac = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:03d}Z"


def _hex_id(rng: random.Random, bits: int = 96) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


class RecordGenerator:
    """Build realistic nested records, deterministic per ``(seed, seq)``.

    :param seed: seeds the fleet (owners, assets, devices) and every record.
    :param drift_after: records with ``emulator_seq`` above this show schema drift
        (``io`` gains keys, ``counters.hours`` turns float, ``location.accuracy`` and
        ``severity`` appear).
    :param track_points: when > 0, every trip carries ``track``, a list of this many GPS points
        (``date``, ``lat``, ``lon``, ``speed``, ``heading``): the long, bracket-heavy records a
        fleet with trip tracks sends. 0 (the default) leaves the records as they were.
    :param record_types: only these record types, in their usual proportions (default: the whole
        mix); ``("trip",)`` with ``track_points=100`` is the benchmark's "100-point trips" shape.
    :param type_names: when > 1, each record's ``type`` gets a suffix ``_<k>`` (``k`` from
        ``emulator_seq``, 0 to ``type_names - 1``), so the same records spread over that many
        record types: the benchmark's "50 record types" shape (one file per type and day per
        flush). 0 or 1 (the default) leaves the types as they are.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        drift_after: int = 200,
        track_points: int = 0,
        record_types: Sequence[str] | None = None,
        type_names: int = 0,
    ) -> None:
        if track_points < 0:
            raise ValueError(f"track_points must be 0 or more, not {track_points}")
        if type_names < 0:
            raise ValueError(f"type_names must be 0 or more, not {type_names}")
        self.seed = seed
        self.drift_after = drift_after
        self.track_points = track_points
        self.type_names = type_names
        self._kinds, self._cum_weights = _mix(record_types)
        fleet = random.Random(seed)
        self._owners = [{"id": 1000 + i, "name": f"Fleet Owner {i}"} for i in range(3)]
        self._assets = []
        for i in range(24):
            city = fleet.randrange(len(_CITIES))
            self._assets.append(
                {
                    "id": 50000 + fleet.randrange(900000),
                    "name": f"Truck {i:02d} {fleet.choice(('MAN', 'Volvo', 'Scania', 'Isuzu'))}",
                    "device": {"id": _hex_id(fleet, 48), "name": f"KT-{fleet.randrange(10**6):06d}"},
                    "owner": self._owners[i % len(self._owners)],
                    "city": city,
                    "odo": fleet.randrange(10_000, 900_000) * 1000,
                    "hours": fleet.randrange(100, 20_000),
                }
            )
        self._zones = [{"id": 700 + i, "name": f"Depot {i}"} for i in range(8)]

    def record(self, seq: int) -> dict[str, Any]:
        """The record numbered ``seq`` (``emulator_seq`` field); same answer every call."""
        rng = random.Random(self.seed * 1_000_003 + seq)
        pick = rng.randrange(self._cum_weights[-1])
        kind = next(t for t, c in zip(self._kinds, self._cum_weights, strict=True) if pick < c)
        drift = seq > self.drift_after
        ms = _BASE_MS + rng.randrange(_SPAN_MS)
        asset = self._assets[rng.randrange(len(self._assets))]
        rec: dict[str, Any]
        if kind == "telemetry":
            rec = self._telemetry(rng, asset, ms, drift)
        elif kind == "event":
            rec = self._event(rng, asset, ms, drift)
        elif kind == "trip":
            rec = self._trip(rng, asset, ms)
        elif kind == "changenotification":
            rec = self._change(rng, asset, ms)
        elif kind == "diagnostic":
            rec = self._diagnostic(rng, asset, ms)
        else:
            rec = self._driverlog(rng, asset, ms)
        if kind == "trip" and self.track_points:
            rec["track"] = self._track(seq, ms, rec)
        if self.type_names > 1:
            rec["type"] = f"{rec['type']}_{seq % self.type_names}"
        rec["emulator_seq"] = seq
        return rec

    def records(self, start_seq: int, n: int) -> list[dict[str, Any]]:
        """``n`` consecutive records from ``start_seq``."""
        return [self.record(s) for s in range(start_seq, start_seq + n)]

    # -- pieces ---------------------------------------------------------------

    def _when(self, rng: random.Random, ms: int) -> str:
        # Mostly the canonical form; a few percent in the other shapes a real feed carries.
        roll = rng.random()
        if roll < 0.97:
            return iso_utc(ms)
        if roll < 0.985:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))
        return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(ms // 1000))

    def _location(self, rng: random.Random, asset: dict[str, Any], drift: bool) -> dict[str, Any]:
        country, region, city, lat, lon = _CITIES[asset["city"]]
        street = rng.choice(_STREETS)
        number = rng.randrange(1, 400)
        loc: dict[str, Any] = {
            "lat": round(lat + rng.uniform(-0.2, 0.2), 6),
            "lon": round(lon + rng.uniform(-0.2, 0.2), 6),
            "alt": rng.randrange(0, 1800),
            "speed": rng.randrange(0, 120),
            "heading": rng.randrange(0, 360),
            "age": rng.randrange(0, 30),
            "fixed": rng.random() > 0.05,
            "address": None if rng.random() < 0.03 else f"{number} {street}, {city}, {region}, {country}",
            "gc": {
                "country": country,
                "region": region,
                "city": city,
                "street": street,
                "number": str(number),
                "postcode": f"{rng.randrange(1000, 99999)}",
            },
        }
        if drift:
            loc["accuracy"] = round(rng.uniform(1, 25), 1)
        return loc

    def _telemetry(self, rng: random.Random, asset: dict[str, Any], ms: int, drift: bool) -> dict[str, Any]:
        odo = asset["odo"] + rng.randrange(0, 5_000_000)
        hours: int | float = asset["hours"] + rng.randrange(0, 300)
        if drift:
            hours = hours + round(rng.random(), 2)
        io: dict[str, Any] = {
            "din1": rng.random() < 0.5,
            "din2": rng.random() < 0.1,
            "dout1": False,
            "ain1": round(rng.uniform(0, 12), 3),
            "ain2": round(rng.uniform(0, 5), 3),
        }
        if drift:
            io["ain3"] = round(rng.uniform(0, 5), 3)
            io["can_fuel_level"] = rng.randrange(0, 101)
        zones = [
            dict(self._zones[i]) for i in sorted(rng.sample(range(len(self._zones)), rng.randrange(0, 3)))
        ]
        received = ms + rng.randrange(200, 90_000)
        return {
            "type": "telemetry",
            "date": self._when(rng, ms),
            "owner": dict(asset["owner"]),
            "origin": dict(asset["device"]),
            "asset": {"id": asset["id"], "name": asset["name"]},
            "location": self._location(rng, asset, drift),
            "telemetry": {
                "ignition": rng.random() < 0.7,
                "odo_counter": odo,
                "voltages": {
                    "main": round(rng.uniform(11.5, 28.4), 2),
                    "backup": round(rng.uniform(3.6, 4.2), 2),
                },
                "gps_sats": rng.randrange(0, 16),
                "hdop": round(rng.uniform(0.5, 4.0), 1),
                "rssi": -rng.randrange(50, 110),
            },
            "counters": {"odometer": odo // 1000, "hours": hours},
            "io": io,
            "zones": zones,
            "reason": rng.choice(("interval", "heading", "distance", "ignition", "io")),
            "received": iso_utc(received),
        }

    def _event(self, rng: random.Random, asset: dict[str, Any], ms: int, drift: bool) -> dict[str, Any]:
        cls, types = rng.choice(_EVENT_KINDS)
        details: dict[str, Any] = {
            "asset": {"id": asset["id"], "name": asset["name"]},
            "value": rng.randrange(0, 150),
            "threshold": rng.choice((80, 100, 120)),
            "notes": "generated by the ktexport emulator",
        }
        if cls == "zone":
            details["zone"] = dict(rng.choice(self._zones))
        if rng.random() < 0.3:
            # The real feed sometimes embeds the triggering telemetry record whole.
            details["telemetry"] = self._telemetry(rng, asset, ms, drift)
        rec: dict[str, Any] = {
            "type": "event",
            "id": _hex_id(rng),
            "eventDate": self._when(rng, ms),
            "eventClass": cls,
            "eventType": rng.choice(types),
            "owner": dict(asset["owner"]),
            "origin": {"id": asset["device"]["id"]},
            "location": self._location(rng, asset, drift),
            "details": details,
            "received": iso_utc(ms + rng.randrange(200, 60_000)),
        }
        if drift:
            rec["severity"] = rng.choice(("info", "warning", "critical"))
        return rec

    def _trip(self, rng: random.Random, asset: dict[str, Any], ms: int) -> dict[str, Any]:
        duration = rng.randrange(120_000, 4 * 3600 * 1000)
        start = self._location(rng, asset, False)
        end = self._location(rng, asset, False)
        start["date"] = iso_utc(ms)
        end["date"] = iso_utc(ms + duration)
        return {
            "type": "trip",
            "id": _hex_id(rng),
            "tripType": rng.choice(("business", "private", "unknown")),
            "dateStart": iso_utc(ms),
            "dateEnd": self._when(rng, ms + duration),
            "owner": dict(asset["owner"]),
            "origin": {"id": asset["device"]["id"]},
            "asset": {"id": asset["id"], "name": asset["name"]},
            "start": start,
            "end": end,
            "distance": rng.randrange(100, 250_000),
            "duration": duration // 1000,
            "maxSpeed": rng.randrange(20, 140),
            "received": iso_utc(ms + duration + rng.randrange(1000, 120_000)),
        }

    def _track(self, seq: int, ms: int, trip: dict[str, Any]) -> list[dict[str, Any]]:
        # An RNG of its own: the trip's other fields are the same with or without a track.
        rng = random.Random((self.seed * 1_000_003 + seq) * 7 + 1)
        lat, lon = trip["start"]["lat"], trip["start"]["lon"]
        step_ms = max(1000, trip["duration"] * 1000 // self.track_points)
        points = []
        for i in range(self.track_points):
            lat = round(lat + rng.uniform(-0.002, 0.002), 6)
            lon = round(lon + rng.uniform(-0.002, 0.002), 6)
            points.append(
                {
                    "date": iso_utc(ms + i * step_ms),
                    "lat": lat,
                    "lon": lon,
                    "speed": rng.randrange(0, 120),
                    "heading": rng.randrange(0, 360),
                }
            )
        return points

    def _change(self, rng: random.Random, asset: dict[str, Any], ms: int) -> dict[str, Any]:
        doc_type = rng.choice(_DOC_TYPES)
        op = rng.choice(_OPERATIONS)
        doc: dict[str, Any] = {
            "id": rng.randrange(1, 10**7),
            "type": doc_type,
            "ownerId": asset["owner"]["id"],
        }
        if op != "deleted":
            doc.update(
                {
                    "name": f"{doc_type.title()} {rng.randrange(1000)}",
                    "modified": iso_utc(ms - rng.randrange(0, 10**6)),
                    "modifiedBy": {"id": rng.randrange(1, 500), "name": "api-user"},
                    "tags": rng.sample(["north", "south", "cold-chain", "hazmat", "leased", "spare"], 2),
                    "settings": {"speedLimit": rng.choice((60, 80, 100)), "enabled": rng.random() < 0.9},
                    "description": "Record changed through the fleet management portal by a user.",
                }
            )
        return {
            "type": "changenotification",
            "date": self._when(rng, ms),
            "operation": op,
            "owner": dict(asset["owner"]),
            "doc": doc,
            "received": iso_utc(ms + rng.randrange(100, 5000)),
        }

    def _diagnostic(self, rng: random.Random, asset: dict[str, Any], ms: int) -> dict[str, Any]:
        return {
            "type": "diagnostic",
            "date": self._when(rng, ms),
            "owner": dict(asset["owner"]),
            "origin": dict(asset["device"]),
            "firmware": f"{rng.randrange(1, 5)}.{rng.randrange(10)}.{rng.randrange(100)}",
            # Keys a flattener must not split, and a counter beyond 2^53.
            "ecu.version": f"E{rng.randrange(100)}",
            "serial": 2**60 + rng.randrange(10**6),
            "codes": [{"spn": rng.randrange(1, 5000), "fmi": rng.randrange(0, 31)} for _ in range(3)],
            "received": iso_utc(ms + rng.randrange(100, 5000)),
        }

    def _driverlog(self, rng: random.Random, asset: dict[str, Any], ms: int) -> dict[str, Any]:
        return {
            "type": "driverlog",
            "date": self._when(rng, ms),
            "owner": dict(asset["owner"]),
            "asset": {"id": asset["id"], "name": asset["name"]},
            "driver": {
                "id": rng.randrange(1, 900),
                "name": f"Driver {rng.randrange(900)}",
                "tag": _hex_id(rng, 32),
            },
            "status": rng.choice(("driving", "on-duty", "off-duty", "rest")),
            "duration": rng.randrange(60, 36_000),
            "received": iso_utc(ms + rng.randrange(100, 5000)),
        }


__all__ = [
    "DEEP_LIST_LEVELS",
    "DEEP_OBJECT_LEVELS",
    "FOREIGN_TOKEN_URL",
    "HOSTILE_KINDS",
    "HOSTILE_ROW_KINDS",
    "HOSTILE_TYPES",
    "KEY_TEXT_KINDS",
    "KNOWN_TYPES",
    "UNKNOWN_TYPES",
    "RecordGenerator",
    "hostile_record",
    "iso_utc",
    "key_text_record",
]
