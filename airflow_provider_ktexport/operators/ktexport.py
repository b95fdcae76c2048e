"""KtExportToParquetOperator: drain the export queue into Parquet files on object storage."""

from __future__ import annotations

import ast
import json
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator, ObjectStoragePath

from airflow_provider_ktexport import destinations
from airflow_provider_ktexport.drain import Drain, DrainConfig, connections_needed
from airflow_provider_ktexport.drain.config import DEFAULTS
from airflow_provider_ktexport.exceptions import KtExportAuthError, KtExportConfigError, KtExportError
from airflow_provider_ktexport.hooks.ktexport import KtExportHook
from airflow_provider_ktexport.lake.sinks import Sink
from airflow_provider_ktexport.lake.writer import LakeWriter
from airflow_provider_ktexport.operators import _lineage, assets
from airflow_provider_ktexport.operators._metrics import AirflowStatsMetrics
from airflow_provider_ktexport.operators.assets import declared_outlets, is_templated

try:  # Airflow 3.2+ exposes it from the Task SDK
    from airflow.sdk.exceptions import AirflowFailException
except ImportError:  # pragma: no cover - Airflow 3.1
    from airflow.exceptions import AirflowFailException  # type: ignore[no-redef]

if TYPE_CHECKING:
    from airflow.sdk import Context

#: Alias every drain adds its lake Asset to, unless told otherwise; downstream DAGs schedule on it.
DEFAULT_ASSET_ALIAS = "ktexport_lake"


def lake_uri(path: ObjectStoragePath) -> str:
    """The destination as an Asset URI: no ``conn_id@`` part and no trailing slash."""
    return destinations.lake_uri(path.protocol, str(path.path))


