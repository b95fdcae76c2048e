"""Undecodable bodies kept in the Parquet lake: ``_quarantine/<digest>.body`` plus sidecars.

A batch whose body cannot be decoded is never lost: its body is stored once (redacted by the
caller), each delivery counts a sighting, and an acknowledgement of it rests on the stored copy
read back (:meth:`FileQuarantine.kept`), as a flush's rests on its files read back. The Iceberg
sink keeps the same in a table (:mod:`.iceberg`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from airflow_provider_ktexport.api.envelope import sighting_digest
from airflow_provider_ktexport.exceptions import KtExportWriteError
from airflow_provider_ktexport.lake.layout import LakeRoot

__all__ = ["FileQuarantine"]

log = logging.getLogger(__name__)


def _failed(uri: str, exc: Exception) -> KtExportWriteError:
    return KtExportWriteError(f"Quarantining a body to {uri} failed: {exc}", destination=uri)


class FileQuarantine:
    """The ``_quarantine/`` folder of a lake.

    :param lake: the lake's root
    :param put: how files are written (the writer's atomic put: whole or not at all)
    """

    def __init__(self, lake: LakeRoot, put: Callable[[str, bytes], None]) -> None:
        self.lake = lake
        self.put = put

    def store(self, body: bytes, *, reason: str, batch_id: str | None) -> str:
        """Store an undecodable body once: ``_quarantine/<digest>.body`` plus a ``.json`` sidecar.

        ``digest`` is :func:`~airflow_provider_ktexport.api.envelope.sighting_digest`: the body's
        SHA-256 with its envelope id blanked, so a redelivery under a new id is the same body,
        stored once (the first delivery's copy and id are kept). Every call also counts a
        sighting in ``<digest>.seen`` (see :meth:`sightings`). Pass the body with the API key
        already redacted.

        :return: the URI of the stored body
        """
        digest = sighting_digest(body)
        body_path = self.lake.quarantine_file(digest, ".body")
        uri = self.lake.uri_of(body_path)
        try:
            if not self.lake.fs.exists(body_path):
                self.put(body_path, bytes(body))
            now = datetime.now(UTC).isoformat()
            self._describe(digest, reason=reason, batch_id=batch_id, size=len(body), now=now)
            # Read-modify-write: two writers racing lose a count at worst, which only delays
            # an opt-in acknowledgement by one more redelivery.
            seen = {"count": self._sightings(digest) + 1, "last_seen": now, "last_reason": reason}
            self.put(self.lake.quarantine_file(digest, ".seen"), json.dumps(seen).encode("utf-8"))
        except Exception as exc:
            raise _failed(uri, exc) from exc
        return uri

    def _describe(self, digest: str, *, reason: str, batch_id: str | None, size: int, now: str) -> None:
        """Write the ``.json`` sidecar of the first sighting (later ones keep it)."""
        meta_path = self.lake.quarantine_file(digest, ".json")
        if self.lake.fs.exists(meta_path):
            return
        meta = {"reason": reason, "batch_id": batch_id, "first_seen": now, "size": size, "sha256": digest}
        self.put(meta_path, json.dumps(meta, indent=1).encode("utf-8"))

    def sightings(self, body: bytes) -> int:
        """How many times :meth:`store` stored this body (under any batch id), over all runs and writers."""
        return self._sightings(sighting_digest(body))

    def kept(self, body: bytes) -> bool:
        """Whether the stored copy of ``body``, read back, is this body (its id aside): what an
        acknowledgement of a quarantined batch rests on, as a flush's rest on its files read back.

        A copy that is missing or reads back as another body is stored again, and False is
        returned: that delivery is not acknowledged, a later one can be.
        """
        digest = sighting_digest(body)
        body_path = self.lake.quarantine_file(digest, ".body")
        try:
            if sighting_digest(self.lake.fs.cat_file(body_path)) == digest:
                return True
        except FileNotFoundError:
            pass
        log.warning(
            "The quarantined copy %s is missing or damaged: storing it again", self.lake.uri_of(body_path)
        )
        try:
            self.put(body_path, bytes(body))
        except Exception as exc:
            raise _failed(self.lake.uri_of(body_path), exc) from exc
        return False

    def _sightings(self, digest: str) -> int:
        try:
            return int(json.loads(self.lake.fs.cat_file(self.lake.quarantine_file(digest, ".seen")))["count"])
        except FileNotFoundError:
            return 0
        except (ValueError, KeyError, TypeError):  # a damaged counter counts as one sighting
            return 1
