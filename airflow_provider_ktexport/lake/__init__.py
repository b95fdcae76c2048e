"""The lake: records -> typed Arrow tables (:mod:`.schema`) -> verified Parquet files (:mod:`.writer`)
or Iceberg commits (:mod:`.iceberg`), every path, folder and meta column named by :mod:`.layout`.

No Airflow import here: the drain engine and the benchmarks use it alone.
"""

from __future__ import annotations
