"""The resource types the agent touches, spelled out so no call needs API discovery.

Cluster API and its providers are pinned to v1beta2, the storage version of the vendored CRDs:
objects the agent builds follow that schema, so reading or writing them at another version
would silently go through conversion.
"""

from __future__ import annotations

from .types import Resource

CAPI = "cluster.x-k8s.io"
CONTROL_PLANE = "controlplane.cluster.x-k8s.io"
BOOTSTRAP = "bootstrap.cluster.x-k8s.io"
INFRASTRUCTURE = "infrastructure.cluster.x-k8s.io"
CAPI_VERSION = "v1beta2"

# Cluster API core
CLUSTER = Resource(CAPI, CAPI_VERSION, "clusters", "Cluster")
MACHINE_DEPLOYMENT = Resource(CAPI, CAPI_VERSION, "machinedeployments", "MachineDeployment")
MACHINE_SET = Resource(CAPI, CAPI_VERSION, "machinesets", "MachineSet")
MACHINE = Resource(CAPI, CAPI_VERSION, "machines", "Machine")

# Kubeadm control plane and bootstrap providers
KUBEADM_CONTROL_PLANE = Resource(CONTROL_PLANE, CAPI_VERSION, "kubeadmcontrolplanes",
                                 "KubeadmControlPlane")
KUBEADM_CONFIG_TEMPLATE = Resource(BOOTSTRAP, CAPI_VERSION, "kubeadmconfigtemplates",
                                   "KubeadmConfigTemplate")

# Infrastructure providers: the Cluster API development provider (CAPD) and vSphere
DEV_MACHINE_TEMPLATE = Resource(INFRASTRUCTURE, CAPI_VERSION, "devmachinetemplates",
                                "DevMachineTemplate")
DEV_CLUSTER = Resource(INFRASTRUCTURE, CAPI_VERSION, "devclusters", "DevCluster")
VSPHERE_MACHINE_TEMPLATE = Resource(INFRASTRUCTURE, CAPI_VERSION, "vspheremachinetemplates",
                                    "VSphereMachineTemplate")
VSPHERE_CLUSTER = Resource(INFRASTRUCTURE, CAPI_VERSION, "vsphereclusters", "VSphereCluster")

# Built-in types
SECRET = Resource("", "v1", "secrets", "Secret")
CONFIG_MAP = Resource("", "v1", "configmaps", "ConfigMap")
EVENT = Resource("", "v1", "events", "Event")
NAMESPACE = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
SERVICE_ACCOUNT = Resource("", "v1", "serviceaccounts", "ServiceAccount")
LEASE = Resource("coordination.k8s.io", "v1", "leases", "Lease")
DEPLOYMENT = Resource("apps", "v1", "deployments", "Deployment")
CRD = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions",
               "CustomResourceDefinition", namespaced=False)

ALL: tuple[Resource, ...] = (
    CLUSTER, MACHINE_DEPLOYMENT, MACHINE_SET, MACHINE, KUBEADM_CONTROL_PLANE,
    KUBEADM_CONFIG_TEMPLATE, DEV_MACHINE_TEMPLATE, DEV_CLUSTER, VSPHERE_MACHINE_TEMPLATE,
    VSPHERE_CLUSTER, SECRET, CONFIG_MAP, EVENT, NAMESPACE, SERVICE_ACCOUNT, LEASE, DEPLOYMENT,
    CRD,
)

_BY_KIND = {(r.api_version, r.kind): r for r in ALL}


def by_kind(api_version: str, kind: str) -> Resource | None:
    """The known resource an object (or a reference to one) names; exact version match only,
    because a v1beta1 object is not a v1beta2 one."""
    return _BY_KIND.get((api_version, kind))
