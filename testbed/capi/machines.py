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

from .api import MACHINES, Api
from .conditions import condition, flag, with_conditions
from .runtime import Context, Reconciler
from .util import (
    BOOTSTRAP_GROUP,
    CLONED_FROM_GROUPKIND,
    CLONED_FROM_NAME,
    CLUSTER_NAME_LABEL,
    CONTROL_PLANE_LABEL,
    CORE_GROUP,
    MACHINE_FINALIZER,
    VERSION,
    Obj,
    api_group,
    days_from_now,
    deleting,
    dig,
    labels,
    meta,
    now,
    observe,
    owned_by,
    owner_ref,
    owner_refs,
    released,
    rfc3339,
)

log = logging.getLogger(__name__)

_SUFFIX = string.ascii_lowercase + string.digits


@dataclass
class MachinePlan:
    """Everything an owner decides about a new Machine; it is named after the owner (plus a
    random suffix) and lives in the owner's namespace."""

    owner: Obj  # the controlling KubeadmControlPlane or MachineSet
    cluster: str
    spec: Obj  # the Machine spec; bootstrap and infrastructureRef are filled in
    infra_template: Obj
    bootstrap_spec: Obj | None  # KubeadmConfig spec; None keeps spec.bootstrap as given
    template_meta: Obj  # the owner's machine template metadata (labels, annotations) to copy
    labels: dict[str, str] = field(default_factory=dict)  # the owner's own labels on top


def infra_kind(template: Obj) -> tuple[str, str]:
    """(apiGroup, kind) of the machines an infra template stamps out."""
    return api_group(template), str(template.get("kind", "")).removesuffix("Template")


def create_machine(ctx: Context, plan: MachinePlan) -> Obj | None:
    """Create the Machine first (so its parts can be owned by it), then its parts."""
    api = ctx.api
    ns = meta(plan.owner).get("namespace", "")
    group, kind = infra_kind(plan.infra_template)
    if api.type_of_kind(group, kind) is None:
        log.warning("no infra machine kind %s.%s served", kind, group)
        return None
    for _ in range(10):
        name = f"{meta(plan.owner)['name']}-" + "".join(random.choice(_SUFFIX) for _ in range(5))
        if api.get(MACHINES, ns, name) is None:
            break
    spec = copy.deepcopy(plan.spec)
    spec["clusterName"] = plan.cluster
    spec["infrastructureRef"] = {"apiGroup": group, "kind": kind, "name": name}
    if plan.bootstrap_spec is not None:
        spec["bootstrap"] = {"configRef": {"apiGroup": BOOTSTRAP_GROUP, "kind": "KubeadmConfig",
                                           "name": name}}
    body: Obj = {
        "apiVersion": f"{CORE_GROUP}/{VERSION}",
        "kind": "Machine",
        "metadata": {"name": name,
                     "labels": {**(plan.template_meta.get("labels") or {}), **plan.labels,
                                CLUSTER_NAME_LABEL: plan.cluster},
                     "ownerReferences": [owner_ref(plan.owner, controller=True)],
                     "finalizers": [MACHINE_FINALIZER]},
        "spec": spec,
    }
    if plan.template_meta.get("annotations"):
        body["metadata"]["annotations"] = dict(plan.template_meta["annotations"])
    machine = api.create(MACHINES, ns, body)
    if machine is not None:
        ensure_parts(ctx, machine, plan.infra_template, plan.bootstrap_spec)
    return machine


def ensure_parts(ctx: Context, machine: Obj, infra_template: Obj | None,
                 bootstrap_spec: Obj | None) -> None:
    """Create a young Machine's missing infra machine / KubeadmConfig (after a partial
    failure); a Machine whose infrastructure already ran is never given new parts."""
    if deleting(machine) or \
            dig(machine, "status", "initialization", "infrastructureProvisioned"):
        return
    part_labels = dict(labels(machine))
    if infra_template is not None:
        tmeta = dig(infra_template, "spec", "template", "metadata") or {}
        group_kind = f"{infra_template['kind']}.{api_group(infra_template)}"
        cloned_from = {CLONED_FROM_NAME: meta(infra_template)["name"],
                       CLONED_FROM_GROUPKIND: group_kind}
        _create_part(ctx.api, machine, dig(machine, "spec", "infrastructureRef"),
                     dig(infra_template, "spec", "template", "spec") or {},
                     {"labels": {**(tmeta.get("labels") or {}), **part_labels},
                      "annotations": {**(tmeta.get("annotations") or {}), **cloned_from}})
    if bootstrap_spec is not None:
        _create_part(ctx.api, machine, dig(machine, "spec", "bootstrap", "configRef"),
                     bootstrap_spec, {"labels": part_labels})


