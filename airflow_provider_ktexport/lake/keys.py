"""Record keys: ``_record_key`` is blake2b-128 of the record's canonical JSON (docs/architecture.md section 3).

The definition is pinned by literal test vectors and must never change between versions: a
redelivered copy of a record gets the same key in any later run, so duplicates stay cheap to
remove. :func:`fast_key` computes the same key through msgspec for the (usual) records whose
floats msgspec writes exactly as ``json.dumps`` does; the caller re-keys the others.
"""

from __future__ import annotations

import hashlib
from typing import Any

from airflow_provider_ktexport.lake.types import SORTED_ENCODER, canonical_text

__all__ = ["RECORD_KEY_HASH", "canonical_json", "fast_key", "record_key"]

RECORD_KEY_HASH = "blake2b-128"


def canonical_json(record: object) -> bytes:
    """The record's canonical JSON: keys sorted, separators ``(",", ":")``, UTF-8, no ASCII escaping.

    Floats are written as Python's ``json`` module writes them (``1e+16``, ``0.1``).
    """
    return canonical_text(record).encode("utf-8")


def record_key(record: object) -> str:
    """32 hex characters: blake2b (digest_size=16) of :func:`canonical_json`; never changes between versions."""
    return hashlib.blake2b(canonical_json(record), digest_size=16).hexdigest()


def fast_key(record: dict[str, Any]) -> str:
    """:func:`record_key` through msgspec's sorted encoder, for records whose floats are all safe."""
    # msgspec's sorted encoding; rows where it differs from canonical_json (a float written with
    # an exponent) are found while building the columns and keyed again by record_key.
    return hashlib.blake2b(SORTED_ENCODER.encode(record), digest_size=16).hexdigest()
