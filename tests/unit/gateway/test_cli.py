"""What a person sees of `outpost-gateway` before it even starts."""

from __future__ import annotations

import os
import subprocess
import sys


def test_help_lists_every_setting() -> None:
    out = subprocess.run([sys.executable, "-m", "mgmt_gateway.daemon", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for name in ("KUBECONFIG", "NATS_SERVERS", "SIGNING_KEY_FILE", "COMPONENTS", "API_TOKENS",
                 "AGENT_IMAGE"):
        assert f"OUTPOST_GATEWAY_{name}" in out


def test_bad_setting_is_named_by_its_variable() -> None:
    env = {**os.environ, "OUTPOST_GATEWAY_HTTP_PORT": "99999",
           "OUTPOST_GATEWAY_AGENT_EXTRA_ENV": "NOEQUALS"}
    bad = subprocess.run([sys.executable, "-m", "mgmt_gateway.daemon"], capture_output=True,
                         text=True, env=env)
    assert bad.returncode == 2
    assert "OUTPOST_GATEWAY_HTTP_PORT" in bad.stderr
    assert "OUTPOST_GATEWAY_AGENT_EXTRA_ENV" in bad.stderr and "KEY=VALUE" in bad.stderr
