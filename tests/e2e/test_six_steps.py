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
    for title in ("0. publish a cluster profile", "1. request a cluster",
                  "4b. CAPI objects pivoted", "5. signed spec published",
                  "6a. the agent scales the cluster", "day 2", "link down", "link back"):
        assert title in text
    # Step 6 as the flow has it: the profile's add-ons in order, with what each installed.
    assert ("monitoring (order 0), logging (order 1), security (order 2) Ready, in that order"
            in text)
    assert "add-on monitoring (order 0) Ready: Namespace monitoring; CustomResourceDefinition" \
        in text
    assert "the logging add-on's ConfigMap restored" in text
    assert "FAILED" not in text and "all steps passed" in text
