"""Read the slice of the cluster a topology pass needs (level-triggered: every pass re-reads)."""

from __future__ import annotations

from datetime import UTC, datetime

from agent.kube import resources as r
from agent.kube.errors import NotFound
from agent.kube.types import KubeClient, Obj
from agent.plan import Observed
from agent.spec import ClusterSpec, capi


def _by_name(items: list[Obj]) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in items}


async def observe(kube: KubeClient, spec: ClusterSpec, now: datetime | None = None) -> Observed:
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
    infra_res = (r.VSPHERE_MACHINE_TEMPLATE if spec.infrastructure.provider == "vsphere"
                 else r.DEV_MACHINE_TEMPLATE)
    mds = await kube.list(r.MACHINE_DEPLOYMENT, ns, label_selector=by_cluster)
    mss = await kube.list(r.MACHINE_SET, ns, label_selector=by_cluster)
    infra = await kube.list(infra_res, ns, label_selector=ours)
    boot = await kube.list(r.KUBEADM_CONFIG_TEMPLATE, ns, label_selector=ours)
    return Observed(
        now=now or datetime.now(UTC),
        kcp=kcp,
        machine_deployments=_by_name(mds.items),
        machine_sets=tuple(mss.items),
        infra_templates=_by_name(infra.items),
        bootstrap_templates=_by_name(boot.items),
    )
