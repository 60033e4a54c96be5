"""The simulated Cluster API's controller runtime."""

from __future__ import annotations

import asyncio

import pytest

from testbed.apiserver import ApiServer
from testbed.capi import CapiSimulator
from testbed.crds import crd_files


async def test_waiting_for_idle_fails_once_the_worker_has_died() -> None:
    """A worker that died leaves its queue non-empty for ever: waiting for the simulator to be
    idle then says so instead of hanging."""
    server = ApiServer()
    await server.start()
    server.load_crds(crd_files())
    reg = server.registry
    reg.create(reg.type_for("cluster.x-k8s.io", "v1beta2", "clusters"), "default", {
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
        "metadata": {"name": "c"}, "spec": {"paused": False}})
    broken = False

    def active() -> bool:
        if broken:
            raise RuntimeError("the worker dies here")
        return True

    sim = CapiSimulator(server, active=active)
    await sim.start()
    try:
        await sim.wait_idle()
        broken = True
        assert sim.runtime is not None
        sim.runtime.enqueue_namespace(None)
        with pytest.raises(RuntimeError, match="worker has stopped") as e:
            await asyncio.wait_for(sim.wait_idle(), 60)  # the bound only ends a hang
        assert "the worker dies here" in str(e.value.__cause__)
        with pytest.raises(RuntimeError, match="the worker dies here"):
            await sim.stop()  # stopping reports it too
    finally:
        await server.stop()
