"""The destination probe: prove a lake takes files before a drain leases anything.

Without it a wrong bucket or folder showed only at the first flush: after a whole queue was
leased (a retry inside the lease then found it empty and went green), or never while the queue
was empty. :func:`prove_writable` writes, reads back and deletes a small file under ``_probe/``
through the same atomic put as every data file, and says what a failure means.
"""

from __future__ import annotations

import errno
import logging
import uuid
from collections.abc import Callable

from airflow_provider_ktexport.exceptions import KtExportConfigError, KtExportError, KtExportWriteError
from airflow_provider_ktexport.lake.layout import PROBE_DIR, LakeRoot

__all__ = ["prove_writable"]

log = logging.getLogger(__name__)

#: Store answers that mean the destination itself is wrong, with what to do about each.
_MISCONFIGURED: tuple[tuple[type[BaseException], str], ...] = (
    (
        FileNotFoundError,
        "the bucket or container does not exist: create it, or correct its name in the destination",
    ),
    (
        PermissionError,
        "these credentials may not write, read and delete there: grant that, or choose another destination",
    ),
    (NotADirectoryError, "part of the path is a regular file, not a folder: choose a folder"),
    (FileExistsError, "the path is a regular file, not a folder: choose a folder"),
)


def _probe_failed(uri: str, exc: BaseException) -> KtExportError:
    """What a failed probe of the lake at ``uri`` means: a configuration error when the store said
    the destination is wrong, else an outage (connection refused, timeout) that a retry may outlive."""
    if isinstance(exc, KtExportWriteError):  # the writer's own refusal (a zonal GCS bucket): a setting
        return KtExportConfigError(f"{exc} Nothing was leased.")
    cause = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    fix = next((text for kind, text in _MISCONFIGURED if isinstance(exc, kind)), None)
    if fix is None and isinstance(exc, OSError) and exc.errno == errno.EROFS:
        fix = "the filesystem is read-only: choose a writable destination"
    if fix is not None:
        return KtExportConfigError(
            f"The lake {uri} does not take files ({cause}); {fix}. Nothing was leased."
        )
    return KtExportWriteError(
        f"Could not prove the lake {uri} writable ({cause}); nothing was leased, and a later run can "
        "retry once the store answers.",
        destination=uri,
    )


def prove_writable(
    lake: LakeRoot, put: Callable[[str, bytes], None], remove: Callable[[str], None], writer_id: str
) -> None:
    """Write (with ``put``, the writer's own atomic put), read back and delete a small file under
    ``_probe/``, so a destination that cannot take files fails before any lease; ``remove`` cleans
    up after a failed read back.

    :raises KtExportConfigError: the store answered that the destination is wrong (missing
        bucket, no permission, a path through a regular file): a retry cannot fix it
    :raises KtExportWriteError: anything else (the store unreachable, a timeout): an outage
    """
    path = lake.join(PROBE_DIR, f"{uuid.uuid4().hex}.probe")
    data = f"ktexport probe from {writer_id}\n".encode()
    try:
        put(path, data)  # atomic: when it fails there is nothing to remove
    except Exception as exc:
        raise _probe_failed(lake.uri_of(lake.root), exc) from None
    try:
        back = lake.fs.cat_file(path)
        if back != data:
            raise ValueError(f"read back {len(back)} bytes that differ from the {len(data)} written")
        lake.fs.rm_file(path)
    except Exception as exc:
        remove(path)
        raise _probe_failed(lake.uri_of(lake.root), exc) from None
    log.debug("Proved %s writable (probe %s written, read back, deleted)", lake.uri_of(lake.root), path)
