"""`python -m testbed up`: files appear when ready, kubectl and NATS work, SIGTERM stops it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import nats
import pytest

from testbed.apiserver.discovery import KUBE_VERSION
from testbed.controlplane import build
from tests.fixtures.tools import kubectl_binary

SERVER_VERSION = {"emulated": KUBE_VERSION["gitVersion"],
                  "real": build.pinned(build.KUBERNETES)}


async def wait_for_files(paths: list[Path], proc: asyncio.subprocess.Process,
                         timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        assert proc.returncode is None, "testbed exited before it was ready"
        assert time.monotonic() < deadline, "testbed did not become ready"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("backend", [
    "emulated", pytest.param("real", marks=pytest.mark.real)])
async def test_up_serves_until_sigterm(tmp_path: Path, backend: str) -> None:
    state = tmp_path / "state"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "testbed", "up", "--state-dir", str(state), "--step-delay",
        "0.01", "--api", backend, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    files = [state / "management.kubeconfig", state / "workload.kubeconfig", state / "nats.url"]
    try:
        await wait_for_files(files, proc)
        env = {**os.environ, "HOME": str(tmp_path)}
        for kubeconfig, expect_crds in ((files[0], True), (files[1], False)):
            run = await asyncio.create_subprocess_exec(
                kubectl_binary(), "--kubeconfig", str(kubeconfig), "get", "crds", "-o", "name",
                env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await run.communicate()
            assert run.returncode == 0, err.decode()
            names = out.decode().split()
            if expect_crds:
                assert "customresourcedefinition.apiextensions.k8s.io/clusters.cluster.x-k8s.io" \
                    in names
            else:
                assert names == []  # the workload cluster starts bare
            run = await asyncio.create_subprocess_exec(
                kubectl_binary(), "--kubeconfig", str(kubeconfig), "version", "-o", "json",
                env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await run.communicate()
            assert run.returncode == 0, err.decode()
            assert json.loads(out)["serverVersion"]["gitVersion"] == SERVER_VERSION[backend]
        nc = await nats.connect(files[2].read_text().strip())
        js = nc.jetstream()
        kv = await js.create_key_value(bucket="probe")
        await kv.put("k", b"v")
        assert (await kv.get("k")).value == b"v"
        await nc.close()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert "export KUBECONFIG=" in out.decode()
    assert not any(f.exists() for f in files)


async def test_help_lists_commands() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "testbed", "up", "--help", stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and b"--state-dir" in out
