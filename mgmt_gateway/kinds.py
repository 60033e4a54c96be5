"""Resources the gateway writes, by apiVersion and kind (no discovery round trip needed)."""

from __future__ import annotations

from agent.kube import Resource
from agent.kube import resources as r

_EXTRA = (
    Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    Resource("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding",
             namespaced=False),
    Resource("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    Resource("", "v1", "services", "Service"),
    Resource("infrastructure.cluster.x-k8s.io", "v1beta2", "vsphereclusteridentities",
             "VSphereClusterIdentity", namespaced=False),
)
_TABLE = {(res.api_version, res.kind): res for res in (*r.ALL, *_EXTRA)}


class UnknownKind(ValueError):
    pass


def resource_of(obj: dict[str, object]) -> Resource:
    key = (str(obj.get("apiVersion")), str(obj.get("kind")))
    res = _TABLE.get(key)
    if res is None:
        raise UnknownKind(f"the gateway does not know how to write {key[1]} ({key[0]}); "
                          "add it to mgmt_gateway/kinds.py")
    return res
