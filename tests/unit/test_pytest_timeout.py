"""The per-test timeout of this project's pytest configuration really ends a hung test.

pytest-timeout's signal method raises its failure in whatever frame runs when the alarm
arrives. In an async test whose event loop is busy, that is usually some other task's step: the
failure becomes that task's exception, nobody looks at it, and the test hangs on for ever. Its
thread method instead needs the GIL to print the stacks, which a loop of long C calls starves
for minutes. So each case below runs pytest, configured exactly as this project is (its
pyproject.toml) but with short timeouts, on a tiny test that hangs, and asserts the run ends,
failed, naming the timeout.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

HANGS = {
    # The test awaits for ever while another task keeps the loop busy (as the simulated
    # controllers or a reconnect loop do).
    "busy_loop": '''
import asyncio

async def test_hangs() -> None:
    async def work() -> None:
        while True:
            sum(range(200_000))
            await asyncio.sleep(0)
    task = asyncio.create_task(work())
    await asyncio.Event().wait()
    task.cancel()
''',
    # The test passes, then its async fixture never finishes tearing down.
    "fixture_teardown": '''
import asyncio
import pytest_asyncio

@pytest_asyncio.fixture
async def stuck():
    async def work() -> None:
        while True:
            sum(range(200_000))
            await asyncio.sleep(0)
    task = asyncio.create_task(work())
    yield
    await asyncio.Event().wait()
    task.cancel()

async def test_hangs(stuck: None) -> None:
    pass
''',
    # A synchronous wait on the main thread.
    "blocking_call": '''
import threading

def test_hangs() -> None:
    threading.Event().wait()
''',
}


@pytest.mark.parametrize("case", sorted(HANGS))
def test_a_hung_test_is_stopped_by_the_per_test_timeout(case: str, tmp_path: Path) -> None:
    test_file = tmp_path / f"test_{case}.py"
    test_file.write_text(HANGS[case])
    cmd = [sys.executable, "-m", "pytest", "-c", str(PYPROJECT), "--rootdir", str(tmp_path),
           "-p", "no:cacheprovider", "-o", "timeout=2", "-o", "timeout_grace=3", str(test_file)]
    try:
        # The bound only keeps this test from hanging too when the timeout does not fire.
        run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the hung test was never stopped; its output:\n{e.stdout!r}")
    out = run.stdout + run.stderr
    assert run.returncode not in (0, 5), out
    assert "Timeout" in out, out
    assert f"test_{case}.py" in out, out


def test_a_test_failed_by_its_timeout_does_not_end_the_run(tmp_path: Path) -> None:
    """Where the alarm can fail the test itself, the run goes on to the next test."""
    test_file = tmp_path / "test_two.py"
    test_file.write_text(HANGS["blocking_call"] + "\n\ndef test_after() -> None:\n    pass\n")
    cmd = [sys.executable, "-m", "pytest", "-c", str(PYPROJECT), "--rootdir", str(tmp_path),
           "-p", "no:cacheprovider", "-o", "timeout=2", "-o", "timeout_grace=30", str(test_file)]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "1 failed, 1 passed" in out, out
    assert "Timeout" in out, out
