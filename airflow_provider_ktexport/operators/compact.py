"""KtExportCompactOperator: merge the lake's small files, drop duplicates, fit old files to the rules."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, ObjectStoragePath

try:
    from airflow.sdk.exceptions import AirflowFailException
except ImportError:  # pragma: no cover - Airflow 3.1
    from airflow.exceptions import AirflowFailException  # type: ignore[no-redef]

from airflow_provider_ktexport.exceptions import KtExportConfigError
from airflow_provider_ktexport.lake.compact import compact_lake
from airflow_provider_ktexport.operators import _lineage

if TYPE_CHECKING:
    from airflow.sdk import Context


def check_target_file_mb(value: Any) -> float:
    """``target_file_mb`` of either compaction operator (files or Iceberg tables), checked one way.

    Both used to check it, with two different messages and one letting ``True`` through.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise KtExportConfigError(f"target_file_mb must be a positive number of MB, got {value!r}")
    return float(value)


def _lake_uri(path: ObjectStoragePath) -> str:
    # Same rule as the drain's lake_uri (no conn_id@, no trailing slash); not imported from
    # operators.ktexport, which re-exports this module.
    return f"{path.protocol or 'file'}://{str(path.path).rstrip('/') or '/'}"


class KtExportCompactOperator(BaseOperator):
    """
    Compact a ktexport lake: merge each partition's small files into files of about
    ``target_file_mb``, keep one row per ``(_source, _record_key)`` (the first ingested), and fit
    files to the lake's published column types (values of another type go to variant columns;
    no column changes type and no value is re-spelt, so lakes written by earlier versions read
    everywhere after one run). The root must be a lake and every folder below it a partition
    path, or the task fails without changing anything (retrying would not help).

    New files are written (atomically, verified) before the old ones are deleted, so a reader
    never misses a row; it may briefly see both, i.e. duplicates removable by ``_record_key``.
    A run killed midway loses nothing. See docs/compaction.md.

    Returns (XCom) ``{"partitions", "files_in", "files_out", "rows_in", "rows_out",
    "duplicates_removed", ...}``.

    :param source: the lake root as an ObjectStoragePath URL, e.g. ``s3://aws_default@bucket/ktexport``
        or ``file:///data/lake/ktexport`` (templated)
    :param target_file_mb: aim for files of about this many MB (compressed Parquet)
    :param min_age_minutes: leave a partition alone while any file in it is younger than this, so
        compaction never races a running drain
    :param record_type: compact only this record type (default: all)
    :param compression: Parquet codec of the new files
    :param uniform_columns: give every file of a record type all of its columns, so pandas and
        Polars read every value with their defaults (see docs/compaction.md)
    """

    template_fields: Sequence[str] = ("source",)
    ui_color = "#e3eed7"

    def __init__(
        self,
        *,
        source: str,
        target_file_mb: float = 128,
        min_age_minutes: float = 10,
        record_type: str | None = None,
        compression: str = "zstd",
        uniform_columns: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_target_file_mb(target_file_mb)
        if min_age_minutes < 0:
            raise KtExportConfigError(f"min_age_minutes must not be negative, got {min_age_minutes!r}")
        self.source = source
        self.target_file_mb = target_file_mb
        self.min_age_minutes = min_age_minutes
        self.record_type = record_type
        self.compression = compression
        self.uniform_columns = uniform_columns
        # What get_openlineage_facets_on_complete reports, set by execute (never XCom).
        self._lineage_facts: _lineage.RunFacts | None = None

    def execute(self, context: Context) -> dict[str, Any]:
        root = ObjectStoragePath(self.source)
        uri = _lake_uri(root)
        self.log.info(
            "Compacting %s (target %s MB, partitions untouched for %s minutes)",
            uri,
            self.target_file_mb,
            self.min_age_minutes,
        )
        try:
            result = compact_lake(
                root.fs,
                str(root.path),
                target_file_mb=self.target_file_mb,
                min_age_seconds=timedelta(minutes=self.min_age_minutes).total_seconds(),
                record_type=self.record_type,
                compression=self.compression,
                uri_prefix=uri,
                uniform_columns=self.uniform_columns,
            )
        except KtExportConfigError as exc:  # a misrooted or foreign folder: a retry cannot fix it
            raise AirflowFailException(str(exc)) from None
        self._lineage_facts = _lineage.compaction_facts(
            result.datasets, azure_account=getattr(root.fs, "account_name", None)
        )
        summary = result.summary()
        summary["source"] = uri
        self.log.info(
            "Compacted %d partitions: %d files -> %d, %d rows -> %d (%d duplicates removed); "
            "%d unchanged, %d skipped as recent",
            result.partitions,
            result.files_in,
            result.files_out,
            result.rows_in,
            result.rows_out,
            result.duplicates_removed,
            result.partitions_unchanged,
            result.partitions_skipped_recent,
        )
        return summary

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Lineage of the run (OpenLineage provider): each folder compacted, as input and output, with
        the new files' columns and rows, bytes and files written."""
        return _lineage.operator_lineage(self._lineage_facts)
