"""The add-on engine against a cluster API (emulated and real): staged install gated on health,
zero writes once converged, drift repaired, fields another manager owns left alone, an upgrade
pruning what it dropped, a removed add-on pruned (but never a Namespace the agent did not
create), a version that never becomes healthy rolled back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agent.intake.bundles import ContentStore
from agent.kube import ApiKubeClient, NotFound, Resource
from agent.kube import resources as r
from agent.reconcile.addons import AddonController
from agent.reconcile.inventory import InventoryStore
from agent.spec import ClusterSpec
from agent.spec.addons import Addon, Bundle, BundleRef, Hook, digest_of
from testbed.backends import KubeApi
from testbed.kubelet import Kubelet
from tests.fixtures.site import eventually, spec_dict

pytestmark = pytest.mark.both_backends

DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
CRD = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions",
               "CustomResourceDefinition", namespaced=False)
WIDGETS = Resource("example.com", "v1", "widgets", "Widget")
TOLERATION = [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists",
               "effect": "NoSchedule"}]


def crd() -> dict[str, Any]:
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                     "names": {"plural": "widgets", "singular": "widget", "kind": "Widget",
                               "listKind": "WidgetList"},
                     "versions": [{"name": "v1", "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": {
                                       "type": "object", "properties": {"spec": {
                                           "type": "object",
                                           "x-kubernetes-preserve-unknown-fields": True}}}}}]}}


def deployment(replicas: int = 1, image: str = "registry.example/app:1") -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "app", "namespace": "addon-a"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "app"}},
                     "template": {"metadata": {"labels": {"app": "app"}}, "spec": {
                         "tolerations": TOLERATION,
                         "containers": [{"name": "app", "image": image}]}}}}


def objects(*, with_config: bool = True, replicas: int = 1) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "addon-a"}},
        crd(),
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "app", "namespace": "addon-a"}},
    ]
    if with_config:
        out.append({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "app-config", "namespace": "addon-a"},
                    "data": {"level": "info"}})
    out += [deployment(replicas),
            {"apiVersion": "example.com/v1", "kind": "Widget",
             "metadata": {"name": "w1", "namespace": "addon-a"}, "spec": {"size": 3}}]
    return out


@dataclass
class Engine:
    kube: ApiKubeClient
    store: ContentStore
    controller: AddonController
    spec: ClusterSpec | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def publish(self, revision: int, *addons: tuple[Addon, Bundle]) -> None:
        """What the intake does for a new signed spec: the bundles reach the store and the
        spec becomes the desired one."""
        for addon, bundle in addons:
            self.store.put(bundle.encode(), addon.bundle)
        self.spec = ClusterSpec.model_validate(spec_dict(revision=revision, profile={
            "name": "base", "version": str(revision),
            "addons": [a.model_dump(by_alias=True, mode="json") for a, _ in addons]}))
        self.controller.trigger()

    async def converged(self, name: str, phase: str = "Ready", timeout: float = 90) -> None:
        async def ok() -> bool:
            st = self.controller.status.get(name)
            return st is not None and st.phase == phase and self.controller.queue.depth == 0
        await eventually(ok, timeout=timeout, what=f"add-on {name} {phase}")


def addon(name: str, version: str, objs: list[dict[str, Any]], **kw: Any) -> tuple[Addon,
                                                                                  Bundle]:
    bundle = Bundle(name=name, version=version, objects=tuple(objs))
    data = bundle.encode()
    return Addon(name=name, version=version, bundle=BundleRef(
        digest=digest_of(data), size=len(data), objects=len(objs)), **kw), bundle


@pytest_asyncio.fixture
async def engine(api: KubeApi, kubeconfig: Path, tmp_path: Path) -> AsyncIterator[Engine]:
    kubelet = Kubelet(api, tmp_path / "kubelet")
    await kubelet.start()
    kube = await ApiKubeClient.from_kubeconfig(kubeconfig, request_timeout=10)
    await kube.apply(r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace",
                                   "metadata": {"name": "outpost-system"}},
                     field_manager="test")
    store = ContentStore(tmp_path / "bundles")
    box: list[Engine] = []
    controller = AddonController(kube, lambda: box[0].spec, store,
                                 InventoryStore(tmp_path / "inventory", kube, "outpost-system"),
                                 resync=0.5, retry=0.2)
    e = Engine(kube, store, controller)
    box.append(e)
    e.tasks = [asyncio.create_task(controller.worker(), name="worker"),
               asyncio.create_task(controller.resync_loop(), name="resync"),
               asyncio.create_task(controller.watches.run(), name="watches")]
    try:
        yield e
    finally:
        for t in e.tasks:
            t.cancel()
        _, pending = await asyncio.wait(e.tasks, timeout=20)
        assert not pending, "tasks that ignored cancellation: " + "; ".join(
            f"{t.get_name()} at {t.get_stack(limit=3)}" for t in pending)
        await kube.close()
        await kubelet.stop()


async def test_install_in_stages_then_zero_writes_and_drift_repaired(engine: Engine) -> None:
    kube, c = engine.kube, engine.controller
    a = addon("addon-a", "1.0.0", objects())
    engine.publish(1, a)
    await engine.converged("addon-a")
    widget = await kube.get(WIDGETS, "w1", "addon-a")  # applied once its CRD was Established
    assert widget["spec"] == {"size": 3}
    assert widget["metadata"]["labels"]["outpost.io/addon"] == "addon-a"
    dep = await kube.get(DEPLOYMENTS, "app", "addon-a")
    assert dep["status"].get("availableReplicas") == 1
    inv = c.inventory["addon-a"]
    assert inv.ready and len(inv.entries) == 6
    assert {e.kind for e in inv.entries if e.created} >= {"Namespace", "Deployment"}
    cm = await kube.get(r.CONFIG_MAP, "outpost-addon-addon-a", "outpost-system")
    assert '"addon-a"' in cm["data"]["inventory.json"]

    # Converged: passes cost no writes.
    writes, passes = c.writes, kube.requests.copy()
    for _ in range(3):
        assert await c.reconcile("addon-a") is None
    assert c.writes == writes
    verbs = ("apply", "create", "patch", "delete", "replace")
    assert {v: kube.requests[v] - passes[v] for v in verbs} == dict.fromkeys(verbs, 0)

    # Drift: a deleted ConfigMap comes back, an edited Deployment is restored.
    await kube.delete(r.CONFIG_MAP, "app-config", "addon-a")
    await kube.patch(DEPLOYMENTS, "app", {"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "evil:latest"}]}}}}, "addon-a", field_manager="kubectl-edit")

    async def repaired() -> bool:
        try:
            cm = await kube.get(r.CONFIG_MAP, "app-config", "addon-a")
        except NotFound:
            return False
        d = await kube.get(DEPLOYMENTS, "app", "addon-a")
        image = d["spec"]["template"]["spec"]["containers"][0]["image"]
        return cm["data"] == {"level": "info"} and image == "registry.example/app:1"

    await eventually(repaired, timeout=30, what="drift repaired")


async def test_ignored_fields_are_left_to_their_owner(engine: Engine) -> None:
    """An HPA-style owner of spec.replicas: with the ignore rule, no write loop."""
    kube, c = engine.kube, engine.controller
    a = addon("scaled", "1", [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "addon-a"}},
        deployment()], ignore=[{"apiGroup": "apps", "kind": "Deployment",
                                "paths": ["spec.replicas"]}])
    engine.publish(1, a)
    await engine.converged("scaled")
    await kube.patch(DEPLOYMENTS, "app", {"spec": {"replicas": 2}}, "addon-a",
                     field_manager="horizontal-pod-autoscaler")
    await asyncio.sleep(1.0)  # several resyncs and the watch event
    writes = c.writes
    for _ in range(3):
        await c.reconcile("scaled")
    assert c.writes == writes
    assert (await kube.get(DEPLOYMENTS, "app", "addon-a"))["spec"]["replicas"] == 2


async def test_upgrade_prunes_what_it_dropped_and_removal_prunes_the_rest(
        engine: Engine) -> None:
    kube, c = engine.kube, engine.controller
    await kube.create(r.NAMESPACE, {"metadata": {"name": "shared"}})  # not the agent's
    base = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shared"}},
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "keep", "namespace": "shared"}, "data": {"a": "1"}},
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "dropped", "namespace": "shared"}, "data": {"b": "2"}}]
    engine.publish(1, addon("cfg", "1", base))
    await engine.converged("cfg")
    engine.publish(2, addon("cfg", "2", base[:2]))

    async def dropped_gone() -> bool:
        try:
            await kube.get(r.CONFIG_MAP, "dropped", "shared")
            return False
        except NotFound:
            return c.status["cfg"].phase == "Ready"

    await eventually(dropped_gone, timeout=30, what="the dropped ConfigMap pruned")
    assert (await kube.get(r.CONFIG_MAP, "keep", "shared"))["data"] == {"a": "1"}

    engine.publish(3)  # the profile no longer has it

    async def removed() -> bool:
        try:
            await kube.get(r.CONFIG_MAP, "keep", "shared")
            return False
        except NotFound:
            return "cfg" not in c.inventory

    await eventually(removed, timeout=30, what="the removed add-on pruned")
    ns = await kube.get(r.NAMESPACE, "shared")  # the agent did not create it: kept
    assert not ns["metadata"].get("deletionTimestamp")


async def good_then_never_healthy(engine: Engine, timeout_seconds: int) -> tuple[Addon,
                                                                                 Bundle]:
    """Version 1 of add-on app installed and Ready; version 2 published, asking for a
    condition its Deployment never reports. Returns version 2."""
    good = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "addon-a"}},
            deployment()]
    engine.publish(1, addon("app", "1", good))
    await engine.converged("app")
    bad = addon("app", "2", [good[0], deployment(image="registry.example/app:2")],
                timeout_seconds=timeout_seconds, health=[
                    {"apiGroup": "apps", "kind": "Deployment",
                     "conditions": [{"type": "NeverTrue"}]}])
    engine.publish(2, bad)
    return bad


async def test_a_version_that_never_becomes_healthy_rolls_back(engine: Engine) -> None:
    kube, c = engine.kube, engine.controller
    bad = await good_then_never_healthy(engine, timeout_seconds=10)
    await engine.converged("app", phase="Degraded", timeout=60)
    assert "rolled back to 1" in c.status["app"].message
    d = await kube.get(DEPLOYMENTS, "app", "addon-a")
    assert d["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/app:1"
    assert c.inventory["app"].failed_digest == bad[0].bundle.digest


async def test_the_timeout_keeps_counting_across_agent_restarts(engine: Engine,
                                                                tmp_path: Path) -> None:
    """An agent that restarts mid-attempt (a crash loop, a node reboot) does not give a version
    that never becomes healthy a fresh timeout each time."""
    kube, c = engine.kube, engine.controller
    bad = await good_then_never_healthy(engine, timeout_seconds=120)

    async def attempting() -> bool:
        inv = c.inventory.get("app")
        st = c.status.get("app")
        return (inv is not None and inv.digest == bad[0].bundle.digest
                and inv.attempt_started > 0 and st is not None and st.phase == "Applying")
    await eventually(attempting, timeout=30, what="version 2 being applied")
    for t in engine.tasks:
        t.cancel()
    await asyncio.wait(engine.tasks)
    # The agent comes back two minutes later (by the wall clock): the attempt is over.
    later = AddonController(kube, lambda: engine.spec, engine.store,
                            InventoryStore(tmp_path / "inventory", kube, "outpost-system"),
                            resync=0.5, retry=0.2, wall=lambda: time.time() + 121)
    engine.controller = later
    engine.tasks = [asyncio.create_task(later.worker(), name="worker"),
                    asyncio.create_task(later.resync_loop(), name="resync"),
                    asyncio.create_task(later.watches.run(), name="watches")]
    await engine.converged("app", phase="Degraded", timeout=60)
    assert "rolled back to 1" in later.status["app"].message
    assert later.inventory["app"].failed_digest == bad[0].bundle.digest


JOBS = Resource("batch", "v1", "jobs", "Job")
PVCS = Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")


async def test_a_removed_addon_runs_its_pre_delete_hooks_then_is_pruned(engine: Engine) -> None:
    """Helm's pre-delete hooks (a Job that deregisters the site, drains a queue) run when the
    add-on leaves the profile, and only then are its objects pruned."""
    kube, c = engine.kube, engine.controller
    hook_job = {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": "deregister", "namespace": "default"},
                "spec": {"backoffLimit": 0, "template": {"spec": {
                    "restartPolicy": "Never", "tolerations": TOLERATION,
                    "containers": [{"name": "c", "image": "registry.example/tool:1"}]}}}}
    objs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "addon-a"}},
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "app-config", "namespace": "addon-a"}, "data": {"a": "1"}}]
    bundle = Bundle(name="app", version="1", objects=tuple(objs),
                    hooks=(Hook(phase="pre-delete", object=hook_job),))
    data = bundle.encode()
    app = Addon(name="app", version="1", bundle=BundleRef(
        digest=digest_of(data), size=len(data), objects=len(objs)))
    engine.publish(1, (app, bundle))
    await engine.converged("app")
    with pytest.raises(NotFound):  # not run at install
        await kube.get(JOBS, "deregister", "default")

    engine.publish(2)  # the add-on left the profile

    async def removed() -> bool:
        return "app" not in c.inventory and "app" not in c.status
    await eventually(removed, timeout=90, what="the add-on removed")
    job = await kube.get(JOBS, "deregister", "default")
    assert job["metadata"]["labels"]["outpost.io/hook"] == "pre-delete"
    assert job["status"].get("succeeded") == 1
    with pytest.raises(NotFound):
        await kube.get(r.CONFIG_MAP, "app-config", "addon-a")


async def test_a_failing_addon_holds_the_next_order_but_not_its_own(engine: Engine) -> None:
    c = engine.controller
    never = [{"apiGroup": "apps", "kind": "Deployment", "conditions": [{"type": "NeverTrue"}]}]
    broken = addon("broken", "1", [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "addon-a"}},
        deployment()], timeout_seconds=10, on_failure="Hold", health=never)
    fine = addon("fine", "1", [{"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": "fine", "namespace": "default"},
                                "data": {"a": "1"}}])
    later = addon("later", "1", [{"apiVersion": "v1", "kind": "ConfigMap",
                                  "metadata": {"name": "later", "namespace": "default"}}],
                  order=1)
    engine.publish(1, broken, fine, later)

    def phase(name: str, want: str) -> Callable[[], bool]:
        def check() -> bool:
            st = c.status.get(name)
            return st is not None and st.phase == want
        return check

    # The same order as the broken one: not held up by it.
    await eventually(phase("fine", "Ready"), timeout=60, what="fine Ready")
    broken_now = c.status.get("broken")
    assert broken_now is None or broken_now.phase == "Applying"
    await eventually(phase("broken", "Failed"), timeout=60, what="the broken add-on Failed")
    assert "not healthy after 10s" in (c.status["broken"].last_error or "")
    st = c.status["later"]
    assert st.phase == "Pending" and "waiting for add-ons of lower order: broken" in st.message
    with pytest.raises(NotFound):
        await engine.kube.get(r.CONFIG_MAP, "later", "default")
    # Held (onFailure: Hold): the version stays applied, and its failure is told once.
    await asyncio.sleep(5 * c.resync)
    assert c.status["broken"].phase == "Failed"
    assert (await engine.kube.get(DEPLOYMENTS, "app", "addon-a"))["metadata"]["name"] == "app"


async def test_volumes_are_pruned_only_when_the_addon_says_so(engine: Engine) -> None:
    kube, c = engine.kube, engine.controller

    def objs(n: int) -> list[dict[str, Any]]:
        return [{"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                 "metadata": {"name": f"data-{n}", "namespace": "default"},
                 "spec": {"accessModes": ["ReadWriteOnce"],
                          "resources": {"requests": {"storage": "1Gi"}}}},
                {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": f"cfg-{n}", "namespace": "default"}}]

    engine.publish(1, addon("keeps", "1", objs(1)),
                   addon("drops", "1", objs(2), prune_volumes=True))

    def applied() -> bool:  # (no volume provisioner here: the claims stay Pending)
        return all(len(inv.entries) == 2 for inv in c.inventory.values()) and len(
            c.inventory) == 2
    await eventually(applied, timeout=60, what="both add-ons applied")
    engine.publish(2)  # both leave the profile

    async def removed() -> bool:
        return not c.inventory and not c.status
    await eventually(removed, timeout=60, what="both add-ons removed")

    async def gone(name: str) -> bool:
        try:
            pvc = await kube.get(PVCS, name, "default")
        except NotFound:
            return True
        return bool(pvc["metadata"].get("deletionTimestamp"))  # pvc-protection holds it

    for cfg in ("cfg-1", "cfg-2"):
        with pytest.raises(NotFound):
            await kube.get(r.CONFIG_MAP, cfg, "default")
    assert await gone("data-2")
    assert not await gone("data-1")  # the data outlives the add-on unless it said otherwise
