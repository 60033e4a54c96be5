"""A last-resort per-test deadline that ends a hung pytest run even when nothing else can.

pytest-timeout's signal method fails a hung test cleanly and lets the run go on, but in an async
test the alarm raises in whatever task's step is running; when that is not the test's own frame
the failure is swallowed and the test hangs on. Its thread method needs the GIL to format the
stacks and read their source lines, and a busy loop of long C calls (as the simulated
controllers make) starves it for minutes. So this plugin arms `faulthandler`'s watchdog around
every test: a C thread that needs no GIL, prints every thread's stack to the terminal and exits
the process, `grace` seconds after pytest-timeout should have fired.

Enabled from pyproject.toml with ``-p testbed.pytest_watchdog``; ``timeout_grace`` (ini) sets
the grace. pytest's own ``faulthandler_timeout`` must stay unset: the process has one watchdog.
"""

from __future__ import annotations

import faulthandler
import os
from collections.abc import Generator
from typing import IO

import pytest

# Duplicated at import, before pytest's fd capture redirects fd 2 for each test: the stacks
# must reach the terminal, not a capture file that dies with the process.
_TERMINAL: IO[str] = os.fdopen(os.dup(2), "w", closefd=True)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("timeout_grace", "seconds after a test's timeout before the watchdog ends the "
                  "whole run with every thread's stack", default="30")


def _deadline(item: pytest.Item) -> float:
    """The test's pytest-timeout setting (marker, else ini) plus the grace; 0 means none."""
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        timeout = float(marker.args[0])
    elif marker is not None and "timeout" in marker.kwargs:
        timeout = float(marker.kwargs["timeout"])
    else:
        timeout = float(item.config.getini("timeout") or 0)
    if timeout <= 0:
        return 0.0
    return timeout + float(item.config.getini("timeout_grace"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    deadline = _deadline(item)
    if deadline > 0:
        faulthandler.dump_traceback_later(deadline, exit=True, file=_TERMINAL)
    try:
        yield
    finally:
        if deadline > 0:
            faulthandler.cancel_dump_traceback_later()
