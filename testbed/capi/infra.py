"""The infrastructure provider: DevCluster/DevMachine and VSphereCluster/VSphereMachine.

It plays the provider side of the v1beta2 InfraCluster and InfraMachine contracts: an infra
cluster reports `status.initialization.provisioned` (and gets a control plane endpoint when it
has none); an infra machine waits for its Machine's bootstrap data and the cluster
infrastructure, takes `step_delay + provision_delay` to "boot", then reports a providerID,
addresses and `status.initialization.provisioned`.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any
from urllib.parse import urlsplit

from .api import Api
from .conditions import condition
from .runtime import Context, Reconciler
from .util import INFRA_GROUP, Obj, deleting, dig, meta, owner_of_kind

INFRA_CLUSTERS = ((INFRA_GROUP, "devclusters"), (INFRA_GROUP, "vsphereclusters"))
INFRA_MACHINES = ((INFRA_GROUP, "devmachines"), (INFRA_GROUP, "vspheremachines"))


def endpoint_for(ctx: Context, ns: str, cluster: str) -> tuple[str, int]:
    """Where a cluster's API is reached: the workload server if there is one, else a
    placeholder name that never resolves."""
    workload = ctx.workload_api(ns, cluster)
    if workload is not None:
        parts = urlsplit(workload.url)
        if parts.hostname:
            return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    return f"{cluster}.{ns}.cluster.invalid", 6443


def _report_provisioned(api: Api, obj: Obj, **status: Any) -> None:
    """The status both contracts ask for once the infrastructure is up."""
    api.set_conditions(obj, [condition("Ready", True, "Ready"),
                             condition("Paused", False, "NotPaused")],
                       initialization={"provisioned": True}, **status)


class InfraClusterReconciler(Reconciler):
    kinds = INFRA_CLUSTERS

    def reconcile(self, obj: Obj) -> float | None:
        if deleting(obj):
            return None
        cluster = self.api.cluster_of(obj)
        if cluster is None:
            return None  # a provider waits for the Cluster that uses this object
        if dig(obj, "status", "initialization", "provisioned") is not True:
            left = self.remaining(obj, "provision", self.ctx.config.provision_delay)
            if left > 0:
                return left
        if not dig(obj, "spec", "controlPlaneEndpoint", "host") and \
                owner_of_kind(obj, "Cluster") is not None:
            host, port = endpoint_for(self.ctx, meta(obj).get("namespace", ""),
                                      meta(cluster)["name"])
            updated = self.api.update_spec(obj, controlPlaneEndpoint={"host": host, "port": port})
            if updated is None:
                return self.ctx.config.step_delay
            obj = updated
        _report_provisioned(self.api, obj)
        return None


def _address(uid: str) -> str:
    d = hashlib.sha256(uid.encode()).digest()
    return f"10.{d[0]}.{d[1]}.{d[2] % 250 + 2}"


def provider_id(obj: Obj) -> str:
    """The providerID a real provider would report, shaped per provider."""
    name = meta(obj)["name"]
    if obj.get("kind") == "VSphereMachine":
        return f"vsphere://{uuid.uuid5(uuid.NAMESPACE_URL, meta(obj)['uid'])}"
    if dig(obj, "spec", "backend", "docker") is not None:
        return f"docker:////{name}"
    return f"in-memory://{name}"


class InfraMachineReconciler(Reconciler):
    kinds = INFRA_MACHINES

    def reconcile(self, obj: Obj) -> float | None:
        if deleting(obj):
            return None
        machine = self.api.machine_of(obj)  # waits for its Machine to own it
        if machine is None:
            return None
        if dig(obj, "status", "initialization", "provisioned") is not True:
            cluster = self.api.cluster_of(machine)
            if cluster is None or dig(cluster, "status", "initialization",
                                      "infrastructureProvisioned") is not True:
                return None  # WaitingForClusterInfrastructureReady
            if not dig(machine, "spec", "bootstrap", "dataSecretName"):
                return None  # WaitingForBootstrapData
            cfg = self.ctx.config
            left = self.remaining(obj, "provision", cfg.step_delay + cfg.provision_delay)
            if left > 0:
                return left
        if not dig(obj, "spec", "providerID"):
            updated = self.api.update_spec(obj, providerID=provider_id(obj))
            if updated is None:
                return self.ctx.config.step_delay
            obj = updated
        status: Obj = {"addresses": [{"type": "InternalIP", "address": _address(meta(obj)["uid"])},
                                     {"type": "Hostname", "address": meta(obj)["name"]}]}
        if obj.get("kind") == "DevMachine" and dig(machine, "spec", "failureDomain"):
            status["failureDomain"] = machine["spec"]["failureDomain"]
        _report_provisioned(self.api, obj, **status)
        return None
