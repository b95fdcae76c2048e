"""Asset events of the drain operators: what they declare, when they emit, and what the event says.

Airflow records an event for *every* ``Asset`` in a task's outlets on every successful run
(``TaskInstance.register_asset_changes_in_db``), with or without an ``outlet_events`` extra, but an
``AssetAlias`` outlet emits only the events the task adds to it. A drain that landed nothing must
emit nothing (a downstream DAG would run on nothing), so:

- the lake is announced through the alias, and only when something landed;
- Assets the operator declares itself (``asset=``, and the lake when its URI is known at parse
  time) stay in the outlets of the running task only when they have something to announce. The
  outlets Airflow reads at success are the executing task's (``ti.task.outlets``, a copy made for
  the run): dropping an Asset there drops its event, while the parse-time declaration keeps the
  Asset known (and active) to Airflow and shown as produced by the task.

Declaring the lake at parse time is also what keeps Airflow from warning "AssetModel ... not found;
cannot create asset event" and "Emitting event for inactive AssetModel": an Asset met only through
an alias is unknown to the DAG processor, created on the fly at its first event and, before Airflow
3.3.2, never activated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, AssetAlias

from airflow_provider_ktexport.drain.result import MAX_SUMMARY_FILES

if TYPE_CHECKING:
    from airflow.sdk import Context

#: At most this many file paths (or Iceberg commits) are named in one event's extra; the counts
#: stay exact and ``files_truncated`` says when the list is cut (the XCom summary's bound too).
MAX_EVENT_FILES = MAX_SUMMARY_FILES

_JINJA_MARKERS = ("{{", "{%", "{#")


def is_templated(value: Any) -> bool:
    """Whether ``value`` holds Jinja, so it is known only when the task renders it."""
    return isinstance(value, str) and any(marker in value for marker in _JINJA_MARKERS)


def _relative(uri: str, root: str) -> str:
    prefix = root.rstrip("/") + "/"
    return uri[len(prefix) :] if uri.startswith(prefix) else uri


def _capped(items: list[Any], limit: int) -> tuple[list[Any], bool]:
    return items[:limit], len(items) > limit


def event_extra(summary: Mapping[str, Any], uri: str, *, max_files: int = MAX_EVENT_FILES) -> dict[str, Any]:
    """The extra of a drain's Asset event: what landed, bounded and JSON-serialisable.

    ``files`` and ``rejected_files`` are paths relative to ``destination`` (the event's Asset URI,
    without ``conn_id@``); a downstream reader joins them to its own lake URL. At most
    ``max_files`` of each are listed; ``file_count`` / ``rejected_file_count`` stay exact and
    ``files_truncated`` is true when a list was cut. Iceberg drains name their table commits in
    ``commits`` instead (``table``, ``snapshot_id``, ``rows``), capped the same way.
    """
    extra: dict[str, Any] = {
        "destination": uri,
        "records": summary["records"],
        "rejected": summary["rejected"],
        "bytes": summary["bytes"],
        "stopped": summary["stopped"],
        "record_types": dict(sorted(summary.get("rows_by_type", {}).items())),
    }
    files = [_relative(f, uri) for f in summary["files"]]
    rejected_files = [_relative(f, uri) for f in summary["rejected_files"]]
    commits = [
        {"table": c["table"], "snapshot_id": c["snapshot_id"], "rows": c["rows"]}
        for c in summary.get("landed") or ()
    ]
    truncated = False
    if commits:
        extra["commits"], truncated = _capped(commits, max_files)
        extra["commit_count"] = len(commits)
        extra["tables"] = sorted({c["table"] for c in commits})
    else:
        extra["files"], cut = _capped(files, max_files)
        extra["rejected_files"], cut_rejects = _capped(rejected_files, max_files)
        truncated = cut or cut_rejects
    extra["file_count"] = len(files)
    extra["rejected_file_count"] = len(rejected_files)
    extra["files_truncated"] = truncated
    return extra


def declared_outlets(
    outlets: list[Any], *, asset: Asset | None, asset_alias: str | None, lake: Asset | None
) -> tuple[list[Any], list[Asset]]:
    """The operator's outlets at parse time, and the Assets among them it emits on itself.

    :param outlets: the user's own ``outlets`` (left as they are: Airflow emits on them every run)
    :param lake: the lake's Asset when its URI is known at parse time; declared only with an alias
    """
    own: list[Asset] = []
    if asset is not None:
        own.append(asset)
    if asset_alias and lake is not None and lake not in own:
        own.append(lake)
    return [*outlets, *own, *([AssetAlias(asset_alias)] if asset_alias else [])], own


def emit(
    task: Any,
    context: Context,
    *,
    uri: str,
    summary: Mapping[str, Any],
    asset: Asset | None,
    asset_alias: str | None,
    own: list[Asset],
) -> dict[str, Any] | None:
    """Announce what a run landed; returns the event's extra, or ``None`` when nothing landed.

    Nothing landed: the task's own Assets leave its outlets, the alias gets no event, so Airflow
    records no event at all. Something landed: the lake Asset is added to the alias (one event,
    through which alias-scheduled DAGs run), and ``asset`` gets the same extra.
    """
    landed = bool(summary["files"] or summary["rejected_files"])
    lake = Asset(uri)
    keep: list[Asset] = []  # not a set: Airflow 3.1's Asset is unhashable (its extra is a dict)
    extra = None
    if landed:
        extra = event_extra(summary, uri)
        events = context["outlet_events"]
        if asset_alias:
            events[AssetAlias(asset_alias)].add(lake, extra=extra)
        if asset is not None and not (asset_alias and asset == lake):
            # The lake through the alias is already its one event: a declared copy would be a second.
            events[asset].extra.update(extra)
            keep.append(asset)
    dropped = [a for a in own if a not in keep]
    if dropped:
        # A new list: the one read at parse time is shared with the DAG's own copy of the task.
        task.outlets = [o for o in task.outlets if not (isinstance(o, Asset) and o in dropped)]
    return extra
