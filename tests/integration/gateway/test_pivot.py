"""The pivot end to end: a cluster brought up by the simulated Cluster API in one emulated API
(the management cluster) is moved into another (the workload cluster, running its own simulated
CAPI), over HTTP, through crashes, fault bursts and an unreachable target."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from agent.kube import ApiKubeClient, NotFound, Obj, Resource
from agent.kube import resources as r
from mgmt_gateway.pivot import (
    FileJournal,
    Graph,
    MemoryJournal,
    PreconditionFailed,
    RetryPolicy,
    abandon,
    discover,
    move,
)
from mgmt_gateway.pivot.model import BLOCK_MOVE_ANNOTATION, PIVOT_PAUSED_ANNOTATION
from testbed.backends import KubeApi, make_api
from testbed.capi import CapiSimulator, SimConfig
from testbed.crds import crd_files
from tests.fixtures.kube import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

V1 = "v1.35.2"
INFRA = "infrastructure.cluster.x-k8s.io"
CP = "controlplane.cluster.x-k8s.io"
BOOT = "bootstrap.cluster.x-k8s.io"
LABEL = "cluster.x-k8s.io/cluster-name"
KUBELET = {"nodeRegistration": {"kubeletExtraArgs": [
    {"name": "eviction-hard", "value": "nodefs.available<0%"}]}}
FAST = RetryPolicy(deadline=20.0, initial=0.02, maximum=0.3)


@dataclass
class Env:
    source: KubeApi
    target: KubeApi
    src: ApiKubeClient
    dst: ApiKubeClient
    tmp: Path
    target_capi: dict[str, bool]  # {"active": ...}: switch the target's controllers


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=[
    "emulated", pytest.param("real", marks=pytest.mark.real)])
async def env(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    tmp = tmp_path_factory.mktemp(f"pivot-{request.param}")
    source = make_api(request.param, "management", tmp / "management")
    target = make_api(request.param, "workload", tmp / "workload")
    sims: list[CapiSimulator] = []
    target_capi = {"active": True}
    await asyncio.gather(source.start(), target.start())
    for server, active in ((source, lambda: True), (target, lambda: target_capi["active"])):
        await server.install_crds(crd_files())
        # Both run CAPI: the target's is installed before the pivot, as the gateway does.
        sim = CapiSimulator(server, config=SimConfig(step_delay=0.02, resync=10.0),
                            workload_api=lambda ns, n: target, active=active)
        await sim.start()
        sims.append(sim)
    src = await ApiKubeClient.from_kubeconfig(
        source.write_kubeconfig(tmp / "management.kubeconfig", "management"))
    dst = await ApiKubeClient.from_kubeconfig(
        target.write_kubeconfig(tmp / "workload.kubeconfig", "workload"))
    try:
        yield Env(source, target, src, dst, tmp, target_capi)
    finally:
        await src.close()
        await dst.close()
        for sim in sims:
            await sim.stop()
        await source.stop()
        await target.stop()


# -- the cluster -------------------------------------------------------------------------------
def ref(group: str, kind: str, name: str) -> dict[str, str]:
    return {"apiGroup": group, "kind": kind, "name": name}


def cluster_objects(name: str, workers: int) -> list[tuple[Resource, Obj]]:
    """A dev-provider cluster (one control-plane replica), optionally with a worker pool."""
    objs: list[tuple[Resource, Obj]] = [
        (r.DEV_CLUSTER, {"metadata": {"name": name}, "spec": {"backend": {"inMemory": {}}}}),
        (r.DEV_MACHINE_TEMPLATE, {"metadata": {"name": f"{name}-cp"}, "spec": {
            "template": {"spec": {"backend": {"inMemory": {}}}}}}),
        (r.KUBEADM_CONTROL_PLANE, {"metadata": {"name": f"{name}-cp"}, "spec": {
            "replicas": 1, "version": V1,
            "machineTemplate": {"spec": {"infrastructureRef": ref(
                INFRA, "DevMachineTemplate", f"{name}-cp")}},
            "kubeadmConfigSpec": {"initConfiguration": KUBELET, "joinConfiguration": KUBELET}}}),
        (r.CLUSTER, {"metadata": {"name": name}, "spec": {
            "clusterNetwork": {"pods": {"cidrBlocks": ["192.168.0.0/16"]}},
            "controlPlaneRef": ref(CP, "KubeadmControlPlane", f"{name}-cp"),
            "infrastructureRef": ref(INFRA, "DevCluster", name)}}),
    ]
    if workers:
        md = f"{name}-md"
        sel = {LABEL: name, "cluster.x-k8s.io/deployment-name": md}
        objs += [
            (r.KUBEADM_CONFIG_TEMPLATE, {"metadata": {"name": md}, "spec": {
                "template": {"spec": {"joinConfiguration": KUBELET}}}}),
            (r.DEV_MACHINE_TEMPLATE, {"metadata": {"name": md}, "spec": {
                "template": {"spec": {"backend": {"inMemory": {}}}}}}),
            (r.MACHINE_DEPLOYMENT, {"metadata": {"name": md}, "spec": {
                "clusterName": name, "replicas": workers, "selector": {"matchLabels": sel},
                "template": {"metadata": {"labels": sel}, "spec": {
                    "clusterName": name, "version": V1,
                    "bootstrap": {"configRef": ref(BOOT, "KubeadmConfigTemplate", md)},
                    "infrastructureRef": ref(INFRA, "DevMachineTemplate", md)}}}}),
        ]
    return objs


async def create_cluster(env: Env, ns: str, name: str, workers: int = 1) -> None:
    await env.src.create(r.NAMESPACE, {"metadata": {"name": ns}})
    for res, obj in cluster_objects(name, workers):
        obj["metadata"]["namespace"] = ns
        await env.src.create(res, obj)


async def provisioned(env: Env, ns: str, name: str, workers: int = 1) -> Graph:
    """Wait until the cluster is up (every Machine has a Node) and quiet; its graph."""
    async def check() -> Graph:
        c = await env.src.get(r.CLUSTER, name, ns)
        init = (c.get("status") or {}).get("initialization") or {}
        assert init.get("infrastructureProvisioned") and init.get("controlPlaneInitialized")
        machines = (await env.src.list(r.MACHINE, ns)).items
        assert len(machines) == 1 + workers
        assert all((m.get("status") or {}).get("nodeRef") for m in machines)
        await env.src.get(r.SECRET, f"{name}-kubeconfig", ns)
        if workers:
            md = await env.src.get(r.MACHINE_DEPLOYMENT, f"{name}-md", ns)
            assert (md.get("status") or {}).get("readyReplicas") == workers
        return await discover(env.src, ns, name)
    graph: Graph = await eventually(check, timeout=60)  # a bound, not a speed
    return graph


async def up(env: Env, ns: str, name: str, workers: int = 1) -> Graph:
    await create_cluster(env, ns, name, workers)
    return await provisioned(env, ns, name, workers)


# -- checks ------------------------------------------------------------------------------------
async def absent(kube: ApiKubeClient, res: Resource, name: str, ns: str | None) -> bool:
    try:
        await kube.get(res, name, ns)
    except NotFound:
        return True
    return False


async def assert_moved(env: Env, before: Graph) -> None:
    """Everything is in the target exactly once, owned by the target's owners, with its status;
    the source has none of it; neither side is paused."""
    ns = before.namespace
    live: dict[str, Obj] = {}
    for key, n in before.nodes.items():
        live[key] = await env.dst.get(n.resource, n.name, n.namespace)
    by_name = {(n.kind, n.name): key for key, n in before.nodes.items()}
    for key, n in before.nodes.items():
        refs = live[key]["metadata"].get("ownerReferences") or []
        want = sorted((before.nodes[o].kind, before.nodes[o].name) for o in n.owners.values())
        assert sorted((x["kind"], x["name"]) for x in refs) == want, key
        for x in refs:  # every reference names the owner's incarnation in the target
            assert x["uid"] == live[by_name[(x["kind"], x["name"])]]["metadata"]["uid"], key
        assert live[key]["metadata"]["uid"] != n.uid
        if not n.shared:
            assert await absent(env.src, n.resource, n.name, n.namespace), key
    # No duplicates and nothing extra: per kind, exactly the moved names.
    for t in {n.type for n in before.nodes.values() if n.namespace}:
        names = {o["metadata"]["name"] for o in (await env.dst.list(t.resource, ns)).items}
        moved = {n.name for n in before.nodes.values() if n.type == t}
        if t.resource.kind in ("Secret", "ConfigMap"):
            assert moved <= names
        else:
            assert names == moved, t.resource.kind
    # Status carried over (clusterctl leaves it empty).
    cluster = before.cluster_node
    assert cluster is not None
    target_cluster = live[cluster.key]
    assert target_cluster["status"]["initialization"] == cluster.obj["status"]["initialization"]
    for key, n in before.nodes.items():
        if n.kind == "Machine":
            assert live[key]["status"]["nodeRef"] == n.obj["status"]["nodeRef"]
    # Unpaused in the target; the source holds nothing paused.
    now = await env.dst.get(r.CLUSTER, before.cluster, ns)
    assert not now["spec"].get("paused")
    assert PIVOT_PAUSED_ANNOTATION not in (now["metadata"].get("annotations") or {})
    assert await absent(env.src, r.CLUSTER, before.cluster, ns)


async def assert_not_paused_in_source(env: Env, ns: str, name: str) -> None:
    c = await env.src.get(r.CLUSTER, name, ns)
    assert not c["spec"].get("paused")
    assert PIVOT_PAUSED_ANNOTATION not in (c["metadata"].get("annotations") or {})


async def assert_untouched_target(env: Env, before: Graph) -> None:
    for n in before.nodes.values():
        if not n.shared:
            assert await absent(env.dst, n.resource, n.name, n.namespace), n.key


# -- tests -------------------------------------------------------------------------------------
async def test_move_carries_the_whole_cluster_over(env: Env) -> None:
    before = await up(env, "alpha", "alpha", workers=1)
    kinds = {n.kind for n in before.nodes.values()}
    assert kinds >= {"Cluster", "DevCluster", "KubeadmControlPlane", "DevMachineTemplate",
                     "MachineDeployment", "MachineSet", "Machine", "DevMachine",
                     "KubeadmConfig", "KubeadmConfigTemplate", "Secret"}
    secrets = {n.name for n in before.nodes.values() if n.kind == "Secret"}
    assert {f"alpha-{p}" for p in ("kubeconfig", "ca", "etcd", "sa", "proxy")} <= secrets
    assert len(secrets) == 7  # plus the two Machines' bootstrap data

    messages: list[str] = []
    report = await move(env.src, env.dst, "alpha", "alpha", journal=MemoryJournal(),
                        on_progress=messages.append, retry=FAST)
    assert report.outcome == "moved" and not report.resumed
    assert sorted(report.moved) == sorted(before.nodes)
    assert report.created == len(before.nodes) and report.updated == 0
    assert report.deleted == len(before.nodes)
    assert report.skipped == []
    assert report.api_calls > 2 * len(before.nodes)
    assert "moved to the target" in report.describe()
    assert any("unpaused" in m for m in messages)
    await assert_moved(env, before)

    # The target's controllers adopt the cluster as it is: no Machine is replaced.
    machines = {n.name for n in before.nodes.values() if n.kind == "Machine"}
    await asyncio.sleep(0.5)
    live = (await env.dst.list(r.MACHINE, "alpha")).items
    assert {m["metadata"]["name"] for m in live} == machines
    assert all(m["status"].get("phase") == "Running" for m in live)

    # Moving again is a no-op that says so (the Cluster is gone from the source).
    with pytest.raises(PreconditionFailed, match="does not exist in the source"):
        await move(env.src, env.dst, "alpha", "alpha", journal=MemoryJournal(), retry=FAST)


async def test_dry_run_changes_nothing_and_describes_the_plan(env: Env) -> None:
    before = await up(env, "dry", "dry", workers=1)
    # The mover's own requests (the simulated controllers write too, through the same APIs).
    writes = ("create", "replace", "patch", "apply", "delete")
    src_before = {m: env.src.requests[m] for m in writes}
    dst_before = {m: env.dst.requests[m] for m in writes}
    journal = MemoryJournal()
    report = await move(env.src, env.dst, "dry", "dry", journal=journal, dry_run=True)
    assert {m: env.src.requests[m] for m in writes} == src_before
    assert {m: env.dst.requests[m] for m in writes} == dst_before
    assert journal.done == set()
    assert report.outcome == "dry-run" and report.problems == []
    assert sorted(report.moved) == sorted(before.nodes)
    text = report.describe()
    assert "Dry run" in text and "Preconditions: met" in text
    assert "Cluster dry/dry (the Cluster) [paused until the end]" in text
    for n in before.nodes.values():
        assert f"{n.kind} dry/{n.name}" in text
    # Owners first: the Cluster before its control plane before its Machines' parts.
    assert text.index("Cluster dry/dry") < text.index("KubeadmControlPlane dry/dry-cp") \
        < text.index("Secret dry/dry-kubeconfig")
    await assert_not_paused_in_source(env, "dry", "dry")
    assert await absent(env.dst, r.NAMESPACE, "dry", None)


class Crash(Exception):
    pass


class CrashingJournal:
    """Persists like the gateway's journal, then dies at the k-th step: after persisting it
    (the step is journaled) or before (done but not journaled: the harder case)."""

    def __init__(self, inner: FileJournal, k: int, persisted: bool) -> None:
        self.inner = inner
        self.done = inner.done
        self.k, self.persisted, self.n = k, persisted, 0

    async def record(self, step: str) -> None:
        self.n += 1
        if self.n == self.k and not self.persisted:
            raise Crash(step)
        await self.inner.record(step)
        if self.n == self.k:
            raise Crash(step)


async def test_a_crash_at_any_step_resumes_to_completion(env: Env) -> None:
    # 46 steps: pause, namespace, 21 creates (3-23), deleting, 21 deletes (25-45), unpause.
    cases = [(1, False), (2, True), (7, True), (16, False), (24, False), (25, False),
             (31, True), (45, False), (46, True)]
    names = [f"crash{i}" for i in range(len(cases))]
    for name in names:
        await create_cluster(env, name, name)
    graphs = await asyncio.gather(*(provisioned(env, name, name) for name in names))

    async def crash_and_resume(name: str, before: Graph, k: int, persisted: bool) -> None:
        assert len(before.nodes) == 21
        path = env.tmp / f"{name}.journal.json"
        with pytest.raises(Crash):
            await move(env.src, env.dst, name, name, retry=FAST,
                       journal=CrashingJournal(FileJournal(path), k, persisted))
        if k == 7:  # and someone unpaused the source meanwhile: the move holds it again
            await env.src.patch(r.CLUSTER, name, {"spec": {"paused": None}}, name,
                                field_manager="someone")
        # A new process: the journal comes back from its file.
        report = await move(env.src, env.dst, name, name, journal=FileJournal(path),
                            retry=FAST)
        assert report.outcome == "moved", name
        assert report.resumed == (k > 1 or persisted)  # else the journal was still empty
        assert sorted(report.moved) == sorted(before.nodes), name
        await assert_moved(env, before)
        # Resumed again after completion: nothing left to do, nothing done.
        again = await move(env.src, env.dst, name, name, journal=FileJournal(path),
                           retry=FAST)
        assert again.created == again.updated == again.deleted == 0
        assert sorted(again.moved) == sorted(before.nodes)

    # Clusters in different namespaces move side by side, as the gateway moves them. The
    # target's controllers idle here, to keep the emulator's CPU for the moves.
    env.target_capi["active"] = False
    try:
        await asyncio.gather(*(crash_and_resume(name, before, k, persisted) for name, before,
                               (k, persisted) in zip(names, graphs, cases, strict=True)))
    finally:
        env.target_capi["active"] = True


async def test_fault_bursts_and_an_unreachable_target_are_ridden_out(env: Env) -> None:
    before = await up(env, "faults", "faults", workers=1)
    outage: list[asyncio.Task[None]] = []

    async def go_away() -> None:
        await env.target.go_down()
        await asyncio.sleep(1.0)
        await env.target.come_up()

    def on_progress(message: str) -> None:
        if message.startswith("created") and "(5/" in message:
            outage.append(asyncio.create_task(go_away()))

    # Only the mover's requests (its User-Agent) get them: the CAPI controllers on both
    # servers keep working meanwhile and would take some of the faults otherwise.
    mover = env.src.user_agent
    env.source.faults.fail_next(3, 500, client=mover)
    env.target.faults.fail_next(5, 500, client=mover)
    env.target.faults.fail_next(3, 409, client=mover)
    env.target.faults.fail_next(2, 503, method="PATCH", client=mover)
    try:
        report = await move(env.src, env.dst, "faults", "faults", journal=MemoryJournal(),
                            on_progress=on_progress, retry=FAST)
    finally:
        for t in outage:
            await t
        env.source.faults.clear()
        env.target.faults.clear()
    assert outage, "the outage never happened"
    assert report.outcome == "moved"
    assert report.retries >= 13
    await assert_moved(env, before)


async def test_an_unprovisioned_cluster_is_refused_and_left_unpaused(env: Env) -> None:
    ns = "early"
    await env.src.create(r.NAMESPACE, {"metadata": {"name": ns}})
    # Its infrastructure cluster is missing, so it can never be provisioned.
    for res, obj in cluster_objects("early", 0):
        if res != r.DEV_CLUSTER:
            obj["metadata"]["namespace"] = ns
            await env.src.create(res, obj)

    async def reconciled() -> Obj:
        c = await env.src.get(r.CLUSTER, "early", ns)
        assert (c.get("status") or {}).get("initialization") is not None
        return c
    await eventually(reconciled)
    journal = MemoryJournal()
    with pytest.raises(PreconditionFailed) as e:
        await move(env.src, env.dst, ns, "early", journal=journal, retry=FAST)
    assert any("still provisioning its infrastructure" in p for p in e.value.problems)
    assert any("control plane" in p and "not initialized" in p for p in e.value.problems)
    assert not e.value.abandoned
    assert journal.done == set()
    await assert_not_paused_in_source(env, ns, "early")
    assert await absent(env.dst, r.NAMESPACE, ns, None)

    report = await move(env.src, env.dst, ns, "early", journal=journal, dry_run=True)
    assert any("infrastructure" in p for p in report.problems)
    assert "Preconditions NOT met" in report.describe()


async def test_a_blocked_move_is_abandoned_and_nothing_stays_paused(env: Env) -> None:
    before = await up(env, "blocked", "blocked", workers=0)
    await env.src.patch(r.DEV_CLUSTER, "blocked", {"metadata": {"annotations": {
        BLOCK_MOVE_ANNOTATION: ""}}}, "blocked", field_manager="provider")
    journal = MemoryJournal()
    with pytest.raises(PreconditionFailed, match="block-move") as e:
        await move(env.src, env.dst, "blocked", "blocked", journal=journal, retry=FAST,
                   block_move_timeout=0.3)
    assert e.value.abandoned
    await assert_not_paused_in_source(env, "blocked", "blocked")
    await assert_untouched_target(env, before)

    # The provider lets go; the same journal starts a fresh attempt and completes it.
    await env.src.patch(r.DEV_CLUSTER, "blocked", {"metadata": {"annotations": {
        BLOCK_MOVE_ANNOTATION: None}}}, "blocked", field_manager="provider")
    before = await provisioned(env, "blocked", "blocked", workers=0)
    report = await move(env.src, env.dst, "blocked", "blocked", journal=journal, retry=FAST)
    assert report.outcome == "moved" and not report.resumed
    await assert_moved(env, before)


async def test_abandon_rolls_back_before_deletion_and_forward_after(env: Env) -> None:
    back, fwd = "rollback", "forward"
    for name in (back, fwd):
        await create_cluster(env, name, name)
    graphs = await asyncio.gather(*(provisioned(env, n, n) for n in (back, fwd)))
    before = dict(zip((back, fwd), graphs, strict=True))

    # Interrupted half way through creating: abandon removes the copies, unpauses the source.
    journal = MemoryJournal()
    with contextlib.suppress(Crash):
        await move(env.src, env.dst, back, back, retry=FAST,
                   journal=CrashingJournal(FileJournal(env.tmp / "back.json"), 12, True))
    journal.done = set(FileJournal(env.tmp / "back.json").done)
    copy = await env.dst.get(r.CLUSTER, back, back)  # copies exist, paused
    assert copy["spec"]["paused"] is True
    report = await abandon(env.src, env.dst, back, back, journal=journal, retry=FAST)
    assert report.outcome == "abandoned"
    await assert_not_paused_in_source(env, back, back)
    await assert_untouched_target(env, before[back])
    graph = await discover(env.src, back, back)
    assert sorted(graph.nodes) == sorted(before[back].nodes)  # the source is whole
    # ... and the same journal can move it later.
    report = await move(env.src, env.dst, back, back, journal=journal, retry=FAST)
    assert report.outcome == "moved"
    await assert_moved(env, before[back])

    # Interrupted while deleting from the source: abandon can only complete the move.
    path = env.tmp / "fwd.json"
    with contextlib.suppress(Crash):
        await move(env.src, env.dst, fwd, fwd, retry=FAST,
                   journal=CrashingJournal(FileJournal(path), 31, True))
    report = await abandon(env.src, env.dst, fwd, fwd, journal=FileJournal(path), retry=FAST)
    assert report.outcome == "moved"
    await assert_moved(env, before[fwd])



async def test_move_plan_command_prints_the_plan_and_changes_nothing(env: Env) -> None:
    import asyncio as aio
    import os
    import sys

    before = await up(env, "cli", "c-cli", workers=0)
    proc = await aio.create_subprocess_exec(
        sys.executable, "-m", "mgmt_gateway.daemon", "move-plan", "--namespace", "cli",
        "--cluster", "c-cli", "--target-kubeconfig", str(env.tmp / "workload.kubeconfig"),
        env={**os.environ, "OUTPOST_GATEWAY_KUBECONFIG": str(env.tmp / "management.kubeconfig"),
             "OUTPOST_GATEWAY_LOG_LEVEL": "WARNING"},
        stdout=aio.subprocess.PIPE, stderr=aio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "c-cli" in text and "KubeadmControlPlane" in text
    await assert_untouched_target(env, before)
    await assert_not_paused_in_source(env, "cli", "c-cli")
