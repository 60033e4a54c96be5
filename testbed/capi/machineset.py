"""The MachineSet controller: keeps `spec.replicas` Machines stamped from its template.

Unlike the control plane it creates and deletes all missing or surplus Machines at once, as the
real MachineSet does; pacing of a rollout is the MachineDeployment's job. Surplus Machines go
in this order: those annotated `cluster.x-k8s.io/delete-machine`, those not Ready, then by
`spec.deletion.order` (Newest, Oldest; Random behaves as Oldest here).
"""

from __future__ import annotations

import copy

from .api import MACHINEDEPLOYMENTS, MACHINES, MACHINESETS
from .conditions import flag, is_true, with_conditions
from .machines import MachinePlan, create_machine, ensure_parts
from .replicas import mark_up_to_date, replica_conditions, replica_status, replicas_of
from .runtime import Reconciler
from .util import (
    CLUSTER_NAME_LABEL,
    DELETE_MACHINE_ANNOTATION,
    SET_NAME_LABEL,
    TEMPLATE_HASH_LABEL,
    Obj,
    annots,
    created_key,
    deleting,
    dig,
    label_value,
    labels,
    meta,
    owner_of_kind,
    owner_refs,
    selector_string,
    spec_hash,
)


class MachineSetReconciler(Reconciler):
    kinds = (MACHINESETS,)

    def reconcile(self, ms: Obj) -> float | None:
        api = self.api
        if deleting(ms):
            return None
        cluster = api.cluster_of(ms)
        if cluster is None:
            return None
        ns = meta(ms).get("namespace", "")
        if not owner_refs(ms):  # a stand-alone MachineSet is owned by its Cluster
            ms = api.claim(ms, cluster, cluster=meta(cluster)["name"]) or ms
        elif CLUSTER_NAME_LABEL not in labels(ms):
            ms = api.claim(ms, cluster=meta(cluster)["name"]) or ms
        tspec = dig(ms, "spec", "template", "spec") or {}
        infra_template = api.get_ref(tspec.get("infrastructureRef"), ns)
        config_ref = dig(tspec, "bootstrap", "configRef")
        bootstrap_template = api.get_ref(config_ref, ns)
        bootstrap_spec = (copy.deepcopy(dig(bootstrap_template, "spec", "template", "spec") or {})
                          if bootstrap_template is not None else None)
        for t in (infra_template, bootstrap_template):
            if t is not None:
                api.claim(t, cluster)
        machines = api.children(MACHINES, ms)
        for m in machines:
            ensure_parts(self.ctx, m, infra_template, bootstrap_spec)
        current = self._is_current(ms)
        mark_up_to_date(api, machines, {} if current else {
            meta(m)["name"]: "MachineSet is not the current revision" for m in machines})

        live = [m for m in machines if not deleting(m)]
        desired = replicas_of(ms)
        can_create = config_ref is None or bootstrap_template is not None
        if len(live) < desired and infra_template is not None and can_create:
            for _ in range(desired - len(live)):
                self._create(ms, cluster, infra_template, bootstrap_spec)
        elif len(live) > desired:
            for m in self._victims(ms, live)[: len(live) - desired]:
                api.delete(m)
        self._write_status(ms, api.children(MACHINES, ms), current)
        return None

    def _is_current(self, ms: Obj) -> bool:
        """Whether this set stamps the owning MachineDeployment's current template."""
        ref = owner_of_kind(ms, "MachineDeployment")
        if ref is None:
            return True
        md = self.api.get(MACHINEDEPLOYMENTS, meta(ms).get("namespace"),
                          str(ref.get("name", "")))
        if md is None:
            return True
        return labels(ms).get(TEMPLATE_HASH_LABEL) == spec_hash(
            dig(md, "spec", "template", "spec"))

    def _create(self, ms: Obj, cluster: Obj, infra_template: Obj,
                bootstrap_spec: Obj | None) -> None:
        tmpl = dig(ms, "spec", "template") or {}
        create_machine(self.ctx, MachinePlan(
            owner=ms,
            cluster=meta(cluster)["name"],
            spec=tmpl.get("spec") or {},
            infra_template=infra_template,
            bootstrap_spec=bootstrap_spec,
            template_meta=tmpl.get("metadata") or {},
            labels={SET_NAME_LABEL: label_value(meta(ms)["name"])},
        ))

    @staticmethod
    def _victims(ms: Obj, live: list[Obj]) -> list[Obj]:
        order = dig(ms, "spec", "deletion", "order")
        by_age = sorted(live, key=created_key, reverse=order == "Newest")
        return sorted(by_age, key=lambda m: (DELETE_MACHINE_ANNOTATION not in annots(m),
                                             is_true(m, "Ready")))

    def _write_status(self, ms: Obj, machines: list[Obj], current: bool) -> None:
        live = sum(not deleting(m) for m in machines)
        status = replica_status(
            ms, machines,
            selector=selector_string(dig(ms, "spec", "selector", "matchLabels") or {}),
            up_to_date=live if current else 0)
        conds = replica_conditions(
            machines, replicas_of(ms), up_from=live, down_from=len(machines),
            rollout=[flag("MachinesUpToDate", current or not live, "UpToDate")])
        self.api.set_status(ms, with_conditions(status, ms, conds))