def _create_part(api: Api, machine: Obj, ref: Any, spec: Obj, metadata: Obj) -> None:
    """The object a Machine's reference names, when missing: that spec and metadata, named as
    referenced and controlled by the Machine."""
    ns = meta(machine).get("namespace", "")
    if not isinstance(ref, dict) or api.get_ref(ref, ns) is not None:
        return
    rt = api.type_of_kind(str(ref.get("apiGroup")), str(ref.get("kind")))
    if rt is not None:
        api.create(rt, ns, {
            "metadata": {"name": ref.get("name"), **metadata,
                         "ownerReferences": [owner_ref(machine, controller=True)]},
            "spec": copy.deepcopy(spec),
        })


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


class MachineReconciler(Reconciler):
    kinds = (MACHINES,)

    def reconcile(self, m: Obj) -> float | None:
        if deleting(m):
            return self._delete(m)
        api = self.api
        step = self.ctx.config.step_delay
        cluster = api.cluster_of(m)
        if cluster is None:
            return None
        # Finalizer, cluster label and (for a stand-alone Machine) a Cluster owner.
        claimed = api.claim(m, None if owner_refs(m) else cluster,
                            cluster=meta(cluster)["name"], finalizer=MACHINE_FINALIZER)
        if claimed is None:
            return step
        m = claimed
        ns = meta(m).get("namespace", "")
        infra = api.get_ref(dig(m, "spec", "infrastructureRef"), ns)
        config = api.get_ref(dig(m, "spec", "bootstrap", "configRef"), ns)
        for part in (infra, config):  # controlled by their Machine
            if part is not None:
                api.claim(part, m, controller=True, cluster=dig(m, "spec", "clusterName"))

        # Mirror the providers' results into the Machine's spec (as CAPI does).
        spec = m.get("spec") or {}
        data_secret = dig(spec, "bootstrap", "dataSecretName")
        if not data_secret and config is not None and \
                dig(config, "status", "initialization", "dataSecretCreated") is True:
            data_secret = dig(config, "status", "dataSecretName")
        infra_ready = infra is not None and \
            dig(infra, "status", "initialization", "provisioned") is True
        provider_id = dig(infra, "spec", "providerID") if infra_ready else spec.get("providerID")
        changes: Obj = {}
        if data_secret and data_secret != dig(spec, "bootstrap", "dataSecretName"):
            changes["bootstrap"] = {**(spec.get("bootstrap") or {}), "dataSecretName": data_secret}
        if provider_id and provider_id != spec.get("providerID"):
            changes["providerID"] = provider_id
        if changes:
            updated = api.update_spec(m, **changes)
            if updated is None:
                return step
            m = updated

        # The Node "joins" one step after the infrastructure is up.
        node = dig(m, "status", "nodeRef")
        delay: float | None = None
        never = self.ctx.config.never_ready
        if node is None and infra_ready and provider_id and not (never and never(m)):
            left = self.remaining(m, "node", step)
            if left > 0:
                delay = left
            else:
                node = {"name": meta(m)["name"]}
        api.set_status(m, self._status(m, bool(data_secret), infra, infra_ready, node))
        return delay

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
        observe(status, m)
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
            flag("BootstrapConfigReady", bootstrapped, "Ready",
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
        if MACHINE_FINALIZER not in (meta(m).get("finalizers") or []):
            return None
        api = self.api
        ns = meta(m).get("namespace", "")
        parts = [p for p in (api.get_ref(dig(m, "spec", "infrastructureRef"), ns),
                             api.get_ref(dig(m, "spec", "bootstrap", "configRef"), ns))
                 if p is not None and (owned_by(p, m) or not owner_refs(p))]
        reason = "WaitingForInfrastructureDeletion" if parts else "Deleting"
        m = api.set_conditions(m, [condition("Deleting", True, reason)], phase="Deleting") or m
        for part in parts:
            api.delete(part)
        if parts:
            return self.ctx.config.step_delay
        left = self.remaining(m, "delete", self.ctx.config.step_delay)
        if left > 0:
            return left
        api.update(released(m, MACHINE_FINALIZER))
        return None
