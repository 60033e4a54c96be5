"""The whole agent (intake, bundle fetch, add-on controller) keeps a site's add-ons while the
link to the management plane is down: drift repaired with NATS stopped, a restart with NATS
still down re-applying from the disk store, and no write loop against an autoscaler that owns a
Deployment's replicas or an injector that fills a webhook's caBundle. On both API backends: a
cluster as a pivot leaves it (no simulated CAPI: the add-ons are what is under test)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.js.api import KeyValueConfig

from agent.daemon import Agent
from agent.kube import ApiKubeClient, NotFound, Resource
from agent.kube import resources as r
from agent.reconcile.mapper import RestMapper
from agent.settings import Settings
from agent.spec import ClusterSpec, public_key_text, sign
from agent.spec.addons import Addon, Bundle, BundleRef, digest_of
from agent.spec.wire import BUNDLES_BUCKET, SPECS_BUCKET
from testbed.backends import KubeApi
from testbed.kubelet import Kubelet
from testbed.natsd import NatsServer
from testbed.site import CLUSTER, RunningAgent, make_spec, pivoted_objects
from tests.fixtures.nats import nats_server
from tests.fixtures.site import eventually, spec_dict

__all__ = ["nats_server"]
pytestmark = pytest.mark.both_backends

DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
WEBHOOKS = Resource("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations",
                    "ValidatingWebhookConfiguration", namespaced=False)
NS = "guard"
INJECTOR = "ca-injector"
HPA = "horizontal-pod-autoscaler"
CA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\ninjected\n").decode()


def objects() -> list[dict[str, Any]]:
    labels = {"app": "guard"}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "guard-config", "namespace": NS},
         "data": {"mode": "enforce"}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "guard", "namespace": NS},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "tolerations": [{"operator": "Exists"}],
                      "containers": [{"name": "guard", "image": "registry.example/guard:1"}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "guard", "namespace": NS},
         "spec": {"selector": labels, "ports": [{"port": 443, "targetPort": 8443}]}},
        {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
         "metadata": {"name": "guard", "namespace": NS},
         "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": "guard"},
                  "minReplicas": 1, "maxReplicas": 5}},
        # The caBundle is left empty for an injector to fill (cert-manager's cainjector, a
        # chart's certgen Job): the agent must leave it to that injector.
        {"apiVersion": "admissionregistration.k8s.io/v1",
         "kind": "ValidatingWebhookConfiguration", "metadata": {"name": "guard"},
         "webhooks": [{"name": "guard.example.com", "admissionReviewVersions": ["v1"],
                       "sideEffects": "None", "failurePolicy": "Ignore",
                       "clientConfig": {"caBundle": "",
                                        "service": {"name": "guard", "namespace": NS}},
                       "rules": [{"apiGroups": ["example.com"], "apiVersions": ["v1"],
                                  "operations": ["CREATE"], "resources": ["gadgets"]}]}]},
    ]


class Site:
    """A pivoted workload cluster on either backend, a real NATS server, the gateway's key,
    and whole agents run in-process against them (with a stand-in kubelet running pods)."""

    def __init__(self, api: KubeApi, kubeconfig: Path, nats_server: NatsServer,
                 root: Path) -> None:
        self.api, self.kubeconfig, self.nats, self.root = api, kubeconfig, nats_server, root
        self.key = Ed25519PrivateKey.generate()
        self.agents: list[RunningAgent] = []

    async def start_agent(self) -> RunningAgent:
        kube = await ApiKubeClient.from_kubeconfig(self.kubeconfig)
        agent = Agent(Settings(
            cluster_name=CLUSTER, nats_servers=[self.nats.url],
            public_keys=[public_key_text(self.key.public_key())],
            state_dir=self.root / "state", kubeconfig=self.kubeconfig, identity="agent-a",
            agent_namespace="outpost-system", resync_seconds=0.3,
            status_interval_seconds=0.5, lease_duration_seconds=2.0, http_host="127.0.0.1",
            http_port=0, shutdown_grace_seconds=5.0, retry_max_seconds=0.5), kube)
        stop = asyncio.Event()
        running = RunningAgent(agent, asyncio.create_task(agent.run(stop)), stop, kube)
        self.agents.append(running)
        return running

    async def nats_client(self) -> nats.aio.client.Client:
        return await nats.connect(self.nats.url, max_reconnect_attempts=1)

    async def publish(self, raw: bytes) -> None:
        nc = await self.nats_client()
        try:
            kv = await nc.jetstream().create_key_value(KeyValueConfig(
                bucket=SPECS_BUCKET, history=10, direct=True))
            await kv.put(CLUSTER, raw)
        finally:
            await nc.close()


@pytest_asyncio.fixture
async def site(capi_api: KubeApi, kubeconfig: Path, nats_server: NatsServer,
               tmp_path: Path) -> AsyncIterator[Site]:
    kube = await ApiKubeClient.from_kubeconfig(kubeconfig)
    try:
        mapper = RestMapper(kube)
        for obj in pivoted_objects(make_spec()):
            await kube.apply(await mapper.resource(obj), obj, field_manager="outpost-pivot")
    finally:
        await kube.close()
    kubelet = Kubelet(capi_api, tmp_path / "kubelet")
    await kubelet.start()
    s = Site(capi_api, kubeconfig, nats_server, tmp_path)
    try:
        yield s
    finally:
        for running in s.agents:
            if not running.task.done():
                await running.kill()
        await kubelet.stop()


async def publish_profile(site: Site) -> Addon:
    """What the gateway does: the bundle into the Object Store, then the signed spec naming
    it."""
    bundle = Bundle(name="guard", version="1", objects=tuple(objects()))
    data = bundle.encode()
    addon = Addon(name="guard", version="1", namespace=NS, bundle=BundleRef(
        digest=digest_of(data), size=len(data), objects=len(bundle.objects)))
    nc = await site.nats_client()
    try:
        js = nc.jetstream()
        store = await js.create_object_store(BUNDLES_BUCKET)
        await store.put(addon.bundle.digest, data)
    finally:
        await nc.close()
    spec = ClusterSpec.model_validate(spec_dict(revision=1, profile={
        "name": "base", "version": "1",
        "addons": [addon.model_dump(by_alias=True, mode="json")]}))
    await site.publish(sign(spec, site.key))
    return addon


async def test_addons_kept_offline_across_restarts_without_write_loops(site: Site) -> None:
    addon = await publish_profile(site)
    running = await site.start_agent()
    kube = await ApiKubeClient.from_kubeconfig(site.kubeconfig)
    try:
        def ready(controller: Any = None) -> bool:
            st = (controller or running.agent.addons).status.get("guard")
            return st is not None and st.phase == "Ready"

        await eventually(ready, timeout=60, what="the add-on Ready")
        assert running.agent.bundles.has(addon.bundle.digest)
        before = await settled(running.agent.addons)

        # An injector fills the caBundle, the autoscaler scales the Deployment: both are
        # theirs, and the agent leaves them be.
        await inject_ca(kube)
        await kube.patch(DEPLOYMENTS, "guard", {"spec": {"replicas": 3}}, NS,
                         field_manager=HPA)
        await zero_writes_per_resync(running.agent.addons, before, resyncs=5)
        await kept(kube)

        # The link goes down; someone on site edits the Deployment's image and deletes the
        # ConfigMap: both restored from what the agent holds.
        await site.nats.stop()
        await eventually(lambda: not running.agent.intake.watcher.connected,
                         what="NATS seen down")
        await kube.patch(DEPLOYMENTS, "guard", {"spec": {"template": {"spec": {"containers": [
            {"name": "guard", "image": "registry.example/guard:evil"}]}}}}, NS,
            field_manager="kubectl-edit")
        await kube.delete(r.CONFIG_MAP, "guard-config", NS)

        async def repaired() -> bool:
            try:
                await kube.get(r.CONFIG_MAP, "guard-config", NS)
            except NotFound:
                return False
            d = await kube.get(DEPLOYMENTS, "guard", NS)
            return bool(d["spec"]["template"]["spec"]["containers"][0]["image"]
                        == "registry.example/guard:1")

        await eventually(repaired, timeout=30, what="the edit and the deletion repaired offline")
        await kept(kube)

        # The agent restarts with NATS still down, after the site lost more: it re-applies
        # from its disk store (the spec cache and the bundle), fetching nothing.
        assert await running.shutdown() == 0
        await kube.delete(r.CONFIG_MAP, "guard-config", NS)
        await kube.delete(WEBHOOKS, "guard")
        again = await site.start_agent()
        await eventually(lambda: again.agent.intake.desired is not None,
                         what="the cached spec loaded")
        await eventually(repaired, timeout=30, what="the ConfigMap restored after the restart")
        await eventually(lambda: exists(kube, WEBHOOKS, "guard"), timeout=30,
                         what="the webhook configuration restored after the restart")
        await eventually(lambda: ready(again.agent.addons), timeout=30,
                         what="the add-on Ready again")
        assert not again.agent.intake.watcher.connected
        assert again.agent.addons.fetcher is not None
        assert again.agent.addons.fetcher.fetched_bytes == 0
        # The re-created webhook is the injector's to fill again: the agent does not write it
        # nor fight it.
        before = await settled(again.agent.addons)
        await inject_ca(kube)
        await zero_writes_per_resync(again.agent.addons, before, resyncs=5)
        await kept(kube)
    finally:
        await kube.close()


async def inject_ca(kube: ApiKubeClient) -> None:
    """What cert-manager's cainjector does: fill the webhook's caBundle as its own manager."""
    await kube.apply(WEBHOOKS, {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration", "metadata": {"name": "guard"},
        "webhooks": [{"name": "guard.example.com", "clientConfig": {"caBundle": CA}}]},
        field_manager=INJECTOR)


async def exists(kube: ApiKubeClient, res: Resource, name: str) -> bool:
    try:
        await kube.get(res, name)
        return True
    except NotFound:
        return False


async def settled(controller: Any) -> int:
    """The controller's write count once its queue is idle (the last repair done)."""
    await eventually(lambda: controller.queue.depth == 0, timeout=30, what="an idle queue")
    return int(controller.writes)


async def zero_writes_per_resync(controller: Any, before: int, resyncs: int) -> None:
    """`resyncs` more full passes (each re-reading every object) write nothing since
    `before`."""
    await asyncio.sleep(resyncs * controller.resync)
    await eventually(lambda: controller.queue.depth == 0, timeout=30, what="an idle queue")
    assert controller.writes == before, (
        f"a converged add-on was written to {controller.writes - before} times")


async def kept(kube: ApiKubeClient) -> None:
    hook = await kube.get(WEBHOOKS, "guard")
    assert hook["webhooks"][0]["clientConfig"].get("caBundle") == CA
    d = await kube.get(DEPLOYMENTS, "guard", NS)
    assert d["spec"]["replicas"] == 3
