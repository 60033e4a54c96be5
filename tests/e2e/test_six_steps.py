"""The whole flow on the testbed, exactly as `outpost-demo` runs it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from testbed import demo
from testbed.backends import Backend


@pytest.mark.parametrize("backend", ["emulated", pytest.param("real", marks=pytest.mark.real)])
async def test_six_steps_day2_and_disconnected_operation(tmp_path: Path, backend: Backend,
                                                         ) -> None:
    out = io.StringIO()
    rc = await demo.run(tmp_path, step_delay=0.03, timeout=60, out=out, api=backend)
    text = out.getvalue()
    assert rc == 0, text
    for title in ("1. request a cluster", "4b. CAPI objects pivoted", "5. signed spec published",
                  "6. the agent scales the cluster", "day 2", "link down", "link back"):
        assert title in text
    assert "FAILED" not in text and "all steps passed" in text
