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
from .conditions import flag, is_true, with_conditions
from .replicas import replica_conditions, replica_status, replicas_of
from .runtime import Reconciler
from .util import (
    CLUSTER_NAME_LABEL,
    CORE_GROUP,
    DEPLOYMENT_NAME_LABEL,
    TEMPLATE_HASH_LABEL,
    VERSION,
    Obj,
    children,
    deleting,
    dig,
    label_value,
    labels,
    meta,
    owner_ref,
    selector_string,
    spec_hash,
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


def _budget(md: Obj) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) as numbers of Machines; never both 0."""
    strategy = dig(md, "spec", "rollout", "strategy", "rollingUpdate") or {}
    desired = replicas_of(md)
    surge = scaled(strategy.get("maxSurge"), desired, True, 1)
    unavailable = scaled(strategy.get("maxUnavailable"), desired, False, 0)
    return (1 if surge == 0 and unavailable == 0 else surge), unavailable


def _available(machines: list[Obj]) -> list[Obj]:
    return [m for m in machines if not deleting(m) and is_true(m, "Available")]


class _Revisions:
    """A MachineDeployment's MachineSets (oldest first) and their Machines as of one read, so
    that rollout and status agree on which set is current and what each one holds."""

    def __init__(self, md: Obj, sets: list[Obj], all_machines: list[Obj]) -> None:
        self.template_hash = spec_hash(dig(md, "spec", "template", "spec"))
        self.sets = sets
        self.new = next((s for s in sets
                         if labels(s).get(TEMPLATE_HASH_LABEL) == self.template_hash), None)
        self.olds = [s for s in sets if s is not self.new]
        self._machines = {meta(s)["uid"]: children(all_machines, s) for s in sets}
        self.machines = [m for s in sets for m in self.of(s)]

    def of(self, ms: Obj) -> list[Obj]:
        """The Machines a set controls, oldest first."""
        return self._machines[meta(ms)["uid"]]


class MachineDeploymentReconciler(Reconciler):
    kinds = (MACHINEDEPLOYMENTS,)

    def reconcile(self, md: Obj) -> float | None:
        api = self.api
        if deleting(md):
            return None  # its MachineSets (and so Machines) go through garbage collection
        cluster = api.cluster_of(md)
        if cluster is None:
            return None
        # Owned by its Cluster and labelled with it, as the real controller ensures.
        md = api.claim(md, cluster, cluster=meta(cluster)["name"]) or md
        rev = self._revisions(md)
        if not dig(md, "spec", "paused"):
            self._rollout(md, cluster, rev)
            rev = self._revisions(md)
        self._write_status(md, rev)
        return None

    def _revisions(self, md: Obj) -> _Revisions:
        ns = meta(md).get("namespace", "")
        return _Revisions(md, self.api.children(MACHINESETS, md), self.api.list_of(MACHINES, ns))

    # -- rollout ----------------------------------------------------------------------------
    def _rollout(self, md: Obj, cluster: Obj, rev: _Revisions) -> None:
        api = self.api
        desired = replicas_of(md)
        new = rev.new
        if new is None:
            api.create(MACHINESETS, meta(md).get("namespace", ""),
                       self._machineset(md, cluster, rev.template_hash,
                                        0 if rev.olds else desired))
            return
        if not rev.olds:
            if replicas_of(new) != desired:
                self._set_replicas(new, desired)
            return
        surge, unavailable = _budget(md)
        spec_total = sum(replicas_of(s) for s in rev.sets)
        settled = not any(deleting(m) for m in rev.machines) and len(rev.machines) <= spec_total
        if replicas_of(new) > desired:
            self._set_replicas(new, desired)
            return
        if settled and replicas_of(new) < desired and spec_total < desired + surge:
            self._set_replicas(new, replicas_of(new) + 1)
            return
        available = _available(rev.machines)
        for old in rev.olds:
            have = replicas_of(old)
            if have == 0:
                if not rev.of(old):
                    api.delete(old)
                continue
            if len(available) > desired - unavailable or len(_available(rev.of(old))) < have:
                self._set_replicas(old, have - 1)
                return

    def _set_replicas(self, ms: Obj, n: int) -> None:
        self.api.update_spec(ms, replicas=max(n, 0))

    def _machineset(self, md: Obj, cluster: Obj, template_hash: str, replicas: int) -> Obj:
        """The MachineSet of the current template revision."""
        name = meta(md)["name"]
        cname = meta(cluster)["name"]
        spec = md.get("spec") or {}
        template = copy.deepcopy(spec.get("template") or {})
        tmeta = template.setdefault("metadata", {})
        tmeta["labels"] = {**(tmeta.get("labels") or {}), CLUSTER_NAME_LABEL: cname,
                           DEPLOYMENT_NAME_LABEL: label_value(name),
                           TEMPLATE_HASH_LABEL: template_hash}
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
            "apiVersion": f"{CORE_GROUP}/{VERSION}",
            "kind": "MachineSet",
            "metadata": {"name": f"{name}-{template_hash}", "labels": dict(tmeta["labels"]),
                         "ownerReferences": [owner_ref(md, controller=True)]},
            "spec": ms_spec,
        }

    # -- status -----------------------------------------------------------------------------
    def _write_status(self, md: Obj, rev: _Revisions) -> None:
        desired = replicas_of(md)
        machines = rev.machines
        current = sum(not deleting(m) for m in rev.of(rev.new)) if rev.new is not None else 0
        status = replica_status(
            md, machines,
            selector=selector_string(dig(md, "spec", "selector", "matchLabels") or {}),
            up_to_date=current)
        _, unavailable = _budget(md)
        is_available = status["availableReplicas"] >= desired - unavailable
        if len(machines) > desired:
            status["phase"] = "ScalingDown"
        elif status["readyReplicas"] < desired:
            status["phase"] = "ScalingUp"
        else:
            status["phase"] = "Running"
        rolling = bool(rev.olds)
        conds = [
            flag("Available", is_available, "Available", "" if is_available else
                 f"{status['availableReplicas']} available replicas, at least "
                 f"{desired - unavailable} required"),
            *replica_conditions(
                machines, desired, up_from=sum(not deleting(m) for m in machines),
                down_from=len(machines),
                rollout=[flag("MachinesUpToDate", not rolling, "UpToDate"),
                         flag("RollingOut", rolling, "RollingOut")]),
        ]
        self.api.set_status(md, with_conditions(status, md, conds))
