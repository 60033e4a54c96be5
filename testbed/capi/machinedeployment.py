"""The MachineDeployment controller: one MachineSet per template revision, rolled over gradually.

The current MachineSet is named `<deployment>-<hash of spec.template.spec>`, so any change to
the Machine template (version, infrastructure or bootstrap template references, ...) creates a
new one. A rolling update then moves one Machine at a time within `maxSurge` (default 1) and
`maxUnavailable` (default 0): the new set grows by one, and an old set shrinks by one only while
enough Machines stay available. Machines being deleted still count, so there are never more
than `replicas + maxSurge` Machines.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from .api import MACHINEDEPLOYMENTS, MACHINES, MACHINESETS
from .machineset import owned_machines, replicas_of
from .runtime import Context
from .util import (
    CLUSTER_NAME_LABEL,
    DEPLOYMENT_NAME_LABEL,
    TEMPLATE_HASH_LABEL,
    Obj,
    condition,
    created_key,
    deleting,
    dig,
    is_true,
    label_value,
    labels,
    meta,
    owned_by,
    selector_string,
    spec_hash,
    version_key,
    with_conditions,
    with_owner,
)


def scaled(value: Any, total: int, round_up: bool, default: int) -> int:
    """An int-or-percent rollout parameter as a number of Machines."""
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, str) and value.endswith("%"):
        try:
            pct = float(value[:-1])
        except ValueError:
            return default
        n = total * pct / 100
        return max(int(math.ceil(n) if round_up else math.floor(n)), 0)
    return default


class MachineDeploymentReconciler:
    kinds = (MACHINEDEPLOYMENTS,)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def reconcile(self, md: Obj) -> float | None:
        api = self.ctx.api
        if deleting(md):
            return None  # its MachineSets (and so Machines) go through garbage collection
        cluster = api.cluster_of(md)
        if cluster is None:
            return None
        md = self._adopt(md, cluster) or md
        ns = meta(md).get("namespace", "")
        template_hash = spec_hash(dig(md, "spec", "template", "spec"))
        sets = sorted((s for s in api.list_of(MACHINESETS, ns) if owned_by(s, md, True)),
                      key=created_key)
        all_machines = api.list_of(MACHINES, ns)
        if not dig(md, "spec", "paused"):
            self._rollout(md, cluster, template_hash, sets, all_machines)
            sets = sorted((s for s in api.list_of(MACHINESETS, ns) if owned_by(s, md, True)),
                          key=created_key)
            all_machines = api.list_of(MACHINES, ns)
        self._write_status(md, template_hash, sets, all_machines)
        return None

    def _adopt(self, md: Obj, cluster: Obj) -> Obj | None:
        """Owned by its Cluster and labelled with it, as the real controller ensures."""
        new = with_owner(md, cluster)
        if new is None and labels(md).get(CLUSTER_NAME_LABEL) == meta(cluster)["name"]:
            return None
        new = new or copy.deepcopy(md)
        new["metadata"].setdefault("labels", {})[CLUSTER_NAME_LABEL] = meta(cluster)["name"]
        return self.ctx.api.update(new)

    # -- rollout ----------------------------------------------------------------------------
    def _rollout(self, md: Obj, cluster: Obj, template_hash: str, sets: list[Obj],
                 all_machines: list[Obj]) -> None:
        api = self.ctx.api
        desired = replicas_of(md)
        new = next((s for s in sets if labels(s).get(TEMPLATE_HASH_LABEL) == template_hash),
                   None)
        olds = [s for s in sets if s is not new]
        if new is None:
            api.create(MACHINESETS, meta(md).get("namespace", ""),
                       self._machineset(md, cluster, template_hash, 0 if olds else desired))
            return
        if not olds:
            if replicas_of(new) != desired:
                self._set_replicas(new, desired)
            return
        strategy = dig(md, "spec", "rollout", "strategy", "rollingUpdate") or {}
        surge = scaled(strategy.get("maxSurge"), desired, True, 1)
        unavailable = scaled(strategy.get("maxUnavailable"), desired, False, 0)
        if surge == 0 and unavailable == 0:
            surge = 1
        machines = [m for s in sets for m in owned_machines(all_machines, s)]
        spec_total = sum(replicas_of(s) for s in sets)
        settled = not any(deleting(m) for m in machines) and len(machines) <= spec_total
        if replicas_of(new) > desired:
            self._set_replicas(new, desired)
            return
        if settled and replicas_of(new) < desired and spec_total < desired + surge:
            self._set_replicas(new, replicas_of(new) + 1)
            return
        available = [m for m in machines if not deleting(m) and is_true(m, "Available")]
        for old in olds:
            have = replicas_of(old)
            if have == 0:
                if not owned_machines(all_machines, old):
                    api.delete(old)
                continue
            old_ready = [m for m in owned_machines(all_machines, old)
                         if not deleting(m) and is_true(m, "Available")]
            if len(available) > desired - unavailable or len(old_ready) < have:
                self._set_replicas(old, have - 1)
                return

    def _set_replicas(self, ms: Obj, n: int) -> None:
        new = copy.deepcopy(ms)
        new["spec"]["replicas"] = max(n, 0)
        self.ctx.api.update(new)

    def _machineset(self, md: Obj, cluster: Obj, template_hash: str, replicas: int) -> Obj:
        name = meta(md)["name"]
        cname = meta(cluster)["name"]
        spec = md.get("spec") or {}
        template = copy.deepcopy(spec.get("template") or {})
        tmeta = template.setdefault("metadata", {})
        added = {CLUSTER_NAME_LABEL: cname, DEPLOYMENT_NAME_LABEL: label_value(name),
                 TEMPLATE_HASH_LABEL: template_hash}
        tmeta["labels"] = {**(tmeta.get("labels") or {}), **added}
        selector = copy.deepcopy(spec.get("selector") or {})
        selector["matchLabels"] = {**(selector.get("matchLabels") or {}),
                                   TEMPLATE_HASH_LABEL: template_hash}
        ms_spec: Obj = {"clusterName": cname, "replicas": replicas, "selector": selector,
                        "template": template}
        if isinstance(spec.get("deletion"), dict) and spec["deletion"].get("order"):
            ms_spec["deletion"] = {"order": spec["deletion"]["order"]}
        if spec.get("machineNaming"):
            ms_spec["machineNaming"] = copy.deepcopy(spec["machineNaming"])
        return {
            "apiVersion": f"{MACHINESETS[0]}/v1beta2",
            "kind": "MachineSet",
            "metadata": {"name": f"{name}-{template_hash}",
                         "labels": {**(tmeta.get("labels") or {}), **added},
                         "ownerReferences": [
                             {"apiVersion": md["apiVersion"], "kind": md["kind"], "name": name,
                              "uid": meta(md)["uid"], "controller": True,
                              "blockOwnerDeletion": True}]},
            "spec": ms_spec,
        }

    # -- status -----------------------------------------------------------------------------
    def _write_status(self, md: Obj, template_hash: str, sets: list[Obj],
                      all_machines: list[Obj]) -> None:
        desired = replicas_of(md)
        machines = [m for s in sets for m in owned_machines(all_machines, s)]
        new = next((s for s in sets if labels(s).get(TEMPLATE_HASH_LABEL) == template_hash),
                   None)
        current = [m for m in owned_machines(all_machines, new) if not deleting(m)] \
            if new is not None else []
        ready = [m for m in machines if is_true(m, "Ready")]
        available = [m for m in machines if is_true(m, "Available")]
        strategy = dig(md, "spec", "rollout", "strategy", "rollingUpdate") or {}
        unavailable = scaled(strategy.get("maxUnavailable"), desired, False, 0)
        is_available = len(available) >= desired - unavailable
        rolling = any(s is not new for s in sets)
        if len(machines) > desired:
            phase = "ScalingDown"
        elif len(ready) < desired:
            phase = "ScalingUp"
        else:
            phase = "Running"
        status: Obj = {k: v for k, v in (md.get("status") or {}).items() if k == "conditions"}
        status["selector"] = selector_string(dig(md, "spec", "selector", "matchLabels") or {})
        status["replicas"] = len(machines)
        status["readyReplicas"] = len(ready)
        status["availableReplicas"] = len(available)
        status["upToDateReplicas"] = len(current)
        status["phase"] = phase
        gen = meta(md).get("generation")
        if isinstance(gen, int):
            status["observedGeneration"] = gen
        versions: dict[str, int] = {}
        for m in machines:
            v = dig(m, "spec", "version")
            if isinstance(v, str) and v:
                versions[v] = versions.get(v, 0) + 1
        if versions:
            status["versions"] = [{"version": v, "replicas": n}
                                  for v, n in sorted(versions.items(),
                                                     key=lambda kv: version_key(kv[0]))]
        not_ready = sorted(meta(m)["name"] for m in machines if not is_true(m, "Ready"))
        live = len([m for m in machines if not deleting(m)])
        conds = [
            condition("Available", is_available,
                      "Available" if is_available else "NotAvailable",
                      "" if is_available else
                      f"{len(available)} available replicas, at least {desired - unavailable} "
                      "required"),
            condition("MachinesReady", not not_ready,
                      ("Ready" if machines else "NoReplicas") if not not_ready else "NotReady",
                      "" if not not_ready else "Not ready: " + ", ".join(not_ready)),
            condition("MachinesUpToDate", not rolling, "UpToDate" if not rolling
                      else "NotUpToDate"),
            condition("RollingOut", rolling, "RollingOut" if rolling else "NotRollingOut"),
            condition("ScalingUp", live < desired,
                      "ScalingUp" if live < desired else "NotScalingUp",
                      f"Scaling up from {live} to {desired} replicas" if live < desired else ""),
            condition("ScalingDown", len(machines) > desired,
                      "ScalingDown" if len(machines) > desired else "NotScalingDown",
                      f"Scaling down from {len(machines)} to {desired} replicas"
                      if len(machines) > desired else ""),
            condition("Remediating", False, "NotRemediating"),
            condition("Deleting", False, "NotDeleting"),
            condition("Paused", False, "NotPaused"),
        ]
        self.ctx.api.set_status(md, with_conditions(status, md, conds))
