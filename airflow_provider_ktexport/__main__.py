"""``python -m airflow_provider_ktexport``: the ``ktexport`` command (see docs/cli.md)."""

from __future__ import annotations

import sys

from airflow_provider_ktexport.cli import main

if __name__ == "__main__":
    sys.exit(main())
