"""The MachineSet controller: keeps `spec.replicas` Machines stamped from its template.

Unlike the control plane it creates and deletes all missing or surplus Machines at once, as the
real MachineSet does; pacing of a rollout is the MachineDeployment's job. Surplus Machines go
in this order: those annotated `cluster.x-k8s.io/delete-machine`, those not Ready, then by
`spec.deletion.order` (Newest, Oldest; Random behaves as Oldest here).
"""

from __future__ import annotations

import copy

from .api import MACHINEDEPLOYMENTS, MACHINES, MACHINESETS
from .machines import MachinePlan, create_machine, ensure_parts
from .runtime import Context
from .util import (
    CLUSTER_NAME_LABEL,
    DELETE_MACHINE_ANNOTATION,
    SET_NAME_LABEL,
    TEMPLATE_HASH_LABEL,
    Obj,
    annots,
    condition,
    created_key,
    deleting,
    dig,
    is_true,
    label_value,
    labels,
    meta,
    owned_by,
    owner_of_kind,
    owner_refs,
    selector_string,
    spec_hash,
    version_key,
    with_conditions,
    with_owner,
)


def replicas_of(obj: Obj) -> int:
    """spec.replicas, defaulting to 1 as the CAPI webhooks do."""
    r = dig(obj, "spec", "replicas")
    return r if isinstance(r, int) and r >= 0 else 1


def owned_machines(api_list: list[Obj], owner: Obj) -> list[Obj]:
    return sorted((m for m in api_list if owned_by(m, owner, controller=True)), key=created_key)


