"""Machines: how owners create them, and the Machine controller's life cycle.

An owner (KubeadmControlPlane, MachineSet) creates a Machine together with its infra machine,
cloned from an infra template, and its KubeadmConfig; both are controlled by the Machine and
share its name, as in current Cluster API. The Machine controller then mirrors what the
providers report: Pending (no bootstrap data) -> Provisioning (infra booting) -> Provisioned
(infra up, no Node yet) -> Running (a Node joined, one `step_delay` later). Deleting a Machine
deletes its infra machine and KubeadmConfig first, then drops the finalizer.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import random
import string
from dataclasses import dataclass, field
from typing import Any

from .api import MACHINES
from .runtime import Context
from .util import (
    BOOTSTRAP_GROUP,
    CLONED_FROM_GROUPKIND,
    CLONED_FROM_NAME,
    CLUSTER_NAME_LABEL,
    CONTROL_PLANE_LABEL,
    MACHINE_FINALIZER,
    Obj,
    condition,
    days_from_now,
    dig,
    labels,
    meta,
    now,
    owner_ref,
    owner_refs,
    rfc3339,
    with_conditions,
    with_owner,
)

log = logging.getLogger(__name__)

_SUFFIX = string.ascii_lowercase + string.digits


@dataclass
class MachinePlan:
    """Everything an owner decides about a new Machine."""

    prefix: str
    cluster: str
    owner: Obj  # the controlling KubeadmControlPlane or MachineSet
    spec: Obj  # the Machine spec; bootstrap and infrastructureRef are filled in
    infra_template: Obj
    bootstrap_spec: Obj | None  # KubeadmConfig spec; None keeps spec.bootstrap as given
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


def infra_kind(template: Obj) -> tuple[str, str]:
    """(apiGroup, kind) of the machines an infra template stamps out."""
    group = str(template.get("apiVersion", "")).rpartition("/")[0]
    kind = str(template.get("kind", ""))
    return group, kind.removesuffix("Template")


def create_machine(ctx: Context, ns: str, plan: MachinePlan) -> Obj | None:
    """Create the Machine first (so its parts can be owned by it), then its parts."""
    api = ctx.api
    group, kind = infra_kind(plan.infra_template)
    if api.type_of_kind(group, kind) is None:
        log.warning("no infra machine kind %s.%s served", kind, group)
        return None
    for _ in range(10):
        name = f"{plan.prefix}-" + "".join(random.choice(_SUFFIX) for _ in range(5))
        if api.get(MACHINES, ns, name) is None:
            break
    spec = copy.deepcopy(plan.spec)
    spec["clusterName"] = plan.cluster
    spec["infrastructureRef"] = {"apiGroup": group, "kind": kind, "name": name}
    if plan.bootstrap_spec is not None:
        spec["bootstrap"] = {"configRef": {"apiGroup": BOOTSTRAP_GROUP, "kind": "KubeadmConfig",
                                           "name": name}}
    body: Obj = {
        "apiVersion": f"{MACHINES[0]}/v1beta2",
        "kind": "Machine",
        "metadata": {"name": name,
                     "labels": {**plan.labels, CLUSTER_NAME_LABEL: plan.cluster},
                     "ownerReferences": [owner_ref(plan.owner, controller=True)],
                     "finalizers": [MACHINE_FINALIZER]},
        "spec": spec,
    }
    if plan.annotations:
        body["metadata"]["annotations"] = dict(plan.annotations)
    machine = api.create(MACHINES, ns, body)
    if machine is not None:
        ensure_parts(ctx, machine, plan.infra_template, plan.bootstrap_spec)
    return machine


def ensure_parts(ctx: Context, machine: Obj, infra_template: Obj | None,
                 bootstrap_spec: Obj | None) -> None:
    """Create a young Machine's missing infra machine / KubeadmConfig (after a partial
    failure); a Machine whose infrastructure already ran is never given new parts."""
    api = ctx.api
    if meta(machine).get("deletionTimestamp") or \
            dig(machine, "status", "initialization", "infrastructureProvisioned"):
        return
    ns = meta(machine).get("namespace", "")
    spec = machine.get("spec") or {}
    part_labels = dict(labels(machine))
    infra_ref = spec.get("infrastructureRef")
    if infra_template is not None and isinstance(infra_ref, dict) and \
            api.get_ref(infra_ref, ns) is None:
        rt = api.type_of_kind(str(infra_ref.get("apiGroup")), str(infra_ref.get("kind")))
        tmeta = dig(infra_template, "spec", "template", "metadata") or {}
        tgroup = str(infra_template.get("apiVersion", "")).rpartition("/")[0]
        body = {
            "metadata": {
                "name": infra_ref.get("name"),
                "labels": {**(tmeta.get("labels") or {}), **part_labels},
                "annotations": {**(tmeta.get("annotations") or {}),
                                CLONED_FROM_NAME: meta(infra_template)["name"],
                                CLONED_FROM_GROUPKIND: f"{infra_template['kind']}.{tgroup}"},
                "ownerReferences": [owner_ref(machine, controller=True)],
            },
            "spec": copy.deepcopy(dig(infra_template, "spec", "template", "spec") or {}),
        }
        if rt is not None:
            api.create(rt, ns, body)
    config_ref = dig(spec, "bootstrap", "configRef")
    if bootstrap_spec is not None and isinstance(config_ref, dict) and \
            api.get_ref(config_ref, ns) is None:
        rt = api.type_of_kind(str(config_ref.get("apiGroup")), str(config_ref.get("kind")))
        body = {
            "metadata": {"name": config_ref.get("name"), "labels": part_labels,
                         "ownerReferences": [owner_ref(machine, controller=True)]},
            "spec": copy.deepcopy(bootstrap_spec),
        }
        if rt is not None:
            api.create(rt, ns, body)


def _node_info(machine: Obj) -> Obj:
    seed = hashlib.sha256(meta(machine)["uid"].encode()).hexdigest()
    version = dig(machine, "spec", "version") or "v0.0.0"
    return {
        "architecture": "amd64",
        "bootID": f"{seed[:8]}-{seed[8:12]}-{seed[12:16]}-{seed[16:20]}-{seed[20:32]}",
        "containerRuntimeVersion": "containerd://2.1.0",
        "kernelVersion": "6.8.0-testbed",
        "kubeProxyVersion": version,
        "kubeletVersion": version,
        "machineID": seed[32:64],
        "operatingSystem": "linux",
        "osImage": "Outpost Testbed Linux",
        "systemUUID": f"{seed[32:40]}-{seed[40:44]}-{seed[44:48]}-{seed[48:52]}-{seed[52:64]}",
    }


class MachineReconciler:
    kinds = (MACHINES,)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def reconcile(self, m: Obj) -> float | None:
        if meta(m).get("deletionTimestamp"):
            return self._delete(m)
        api = self.ctx.api
        cluster = api.cluster_of(m)
        if cluster is None:
            return None
        adopted = self._ensure_meta(m, cluster)
        if adopted is None:
            return self.ctx.config.step_delay
        m = adopted
        ns = meta(m).get("namespace", "")
        infra = api.get_ref(dig(m, "spec", "infrastructureRef"), ns)
        config = api.get_ref(dig(m, "spec", "bootstrap", "configRef"), ns)
        for part in (infra, config):
            if part is not None:
                self._adopt(part, m)

        # Mirror the providers' results into the Machine's spec (as CAPI does).
        spec = m.get("spec") or {}
        data_secret = dig(spec, "bootstrap", "dataSecretName")
        if not data_secret and config is not None and \
                dig(config, "status", "initialization", "dataSecretCreated") is True:
            data_secret = dig(config, "status", "dataSecretName")
        infra_ready = infra is not None and \
            dig(infra, "status", "initialization", "provisioned") is True
        provider_id = dig(infra, "spec", "providerID") if infra_ready else spec.get("providerID")
        if (data_secret and data_secret != dig(spec, "bootstrap", "dataSecretName")) or \
                (provider_id and provider_id != spec.get("providerID")):
            new = copy.deepcopy(m)
            if data_secret:
                new["spec"].setdefault("bootstrap", {})["dataSecretName"] = data_secret
            if provider_id:
                new["spec"]["providerID"] = provider_id
            updated = api.update(new)
            if updated is None:
                return self.ctx.config.step_delay
            m = updated

        # The Node "joins" one step after the infrastructure is up.
        node = dig(m, "status", "nodeRef")
        delay: float | None = None
        never = self.ctx.config.never_ready
        if node is None and infra_ready and provider_id and not (never and never(m)):
            left = self.ctx.timers.remaining(meta(m)["uid"], "node", self.ctx.config.step_delay)
            if left > 0:
                delay = left
            else:
                node = {"name": meta(m)["name"]}
        api.set_status(m, self._status(m, bool(data_secret), infra, infra_ready, node))
        return delay

    def _ensure_meta(self, m: Obj, cluster: Obj) -> Obj | None:
        """Finalizer, cluster label and (for a stand-alone Machine) a Cluster owner."""
        finalizers = meta(m).get("finalizers") or []
        lbl = labels(m)
        missing_owner = not owner_refs(m)
        if MACHINE_FINALIZER in finalizers and lbl.get(CLUSTER_NAME_LABEL) == \
                meta(cluster)["name"] and not missing_owner:
            return m
        new = copy.deepcopy(m)
        nm = new["metadata"]
        if MACHINE_FINALIZER not in finalizers:
            nm["finalizers"] = [*finalizers, MACHINE_FINALIZER]
        nm.setdefault("labels", {})[CLUSTER_NAME_LABEL] = meta(cluster)["name"]
        if missing_owner:
            nm["ownerReferences"] = [owner_ref(cluster)]
        return self.ctx.api.update(new)

    def _adopt(self, part: Obj, m: Obj) -> None:
        """Infra machine and bootstrap config are controlled by their Machine."""
        new = with_owner(part, m, controller=True)
        cluster = dig(m, "spec", "clusterName")
        if new is None and labels(part).get(CLUSTER_NAME_LABEL) == cluster:
            return
        new = new or copy.deepcopy(part)
        new["metadata"].setdefault("labels", {})[CLUSTER_NAME_LABEL] = cluster
        self.ctx.api.update(new)

    def _status(self, m: Obj, bootstrapped: bool, infra: Obj | None, infra_ready: bool,
                node: Obj | None) -> Obj:
        old = m.get("status") or {}
        status: Obj = {k: v for k, v in old.items() if k in ("conditions", "lastUpdated",
                                                             "certificatesExpiryDate")}
        if node is not None:
            phase = "Running"
        elif infra_ready:
            phase = "Provisioned"
        elif bootstrapped:
            phase = "Provisioning"
        else:
            phase = "Pending"
        status["phase"] = phase
        if old.get("phase") != phase or "lastUpdated" not in status:
            status["lastUpdated"] = rfc3339(now())
        status["initialization"] = {"bootstrapDataSecretCreated": bootstrapped,
                                    "infrastructureProvisioned": infra_ready}
        gen = meta(m).get("generation")
        if isinstance(gen, int):
            status["observedGeneration"] = gen
        addresses = dig(infra, "status", "addresses") if infra is not None else None
        if isinstance(addresses, list) and addresses:
            status["addresses"] = addresses
        if dig(m, "spec", "failureDomain"):
            status["failureDomain"] = m["spec"]["failureDomain"]
        if node is not None:
            status["nodeRef"] = node
            status["nodeInfo"] = _node_info(m)
            if CONTROL_PLANE_LABEL in labels(m) and "certificatesExpiryDate" not in status:
                status["certificatesExpiryDate"] = days_from_now(
                    self.ctx.config.certificate_validity_days)
        kind = dig(m, "spec", "infrastructureRef", "kind") or "infrastructure"
        conds = [
            condition("BootstrapConfigReady", bootstrapped,
                      "Ready" if bootstrapped else "NotReady",
                      "" if bootstrapped else "Waiting for bootstrap data"),
            condition("InfrastructureReady", infra_ready,
                      "Ready" if infra_ready else
                      ("NotReady" if infra is not None else "ObjectDoesNotExist"),
                      "" if infra_ready else f"{kind} is not provisioned"),
            condition("NodeReady", True if node else None,
                      "NodeReady" if node else "NodeDoesNotExist",
                      "" if node else "Waiting for a Node to join"),
            condition("NodeHealthy", True if node else None,
                      "NodeHealthy" if node else "NodeDoesNotExist",
                      "" if node else "Waiting for a Node to join"),
            condition("Ready", node is not None, "Ready" if node else "NotReady"),
            condition("Available", node is not None, "Available" if node else "NotAvailable"),
            condition("Deleting", False, "NotDeleting"),
            condition("Paused", False, "NotPaused"),
        ]
        return with_conditions(status, m, conds)

    def _delete(self, m: Obj) -> float | None:
        finalizers = meta(m).get("finalizers") or []
        if MACHINE_FINALIZER not in finalizers:
            return None
        api = self.ctx.api
        ns = meta(m).get("namespace", "")
        parts = [p for p in (api.get_ref(dig(m, "spec", "infrastructureRef"), ns),
                             api.get_ref(dig(m, "spec", "bootstrap", "configRef"), ns))
                 if p is not None and _controlled_by(p, m)]
        status = dict(m.get("status") or {})
        status["phase"] = "Deleting"
        with_conditions(status, m, [condition(
            "Deleting", True, "WaitingForInfrastructureDeletion" if parts else "Deleting")])
        updated = api.set_status(m, status)
        m = updated or m
        for part in parts:
            api.delete(part)
        if parts:
            return self.ctx.config.step_delay
        left = self.ctx.timers.remaining(meta(m)["uid"], "delete", self.ctx.config.step_delay)
        if left > 0:
            return left
        new = copy.deepcopy(m)
        new["metadata"]["finalizers"] = [f for f in finalizers if f != MACHINE_FINALIZER]
        api.update(new)
        return None


def _controlled_by(part: Obj, owner: Obj) -> bool:
    uid = meta(owner).get("uid")
    refs: list[Any] = meta(part).get("ownerReferences") or []
    return any(isinstance(r, dict) and r.get("uid") == uid for r in refs) or not refs
