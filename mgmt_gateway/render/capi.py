"""The Cluster API objects the gateway creates in the management cluster for a new cluster.

Only what the first control-plane node needs: the Cluster, its infrastructure cluster, the
control-plane machine template and a one-replica KubeadmControlPlane. Worker pools and further
control-plane replicas are the agent's, after the pivot. Names, labels, machine templates and the
fields the agent owns on the KubeadmControlPlane all come from `agent.spec.capi`, so the agent's
first pass finds exactly what it would render itself and changes nothing but the replica count.

Credentials are never rendered: a VSphereCluster names its VSphereClusterIdentity, and SSH keys
travel only as cloud-init users (`capi.ssh_users`, inside `control_plane_fields`).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import yaml

from agent.spec import ClusterSpec, DevInfrastructure, VSphereInfrastructure, capi, version_tuple

Obj = dict[str, Any]

# Cluster networking is not part of ClusterSpec: every Outpost cluster gets kubeadm's service
# range and a pod range apart from it. Sites whose LAN overlaps must be handled before this grows
# into a spec field.
POD_CIDR = "192.168.0.0/16"
SERVICE_CIDR = "10.96.0.0/12"
SERVICE_DOMAIN = "cluster.local"
API_SERVER_PORT = 6443

# Labels value for the objects that describe the whole cluster rather than a role inside it.
ROLE_CLUSTER = "cluster"

# kube-vip holds the control-plane virtual IP on vSphere, as a static pod on every control-plane
# node: the endpoint must answer before any workload (or load balancer add-on) can run.
KUBE_VIP_IMAGE = "ghcr.io/kube-vip/kube-vip:v0.9.2"
KUBE_VIP_MANIFEST = "/etc/kubernetes/manifests/kube-vip.yaml"
KUBE_VIP_PREPARE = "/etc/outpost/kube-vip-prepare.sh"


def render_cluster(spec: ClusterSpec) -> list[Obj]:
    """The objects to create, in creation order: Cluster, infrastructure cluster, control-plane
    machine template, KubeadmControlPlane."""
    template = capi.machine_template(spec, capi.ROLE_CONTROL_PLANE)
    return [cluster(spec), infra_cluster(spec), template,
            control_plane(spec, template["metadata"]["name"])]


def _meta(spec: ClusterSpec, name: str, role: str) -> Obj:
    return {"name": name, "namespace": spec.namespace, "labels": capi.labels(spec, role)}


def cluster(spec: ClusterSpec) -> Obj:
    return {
        "apiVersion": f"{capi.CAPI_GROUP}/{capi.V}",
        "kind": "Cluster",
        "metadata": _meta(spec, spec.cluster_name, ROLE_CLUSTER),
        "spec": {
            "clusterNetwork": {
                "pods": {"cidrBlocks": [POD_CIDR]},
                "services": {"cidrBlocks": [SERVICE_CIDR]},
                "serviceDomain": SERVICE_DOMAIN,
            },
            "controlPlaneRef": {"apiGroup": capi.CP_GROUP, "kind": "KubeadmControlPlane",
                                "name": capi.kcp_name(spec)},
            "infrastructureRef": {"apiGroup": capi.INFRA_GROUP,
                                  "kind": capi.infra_cluster_kind(spec),
                                  "name": spec.cluster_name},
        },
    }


def infra_cluster(spec: ClusterSpec) -> Obj:
    infra = spec.infrastructure
    body: Obj
    if isinstance(infra, VSphereInfrastructure):
        body = {"server": infra.server,
                # Credentials stay with the operator: the identity points at their Secret.
                "identityRef": {"kind": "VSphereClusterIdentity", "name": infra.identity_name},
                "controlPlaneEndpoint": {"host": infra.control_plane_endpoint,
                                         "port": API_SERVER_PORT}}
        if infra.thumbprint:
            body["thumbprint"] = infra.thumbprint
    else:
        assert isinstance(infra, DevInfrastructure)
        # The endpoint is the provider's load balancer container: left for it to fill in.
        body = {"backend": {"docker": {}}}
    return {
        "apiVersion": f"{capi.INFRA_GROUP}/{capi.V}",
        "kind": capi.infra_cluster_kind(spec),
        "metadata": _meta(spec, spec.cluster_name, ROLE_CLUSTER),
        "spec": body,
    }


def control_plane(spec: ClusterSpec, template_name: str) -> Obj:
    """The KubeadmControlPlane at one replica: the agent's fields as it renders them, plus the
    kubeadm configuration only the gateway writes (the agent never touches it)."""
    kcp = capi.control_plane_fields(spec, spec.kubernetes_version, template_name)
    kcp["metadata"] = _meta(spec, capi.kcp_name(spec), capi.ROLE_CONTROL_PLANE)
    kcp["spec"]["replicas"] = 1  # the first node; the agent scales to the spec after the pivot
    kcp["spec"]["kubeadmConfigSpec"] = {**_kubeadm_config(spec),
                                        **kcp["spec"].get("kubeadmConfigSpec", {})}
    return kcp


def _kubeadm_config(spec: ClusterSpec) -> Obj:
    infra = spec.infrastructure
    if isinstance(infra, VSphereInfrastructure):
        # The vSphere cloud provider (CPI) sets each node's providerID, which CAPI matches to
        # its Machine; `{{ local_hostname }}` is cloud-init's name of the VM.
        registration: Obj = {"name": "{{ local_hostname }}", "kubeletExtraArgs": [
            {"name": "cloud-provider", "value": "external"}]}
        config: Obj = {
            "clusterConfiguration": {"controllerManager": {"extraArgs": [
                {"name": "cloud-provider", "value": "external"}]}},
            "initConfiguration": {"nodeRegistration": registration},
            "joinConfiguration": {"nodeRegistration": registration},
        }
        if _is_ip(infra.control_plane_endpoint):
            config.update(_kube_vip(infra.control_plane_endpoint, spec.kubernetes_version))
        return config
    # Docker nodes share the host's disk: kubelet must not evict on its (host-wide) usage.
    eviction = {"kubeletExtraArgs": [{"name": "eviction-hard", "value":
                                      "nodefs.available<0%,nodefs.inodesFree<0%,"
                                      "imagefs.available<0%"}]}
    return {
        # Reached through a port mapped on the host, so the host's names must be in the cert.
        "clusterConfiguration": {"apiServer": {"certSANs": [
            "localhost", "127.0.0.1", "0.0.0.0", "host.docker.internal"]}},
        "initConfiguration": {"nodeRegistration": eviction},
        "joinConfiguration": {"nodeRegistration": eviction},
    }


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _kube_vip(address: str, version: str) -> Obj:
    """A kube-vip static pod holding `address` on the elected control-plane node.

    From Kubernetes 1.29 the first node's admin.conf is only authorised once the API server
    it is starting answers, which needs the VIP kube-vip has not announced yet; a script then
    lends kube-vip super-admin.conf for `kubeadm init` only (joining nodes have no such file)."""
    env = {"address": address, "port": str(API_SERVER_PORT), "cp_enable": "true",
           "vip_arp": "true", "vip_leaderelection": "true", "vip_leaseduration": "15",
           "vip_renewdeadline": "10", "vip_retryperiod": "2"}
    pod_spec = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "kube-vip", "namespace": "kube-system"},
        "spec": {
            "hostNetwork": True,
            "hostAliases": [{"hostnames": ["kubernetes"], "ip": "127.0.0.1"}],
            "containers": [{
                "name": "kube-vip", "image": KUBE_VIP_IMAGE, "args": ["manager"],
                "env": [{"name": k, "value": v} for k, v in env.items()],
                "securityContext": {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}},
                "volumeMounts": [{"name": "kubeconfig",
                                  "mountPath": "/etc/kubernetes/admin.conf"}],
            }],
            "volumes": [{"name": "kubeconfig", "hostPath": {
                "path": "/etc/kubernetes/admin.conf", "type": "FileOrCreate"}}],
        },
    }
    manifest = yaml.safe_dump(pod_spec, sort_keys=False, default_flow_style=False)
    script = f"""#!/bin/sh
# $1: setup (before kubeadm) or cleanup (after). Only `kubeadm init` needs the swap.
set -e
if [ -f /run/kubeadm/kubeadm-join-config.yaml ]; then exit 0; fi
case "$1" in
  setup) from=admin.conf; to=super-admin.conf ;;
  cleanup) from=super-admin.conf; to=admin.conf ;;
  *) echo "usage: $0 setup|cleanup" >&2; exit 2 ;;
esac
sed -i "s#path: /etc/kubernetes/$from#path: /etc/kubernetes/$to#" {KUBE_VIP_MANIFEST}
"""
    pod = {"path": KUBE_VIP_MANIFEST, "owner": "root:root", "permissions": "0644",
           "content": manifest}
    if version_tuple(version) < (1, 29, 0):
        return {"files": [pod]}
    return {
        "files": [pod, {"path": KUBE_VIP_PREPARE, "owner": "root:root", "permissions": "0700",
                        "content": script}],
        "preKubeadmCommands": [f"{KUBE_VIP_PREPARE} setup"],
        "postKubeadmCommands": [f"{KUBE_VIP_PREPARE} cleanup"],
    }