class MachineSetReconciler:
    kinds = (MACHINESETS,)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def reconcile(self, ms: Obj) -> float | None:
        api = self.ctx.api
        if deleting(ms):
            return None
        cluster = api.cluster_of(ms)
        if cluster is None:
            return None
        ns = meta(ms).get("namespace", "")
        if not owner_refs(ms) or CLUSTER_NAME_LABEL not in labels(ms):
            ms = self._adopt(ms, cluster) or ms
        tspec = dig(ms, "spec", "template", "spec") or {}
        infra_template = api.get_ref(tspec.get("infrastructureRef"), ns)
        config_ref = dig(tspec, "bootstrap", "configRef")
        bootstrap_template = api.get_ref(config_ref, ns) if config_ref else None
        bootstrap_spec = (copy.deepcopy(dig(bootstrap_template, "spec", "template", "spec") or {})
                          if bootstrap_template is not None else None)
        for t in (infra_template, bootstrap_template):
            owned = with_owner(t, cluster) if t is not None else None
            if owned is not None:
                api.update(owned)
        machines = owned_machines(api.list_of(MACHINES, ns), ms)
        for m in machines:
            ensure_parts(self.ctx, m, infra_template, bootstrap_spec)
        current = self._is_current(ms)
        self._mark_up_to_date(machines, current)

        live = [m for m in machines if not deleting(m)]
        desired = replicas_of(ms)
        can_create = config_ref is None or bootstrap_template is not None
        if len(live) < desired and infra_template is not None and can_create:
            for _ in range(desired - len(live)):
                self._create(ms, cluster, infra_template, bootstrap_spec)
        elif len(live) > desired:
            for m in self._victims(ms, live)[: len(live) - desired]:
                api.delete(m)
        machines = owned_machines(api.list_of(MACHINES, ns), ms)
        self._write_status(ms, machines, current)
        return None

    def _adopt(self, ms: Obj, cluster: Obj) -> Obj | None:
        """A stand-alone MachineSet is owned by its Cluster; all carry the cluster label."""
        new = with_owner(ms, cluster) if not owner_refs(ms) else None
        new = new or copy.deepcopy(ms)
        new["metadata"].setdefault("labels", {})[CLUSTER_NAME_LABEL] = meta(cluster)["name"]
        return self.ctx.api.update(new)

    def _is_current(self, ms: Obj) -> bool:
        """Whether this set stamps the owning MachineDeployment's current template."""
        ref = owner_of_kind(ms, "MachineDeployment")
        if ref is None:
            return True
        md = self.ctx.api.get(MACHINEDEPLOYMENTS, meta(ms).get("namespace"),
                              str(ref.get("name", "")))
        if md is None:
            return True
        return labels(ms).get(TEMPLATE_HASH_LABEL) == spec_hash(
            dig(md, "spec", "template", "spec"))

    def _create(self, ms: Obj, cluster: Obj, infra_template: Obj,
                bootstrap_spec: Obj | None) -> None:
        tmpl = dig(ms, "spec", "template") or {}
        tmeta = tmpl.get("metadata") or {}
        plan = MachinePlan(
            prefix=meta(ms)["name"],
            cluster=meta(cluster)["name"],
            owner=ms,
            spec=copy.deepcopy(tmpl.get("spec") or {}),
            infra_template=infra_template,
            bootstrap_spec=bootstrap_spec,
            labels={**(tmeta.get("labels") or {}),
                    SET_NAME_LABEL: label_value(meta(ms)["name"])},
            annotations=dict(tmeta.get("annotations") or {}),
        )
        create_machine(self.ctx, meta(ms).get("namespace", ""), plan)

    @staticmethod
    def _victims(ms: Obj, live: list[Obj]) -> list[Obj]:
        order = dig(ms, "spec", "deletion", "order")
        by_age = sorted(live, key=created_key, reverse=order == "Newest")
        return sorted(by_age, key=lambda m: (DELETE_MACHINE_ANNOTATION not in annots(m),
                                             is_true(m, "Ready")))

    def _mark_up_to_date(self, machines: list[Obj], current: bool) -> None:
        cond = condition("UpToDate", current, "UpToDate" if current else "NotUpToDate",
                         "" if current else "MachineSet is not the current revision")
        for m in machines:
            if not deleting(m):
                self.ctx.api.set_status(m, with_conditions(dict(m.get("status") or {}), m,
                                                           [cond]))

    def _write_status(self, ms: Obj, machines: list[Obj], current: bool) -> None:
        desired = replicas_of(ms)
        live = [m for m in machines if not deleting(m)]
        ready = [m for m in machines if is_true(m, "Ready")]
        not_ready = sorted(meta(m)["name"] for m in machines if not is_true(m, "Ready"))
        status: Obj = {k: v for k, v in (ms.get("status") or {}).items() if k == "conditions"}
        status["selector"] = selector_string(dig(ms, "spec", "selector", "matchLabels") or {})
        status["replicas"] = len(machines)
        status["readyReplicas"] = len(ready)
        status["availableReplicas"] = len([m for m in machines if is_true(m, "Available")])
        status["upToDateReplicas"] = len(live) if current else 0
        gen = meta(ms).get("generation")
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
        conds = [
            condition("MachinesReady", not not_ready,
                      ("Ready" if machines else "NoReplicas") if not not_ready else "NotReady",
                      "" if not not_ready else "Not ready: " + ", ".join(not_ready)),
            condition("MachinesUpToDate", current or not live,
                      "UpToDate" if current or not live else "NotUpToDate"),
            condition("ScalingUp", len(live) < desired,
                      "ScalingUp" if len(live) < desired else "NotScalingUp",
                      f"Scaling up from {len(live)} to {desired} replicas"
                      if len(live) < desired else ""),
            condition("ScalingDown", len(machines) > desired,
                      "ScalingDown" if len(machines) > desired else "NotScalingDown",
                      f"Scaling down from {len(machines)} to {desired} replicas"
                      if len(machines) > desired else ""),
            condition("Remediating", False, "NotRemediating"),
            condition("Deleting", False, "NotDeleting"),
            condition("Paused", False, "NotPaused"),
        ]
        self.ctx.api.set_status(ms, with_conditions(status, ms, conds))


__all__ = ["MachineSetReconciler", "owned_machines", "replicas_of"]