def _seconds(value: timedelta | float | int | str, name: str) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, str):  # a templated field, rendered: "5", "60.0"
        try:
            return float(value.strip())
        except ValueError:
            raise KtExportConfigError(
                f"{name} must be a number of seconds, got {value!r} (as rendered from its template)"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise KtExportConfigError(f"{name} must be a timedelta or a number of seconds, got {value!r}")
    return float(value)


def parse_drain_until(value: Any) -> float | None:
    """``drain_until`` as epoch seconds: ISO-8601 text, epoch seconds, a datetime, or empty."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "None", "null")):
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise KtExportConfigError(f"drain_until={value!r} has no time zone; give it in UTC")
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict) and "lease_ends_at" in value:  # the sensor's whole XCom
        return parse_drain_until(value["lease_ends_at"])
    text = str(value).strip()
    if text.startswith("{"):
        # The sensor's whole XCom rendered by a template ("{{ ti.xcom_pull(task_ids='wait') }}")
        # arrives as the dict's text: JSON, or Python's repr of it.
        try:
            parsed_dict = json.loads(text)
        except ValueError:
            try:
                parsed_dict = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                parsed_dict = None
        if isinstance(parsed_dict, dict) and "lease_ends_at" in parsed_dict:
            return parse_drain_until(parsed_dict["lease_ends_at"])
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise KtExportConfigError(
            f"drain_until={text!r} is neither ISO-8601 nor epoch seconds; pass the sensor's lease_ends_at, "
            "e.g. \"{{ ti.xcom_pull(task_ids='wait_for_data')['lease_ends_at'] }}\""
        ) from None
    if parsed.tzinfo is None:
        raise KtExportConfigError(f"drain_until={text!r} has no time zone; give it in UTC (…Z or +00:00)")
    return parsed.timestamp()


class KtExportDrainOperatorBase(BaseOperator):
    """
    What every drain operator shares: lease batches, land them, acknowledge only what has landed.

    Subclasses say where flushes land (:meth:`open_sink`). Arguments are documented on
    :class:`KtExportToParquetOperator`.
    """

    template_fields: Sequence[str] = ("drain_until", "lease_seconds", "flush_seconds")
    ui_color = "#d4ecf7"

    def __init__(
        self,
        *,
        ktexport_conn_id: str = KtExportHook.default_conn_name,
        # The drain's defaults have one home (DrainConfig); these read them, never restate them.
        max_runtime: timedelta | float = timedelta(seconds=DEFAULTS.max_runtime),
        flush_records: int = DEFAULTS.flush_records,
        flush_seconds: float | str = DEFAULTS.flush_seconds,
        lease_seconds: float | str = DEFAULTS.lease_seconds,
        stop_when_empty: bool = DEFAULTS.stop_when_empty,
        drain_until: str | float | None = None,
        partition_by: Sequence[str] = DEFAULTS.partition_by,
        include_raw: bool = DEFAULTS.include_raw,
        ack_quarantined: bool = DEFAULTS.ack_quarantined,
        ack_quarantined_after: int = DEFAULTS.ack_quarantined_after,
        max_reject_share: float | None = DEFAULTS.max_reject_share,
        max_flush_partitions: int = DEFAULTS.max_flush_partitions,
        write_concurrency: int | None = DEFAULTS.write_concurrency,
        max_in_flight: int = DEFAULTS.max_in_flight,
        redelivery_window: timedelta | float = timedelta(seconds=DEFAULTS.redelivery_window),
        asset: Asset | None = None,
        asset_alias: str | None = DEFAULT_ASSET_ALIAS,
        **kwargs: Any,
    ) -> None:
        outlets, self._own_assets = declared_outlets(
            list(kwargs.pop("outlets", None) or []), asset=asset, asset_alias=asset_alias, lake=None
        )
        super().__init__(outlets=outlets, **kwargs)
        self.ktexport_conn_id = ktexport_conn_id
        self.max_runtime = max_runtime
        self.flush_records = flush_records
        self.flush_seconds = flush_seconds
        self.lease_seconds = lease_seconds
        self.stop_when_empty = stop_when_empty
        self.drain_until = drain_until
        self.partition_by = tuple(partition_by)
        self.include_raw = include_raw
        self.ack_quarantined = ack_quarantined
        self.ack_quarantined_after = ack_quarantined_after
        self.max_reject_share = max_reject_share
        self.max_flush_partitions = max_flush_partitions
        self.write_concurrency = write_concurrency
        self.max_in_flight = max_in_flight
        self.redelivery_window = redelivery_window
        self.asset = asset
        self.asset_alias = asset_alias
        # Made in execute: an Event holds a lock, and Airflow deep-copies operators (partial(),
        # mapped tasks, render_template_fields) before they run.
        self._stop: threading.Event | None = None
        # What get_openlineage_facets_on_complete reports, set by execute (never XCom).
        self._lineage_facts: _lineage.RunFacts | None = None
        self._lineage_catalog: dict[str, str] | None = None
        self._azure_account: str | None = None
        # Validate the numbers now so a bad DAG fails at parse time, not after leasing data (a
        # templated lease or flush age is known, and checked, only when the task runs).
        if not (is_templated(lease_seconds) or is_templated(flush_seconds)):
            self._config(drain_until=None)

    def _config(self, *, drain_until: float | None) -> DrainConfig:
        return DrainConfig(
            max_runtime=_seconds(self.max_runtime, "max_runtime"),
            flush_records=self.flush_records,
            flush_seconds=_seconds(self.flush_seconds, "flush_seconds"),
            lease_seconds=_seconds(self.lease_seconds, "lease_seconds"),
            stop_when_empty=self.stop_when_empty,
            drain_until=drain_until,
            max_in_flight=self.max_in_flight,
            ack_quarantined=self.ack_quarantined,
            ack_quarantined_after=self.ack_quarantined_after,
            max_reject_share=self.max_reject_share,
            max_flush_partitions=self.max_flush_partitions,
            write_concurrency=self.write_concurrency,
            redelivery_window=_seconds(self.redelivery_window, "redelivery_window"),
            include_raw=self.include_raw,
            partition_by=self.partition_by,
            source=self.ktexport_conn_id,
        )

    def open_sink(self, context: Context) -> tuple[LakeWriter | Sink, str]:
        """Where flushes land, and its URI (for logs, XCom and Asset events)."""
        raise NotImplementedError

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            config = self._config(drain_until=parse_drain_until(self.drain_until))
            sink, uri = self.open_sink(context)
        except KtExportConfigError as exc:
            # A setting (rendered template, destination, catalog) that is wrong now is wrong on a
            # retry too: fail at once, before any batch is leased.
            raise AirflowFailException(str(exc)) from None
        # One keep-alive connection per outstanding GET and concurrent ack.
        hook = KtExportHook(
            ktexport_conn_id=self.ktexport_conn_id, pool_size=connections_needed(self.max_in_flight)
        )
        self.log.info("Draining connection %r into %s", self.ktexport_conn_id, uri)
        self._stop = stop = threading.Event()
        try:
            metrics = AirflowStatsMetrics(self.ktexport_conn_id)
            result = Drain(
                hook.client, sink, config, should_stop=stop.is_set, logger=self.log, metrics=metrics
            ).run()
        except (KtExportAuthError, KtExportConfigError) as exc:
            # A wrong key or a destination that refuses files (missing bucket, no permission) does
            # not fix itself: fail now instead of retrying into the same wall.
            raise AirflowFailException(str(exc)) from None
        finally:
            hook.close()
        self._keep_lineage(hook.client.base_url, result)
        # The Asset event counts every file (its own list is capped the same way); XCom gets the
        # capped summary.
        self._emit_asset_events(context, uri, {**result.summary(max_files=None), "destination": uri})
        return {**result.summary(), "destination": uri}

    def _declare_lake(self, uri: str | None) -> None:
        """Declare the lake's Asset at parse time, when its URI does not wait for a template."""
        if uri is None or not self.asset_alias:
            return
        lake = Asset(uri)
        if lake not in self._own_assets:
            self._own_assets.append(lake)
            self.outlets = [*self.outlets, lake]

    def _emit_asset_events(self, context: Context, uri: str, summary: dict[str, Any]) -> None:
        # Nothing landed, no event on any Asset (docs/warehouse.md, "Asset events").
        assets.emit(
            self,
            context,
            uri=uri,
            summary=summary,
            asset=self.asset,
            asset_alias=self.asset_alias,
            own=self._own_assets,
        )

    def _keep_lineage(self, base_url: str, result: Any) -> None:
        """Remember what the run read and landed for OpenLineage (on the operator, not in XCom)."""
        self._lineage_facts = _lineage.RunFacts(
            inputs=[_lineage.source_dataset(base_url, self.ktexport_conn_id)],
            outputs=_lineage.outputs_from(result.datasets),
            catalog=self._lineage_catalog,
        )

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Lineage of the run (OpenLineage provider): the export task in, each dataset landed out,
        with its columns and this run's rows, bytes and files. See docs/monitoring.md."""
        return _lineage.operator_lineage(self._lineage_facts, azure_account=self._azure_account)

    def get_openlineage_facets_on_start(self) -> Any:
        """The START event names the export task the run reads (what it lands is known at the end)."""
        return _lineage.operator_lineage(self._source_facts())

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        """The FAIL event names the export task, so a failed run shows on the lineage graph too."""
        if self._lineage_facts is not None:
            return self.get_openlineage_facets_on_complete(task_instance)
        return _lineage.operator_lineage(self._source_facts())

    def _source_facts(self) -> _lineage.RunFacts | None:
        """The input dataset read from the connection; None when the connection cannot be read
        (the task itself reports that error: lineage must not add a second one)."""
        try:
            base_url = KtExportHook(ktexport_conn_id=self.ktexport_conn_id).client_settings().base_url
        except KtExportError:
            return None
        return _lineage.RunFacts(inputs=[_lineage.source_dataset(base_url, self.ktexport_conn_id)])

    def on_kill(self) -> None:
        # Stop leasing at once; the drain lands what it holds only if the leases leave time.
        if self._stop is not None:
            self._stop.set()


class KtExportToParquetOperator(KtExportDrainOperatorBase):
    """
    Drain a KT HTTP Export Task queue into Parquet files, acknowledging only what has landed.

    Each batch is acknowledged only after every one of its records is in a Parquet
    file that was written and verified, and before its lease runs out. See
    docs/delivery-semantics.md.

    :param destination: the lake root as an ObjectStoragePath URL, e.g.
        ``s3://aws_default@bucket/ktexport`` or ``file:///data/lake/ktexport`` (templated)
    :param ktexport_conn_id: the ``ktexport`` connection holding the base URL and API key
    :param max_runtime: stop leasing new batches after this long (timedelta or seconds), then
        flush and acknowledge what is held; size ``execution_timeout`` above it
    :param flush_records: flush when this many records are buffered
    :param flush_seconds: flush when the oldest unacknowledged lease is this old; must leave a
        margin under ``lease_seconds`` (the larger of 2 s and a quarter of the lease) (templated)
    :param lease_seconds: the server's lease (120 s on the real API) (templated: a rendered value
        is read as a number of seconds)
    :param stop_when_empty: end the run at the first empty answer (after a final flush)
    :param drain_until: keep polling through empty answers until this time plus one long poll
        (ISO-8601 or epoch seconds; the sensor's ``lease_ends_at``) (templated)
    :param partition_by: partition keys, from ``record_type``, ``event_date``, ``ingest_date``
    :param compression: Parquet compression codec
    :param include_raw: add a ``_raw`` column with each record's original JSON
    :param ack_quarantined: acknowledge a batch whose body cannot be decoded once its raw copy is
        stored under ``_quarantine/`` and the same body has failed ``ack_quarantined_after`` times
        (default: leave such batches to be redelivered)
    :param ack_quarantined_after: sightings of one undecodable body before ``ack_quarantined``
        acknowledges it (a transient truncation heals by redelivery)
    :param max_reject_share: fail the task when more than this share of a flush's records are
        rejected (they are still kept in ``_rejected/`` and acknowledged); ``None`` (default) warns
    :param max_flush_partitions: flush early once the held batches would write this many partition
        files (counted exactly; a backfill over many days on a slow object store). The drain also
        flushes earlier, or in several steps, when the pace it measured says the files would not
        land inside the oldest lease, and halves this and ``flush_records`` for the rest of a run
        whose leases ran out before their acknowledgements
    :param write_concurrency: partition files written at once during a flush (1-256); ``None``
        (default): 64 on an object store, 8 on a local disk
    :param max_in_flight: GET requests kept outstanding while earlier batches are written
    :param redelivery_window: how long a flush whose batches were not all acknowledged is
        remembered (a ``timedelta`` or seconds; default 7 days), so a redelivery of its records is
        dropped as already landed; a redelivery later than this lands twice
    :param asset: an Asset to emit an event on when files land (in addition to the alias); a run
        that lands nothing emits no event on it
    :param asset_alias: name of the AssetAlias the lake Asset is added to when files land
        (``None`` to emit none); with a destination that is not templated, the lake Asset is also
        declared at parse time, so Airflow knows it before its first event
    """

    template_fields: Sequence[str] = ("destination", *KtExportDrainOperatorBase.template_fields)

    def __init__(self, *, destination: str, compression: str = "zstd", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.destination = destination
        self.compression = compression
        self._declare_lake(None if is_templated(destination) else lake_uri(ObjectStoragePath(destination)))

    def open_sink(self, context: Context) -> tuple[LakeWriter | Sink, str]:
        root = ObjectStoragePath(self.destination)
        self._azure_account = getattr(root.fs, "account_name", None)  # lineage names Azure by account
        return destinations.open_parquet_lake(
            root.fs, str(root.path), uri=lake_uri(root), compression=self.compression, logger=self.log
        )


from airflow_provider_ktexport.operators.compact import KtExportCompactOperator  # noqa: E402,F401
