"""The ``ktexport`` command's running drain (cli/commands.py): Ctrl-C handling."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from airflow_provider_ktexport.cli.commands import stop_on_signals
from tests.waiting import wait_until


def test_ctrl_c_stops_leasing_first_and_abandons_at_the_second():
    stop = threading.Event()
    with stop_on_signals(stop):
        os.kill(os.getpid(), signal.SIGINT)
        wait_until(stop.is_set)  # the handler runs between bytecodes of this thread
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            wait_until(lambda: False)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
