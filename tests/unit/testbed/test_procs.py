"""Children of the testbed die with it, even when it is killed outright."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.procs import tied_to_parent

ROOT = Path(__file__).resolve().parents[3]
# The parent waits until the child runs `sleep` (so `setpriv` has armed the signal: a parent
# that dies before that is not the case this guards), then kills itself.
PARENT = """
import os, signal, subprocess, sys, time
from pathlib import Path
from testbed.procs import tied_to_parent
child = subprocess.Popen(tied_to_parent(["sleep", "120"]), stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while not Path(f"/proc/{child.pid}/cmdline").read_bytes().startswith(b"sleep"):
    time.sleep(0.01)
print(child.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.split(") ", 1)[1][0] != "Z"  # a zombie is dead, only unreaped
    except FileNotFoundError:
        return False


@pytest.mark.skipif(tied_to_parent(["x"]) == ["x"], reason="setpriv is not installed")
def test_a_child_dies_when_its_parent_is_killed() -> None:
    parent = subprocess.run([sys.executable, "-c", PARENT], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert parent.returncode == -9, parent.stderr
    child = int(parent.stdout.split()[0])
    deadline = time.monotonic() + 30  # bounds a failure only: the kernel acts at once
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)
