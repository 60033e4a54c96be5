"""Read the slice of the cluster a topology pass needs (level-triggered: every pass re-reads)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

from agent.kube import resources as r
from agent.kube.errors import NotFound
from agent.kube.types import KubeClient, Obj, Resource
from agent.plan import Action, Observed
from agent.runtime.informer import Informer
from agent.spec import ClusterSpec, capi


def _by_name(items: list[Obj]) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in items}


class Caches:
    """The informers a topology pass reads from, for one cluster namespace and provider."""

    def __init__(self, kube: KubeClient, spec: ClusterSpec,
                 on_change: Callable[[str], None], *, watch_timeout: int = 300) -> None:
        ns = spec.namespace
        by_cluster = f"{capi.CAPI_CLUSTER_LABEL}={spec.cluster_name}"
        ours = f"{capi.LABEL_CLUSTER}={spec.cluster_name}"
        self.key = (ns, spec.infrastructure.provider)
        def informer(res: Resource, selector: str | None = None) -> Informer:
            return Informer(kube, res, ns, label_selector=selector, on_change=on_change,
                            watch_timeout=watch_timeout)

        self.cluster = informer(r.CLUSTER)
        self.kcp = informer(r.KUBEADM_CONTROL_PLANE)
        self.mds = informer(r.MACHINE_DEPLOYMENT, by_cluster)
        self.mss = informer(r.MACHINE_SET, by_cluster)
        self.infra = informer(_infra_resource(spec), ours)
        self.boot = informer(r.KUBEADM_CONFIG_TEMPLATE, ours)
        self.machines = informer(r.MACHINE, by_cluster)
        self.all = (self.cluster, self.kcp, self.mds, self.mss, self.infra, self.boot,
                    self.machines)
        self.by_kind = {i.res.kind: i for i in self.all}

    def write_through(self, action: Action, result: Obj | None) -> None:
        informer = self.by_kind.get(action.kind)
        if informer is None:
            return
        if result is None:
            informer.forget(action.name)
        else:
            informer.store(result)

    def stalled(self) -> list[str]:
        """Informers whose watch has shown no sign of life for two watch periods."""
        return [i.res.plural for i in self.all if i.stalled(2.0 * i.watch_timeout + 30.0)]

    @property
    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self.all)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for informer in self.all:
                tg.create_task(informer.run(), name=f"informer-{informer.res.plural}")

    def observe(self, spec: ClusterSpec, now: datetime | None = None) -> Observed:
        cluster = self.cluster.get(spec.cluster_name) or {}
        ref = (cluster.get("spec") or {}).get("controlPlaneRef") or {}
        return Observed(
            now=now or datetime.now(UTC),
            kcp=self.kcp.get(ref.get("name") or capi.kcp_name(spec)),
            machine_deployments=dict(self.mds.items),
            machine_sets=tuple(self.mss.items.values()),
            infra_templates=dict(self.infra.items),
            bootstrap_templates=dict(self.boot.items),
            machines=tuple(self.machines.items.values()),
        )


def _infra_resource(spec: ClusterSpec) -> Resource:
    return (r.VSPHERE_MACHINE_TEMPLATE if spec.infrastructure.provider == "vsphere"
            else r.DEV_MACHINE_TEMPLATE)


async def observe(kube: KubeClient, spec: ClusterSpec, now: datetime | None = None) -> Observed:
    """Straight from the API: used until the informers have synced."""
    ns = spec.namespace
    kcp_name = capi.kcp_name(spec)
    try:
        cluster = await kube.get(r.CLUSTER, spec.cluster_name, ns)
        ref = (cluster.get("spec") or {}).get("controlPlaneRef") or {}
        kcp_name = ref.get("name") or kcp_name
    except NotFound:
        pass
    try:
        kcp: Obj | None = await kube.get(r.KUBEADM_CONTROL_PLANE, kcp_name, ns)
    except NotFound:
        kcp = None
    by_cluster = f"{capi.CAPI_CLUSTER_LABEL}={spec.cluster_name}"
    ours = f"{capi.LABEL_CLUSTER}={spec.cluster_name}"
    infra_res = _infra_resource(spec)
    mds = await kube.list(r.MACHINE_DEPLOYMENT, ns, label_selector=by_cluster)
    mss = await kube.list(r.MACHINE_SET, ns, label_selector=by_cluster)
    infra = await kube.list(infra_res, ns, label_selector=ours)
    boot = await kube.list(r.KUBEADM_CONFIG_TEMPLATE, ns, label_selector=ours)
    machines = await kube.list(r.MACHINE, ns, label_selector=by_cluster)
    return Observed(
        now=now or datetime.now(UTC),
        kcp=kcp,
        machine_deployments=_by_name(mds.items),
        machine_sets=tuple(mss.items),
        infra_templates=_by_name(infra.items),
        bootstrap_templates=_by_name(boot.items),
        machines=tuple(machines.items),
    )
