"""The drain engine: lease batches, land them in the lake, then acknowledge them.

Plain Python, no Airflow: the operators adapt it, the benchmark and the crash suite drive it
directly. One module per idea (docs/architecture.md, "Module map"):

* :mod:`.config` - :class:`DrainConfig`, the one home of the drain's defaults and checks;
* :mod:`.loop` - :class:`Drain` and its polling loop;
* :mod:`.fetcher` - the GET threads and their bounded hand-off;
* :mod:`.buffer` - the held batches (the commit point) and the partitions they would write;
* :mod:`.pace` - how much a flush may hold, learnt from this run;
* :mod:`.flush` - building, landing and checking a flush; :mod:`.acks` - acknowledging it;
* :mod:`.quarantine` - undecodable bodies;
* :mod:`.result`, :mod:`.metrics`, :mod:`.progress` - what a run reports.

The names below are the package's public face: import them from here.
"""

from __future__ import annotations

from airflow_provider_ktexport.drain.acks import Acknowledger
from airflow_provider_ktexport.drain.buffer import Buffer, HeldBatch, partitions_of
from airflow_provider_ktexport.drain.config import (
    ACK_CONCURRENCY,
    PARTITION_KEYS,
    DrainConfig,
    connections_needed,
    min_lease_margin,
)
from airflow_provider_ktexport.drain.fetcher import (
    HANDOFF_BATCHES,
    HANDOFF_BYTES,
    BatchSource,
    Fetcher,
    HandoffQueue,
)
from airflow_provider_ktexport.drain.flush import Flusher
from airflow_provider_ktexport.drain.loop import Drain
from airflow_provider_ktexport.drain.metrics import Metrics, NoMetrics
from airflow_provider_ktexport.drain.pace import FlushPace
from airflow_provider_ktexport.drain.progress import Progress
from airflow_provider_ktexport.drain.result import MAX_SUMMARY_FILES, DatasetStats, DrainResult

__all__ = [
    "ACK_CONCURRENCY",
    "HANDOFF_BATCHES",
    "HANDOFF_BYTES",
    "MAX_SUMMARY_FILES",
    "PARTITION_KEYS",
    "Acknowledger",
    "BatchSource",
    "Buffer",
    "DatasetStats",
    "Drain",
    "DrainConfig",
    "DrainResult",
    "Fetcher",
    "FlushPace",
    "Flusher",
    "HandoffQueue",
    "HeldBatch",
    "Metrics",
    "NoMetrics",
    "Progress",
    "connections_needed",
    "min_lease_margin",
    "partitions_of",
]
