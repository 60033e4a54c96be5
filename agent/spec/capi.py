"""How a ClusterSpec maps onto Cluster API objects: names, labels and template contents.

The gateway renders the first objects and the agent reconciles them afterwards; both use these
functions, so the agent's first pass after a pivot finds exactly what it would have rendered and
changes nothing (no gratuitous rollout). Machine templates are immutable by CAPI contract, so their
names carry a hash of their content: a changed template is a new object, never an edit.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .models import ClusterSpec, DevMachine, VSphereInfrastructure, VSphereMachine, WorkerPool

Obj = dict[str, Any]

CAPI_GROUP = "cluster.x-k8s.io"
CP_GROUP = "controlplane.cluster.x-k8s.io"
BOOTSTRAP_GROUP = "bootstrap.cluster.x-k8s.io"
INFRA_GROUP = "infrastructure.cluster.x-k8s.io"
V = "v1beta2"

LABEL_CLUSTER = "outpost.io/cluster"
LABEL_POOL = "outpost.io/pool"
LABEL_ROLE = "outpost.io/role"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "outpost"
CAPI_CLUSTER_LABEL = "cluster.x-k8s.io/cluster-name"
SSH_USER = "outpost"
ROLE_CONTROL_PLANE = "control-plane"
ROLE_WORKER = "worker"


def content_hash(obj: Any) -> str:
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()[:10]


def labels(spec: ClusterSpec, role: str, pool: str | None = None) -> dict[str, str]:
    out = {LABEL_CLUSTER: spec.cluster_name, LABEL_ROLE: role, LABEL_MANAGED_BY: MANAGED_BY,
           CAPI_CLUSTER_LABEL: spec.cluster_name}
    if pool is not None:
        out[LABEL_POOL] = pool
    return out


def infra_kind(spec: ClusterSpec) -> str:
    return "VSphereMachineTemplate" if spec.infrastructure.provider == "vsphere" \
        else "DevMachineTemplate"


def infra_cluster_kind(spec: ClusterSpec) -> str:
    return "VSphereCluster" if spec.infrastructure.provider == "vsphere" else "DevCluster"


def kcp_name(spec: ClusterSpec) -> str:
    return f"{spec.cluster_name}-control-plane"


def md_name(spec: ClusterSpec, pool: WorkerPool | str) -> str:
    name = pool if isinstance(pool, str) else pool.name
    return f"{spec.cluster_name}-{name}"


def _machine_spec(spec: ClusterSpec, machine: VSphereMachine | DevMachine) -> Obj:
    infra = spec.infrastructure
    if isinstance(machine, VSphereMachine) and isinstance(infra, VSphereInfrastructure):
        out: Obj = {
            "template": machine.template,
            "numCPUs": machine.num_cpus,
            "memoryMiB": machine.memory_mib,
            "diskGiB": machine.disk_gib,
            "server": infra.server,
            "datacenter": infra.datacenter,
            "datastore": infra.datastore,
            "network": {"devices": [{"networkName": infra.network, "dhcp4": True}]},
        }
        for key, value in (("folder", infra.folder), ("resourcePool", infra.resource_pool),
                           ("thumbprint", infra.thumbprint)):
            if value:
                out[key] = value
        return out
    docker: Obj = {"customImage": machine.image} if isinstance(machine, DevMachine) \
        and machine.image else {}
    return {"backend": {"docker": docker}}


def machine_template(spec: ClusterSpec, role: str, pool: WorkerPool | None = None) -> Obj:
    """The provider machine template for the control plane or a pool, content-addressed."""
    machine = pool.machine if pool is not None else spec.control_plane.machine
    body = {"template": {"spec": _machine_spec(spec, machine)}}
    stem = md_name(spec, pool) if pool is not None else f"{spec.cluster_name}-cp"
    return {
        "apiVersion": f"{INFRA_GROUP}/{V}",
        "kind": infra_kind(spec),
        "metadata": {"name": f"{stem}-{content_hash(body)}", "namespace": spec.namespace,
                     "labels": labels(spec, role, pool.name if pool else None)},
        "spec": body,
    }


def ssh_users(spec: ClusterSpec) -> list[Obj]:
    """Cloud-init users carrying the SSH keys: the only way keys reach machines."""
    if not spec.ssh_authorized_keys:
        return []
    return [{"name": SSH_USER, "sshAuthorizedKeys": list(spec.ssh_authorized_keys),
             "sudo": "ALL=(ALL) NOPASSWD:ALL"}]


def bootstrap_template(spec: ClusterSpec, pool: WorkerPool) -> Obj:
    """The KubeadmConfigTemplate of a worker pool, content-addressed like machine templates."""
    kubelet_args = [{"name": "node-labels", "value": f"{LABEL_POOL}={pool.name}"}]
    if spec.infrastructure.provider == "vsphere":
        # The vSphere cloud provider sets providerIDs, which CAPI matches nodes to machines by.
        kubelet_args.insert(0, {"name": "cloud-provider", "value": "external"})
    template_spec: Obj = {"joinConfiguration": {"nodeRegistration": {
        "kubeletExtraArgs": kubelet_args}}}
    users = ssh_users(spec)
    if users:
        template_spec["users"] = users
    body = {"template": {"spec": template_spec}}
    return {
        "apiVersion": f"{BOOTSTRAP_GROUP}/{V}",
        "kind": "KubeadmConfigTemplate",
        "metadata": {"name": f"{md_name(spec, pool)}-{content_hash(body)}",
                     "namespace": spec.namespace,
                     "labels": labels(spec, ROLE_WORKER, pool.name)},
        "spec": body,
    }


def infra_ref(spec: ClusterSpec, name: str) -> Obj:
    return {"apiGroup": INFRA_GROUP, "kind": infra_kind(spec), "name": name}


def machine_deployment(spec: ClusterSpec, pool: WorkerPool, version: str, infra_name: str,
                       bootstrap_name: str) -> Obj:
    """A complete MachineDeployment for a pool (what a create needs)."""
    selector = {CAPI_CLUSTER_LABEL: spec.cluster_name, LABEL_POOL: pool.name}
    md: Obj = {
        "apiVersion": f"{CAPI_GROUP}/{V}",
        "kind": "MachineDeployment",
        "metadata": {"name": md_name(spec, pool), "namespace": spec.namespace,
                     "labels": labels(spec, ROLE_WORKER, pool.name)},
        "spec": {
            "clusterName": spec.cluster_name,
            "replicas": pool.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": dict(selector)},
                "spec": {
                    "clusterName": spec.cluster_name,
                    "version": version,
                    "bootstrap": {"configRef": {"apiGroup": BOOTSTRAP_GROUP,
                                                "kind": "KubeadmConfigTemplate",
                                                "name": bootstrap_name}},
                    "infrastructureRef": infra_ref(spec, infra_name),
                },
            },
        },
    }
    rolling = {k: v for k, v in (("maxSurge", pool.rollout.max_surge),
                                 ("maxUnavailable", pool.rollout.max_unavailable))
               if v is not None} if pool.rollout else {}
    if rolling:
        md["spec"]["rollout"] = {"strategy": {"type": "RollingUpdate",
                                              "rollingUpdate": rolling}}
    return md


def control_plane_fields(spec: ClusterSpec, version: str, infra_name: str) -> Obj:
    """The KubeadmControlPlane fields Outpost owns, as a server-side apply configuration."""
    kcp_spec: Obj = {
        "replicas": spec.control_plane.replicas,
        "version": version,
        "machineTemplate": {"spec": {"infrastructureRef": infra_ref(spec, infra_name)}},
        "rollout": {"before": {"certificatesExpiryDays": spec.certificates.rotate_before_days}},
    }
    if spec.certificates.rotate_after is not None:
        kcp_spec["rollout"]["after"] = spec.certificates.rotate_after.strftime(
            "%Y-%m-%dT%H:%M:%SZ")
    users = ssh_users(spec)
    if users:
        kcp_spec["kubeadmConfigSpec"] = {"users": users}
    return {
        "apiVersion": f"{CP_GROUP}/{V}",
        "kind": "KubeadmControlPlane",
        "metadata": {"name": kcp_name(spec), "namespace": spec.namespace},
        "spec": kcp_spec,
    }
