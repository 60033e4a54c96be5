"""The agent end to end on the testbed: signed specs over real NATS reach the cluster."""

from __future__ import annotations

from tests.fixtures.site import NS, Site, eventually, make_spec


def md(site: Site, pool: str) -> dict | None:
    return site.obj("machinedeployments", f"edge-1-{pool}")


async def test_revisions_reach_the_cluster(site: Site) -> None:
    agent = await site.start_agent()
    await site.publish(make_spec(revision=1, cp=3, workers={"a": 2}))

    def kcp_replicas() -> int:
        kcp = site.obj("kubeadmcontrolplanes", "edge-1-control-plane")
        return kcp["spec"]["replicas"] if kcp else 0

    await eventually(lambda: kcp_replicas() == 3, what="KCP scaled 1 -> 3")
    await eventually(lambda: md(site, "a") is not None, what="pool a created")
    assert md(site, "a")["spec"]["replicas"] == 2  # type: ignore[index]
    await eventually(lambda: agent.agent.applied_revision == 1, timeout=30,
                     what="revision 1 converged")
    kcp = site.obj("kubeadmcontrolplanes", "edge-1-control-plane")
    assert kcp is not None and kcp["status"]["readyReplicas"] == 3

    await site.publish(make_spec(revision=2, cp=3, workers={"a": 4, "b": 1}))
    await eventually(lambda: (md(site, "a") or {}).get("spec", {}).get("replicas") == 4,
                     what="pool a scaled to 4")
    await eventually(lambda: md(site, "b") is not None, what="pool b created")

    await site.publish(make_spec(revision=3, cp=3, workers={"b": 1}))
    await eventually(lambda: md(site, "a") is None, what="pool a removed")
    await eventually(lambda: agent.agent.applied_revision == 3, timeout=30,
                     what="revision 3 converged")
    # The removed pool's templates are garbage-collected; the live ones stay.
    templates = site.names("devmachinetemplates", "outpost.io/pool=a")
    assert templates == set()
    assert site.names("devmachinetemplates", "outpost.io/pool=b")
    assert await agent.shutdown() == 0
    assert NS == "fleet"
