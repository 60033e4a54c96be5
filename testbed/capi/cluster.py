"""The Cluster controller: owns the cluster's infra and control plane objects, summarises them.

It takes ownership of the objects `spec.infrastructureRef` and `spec.controlPlaneRef` name,
copies the infrastructure's control plane endpoint, and reports v1beta2 status: the one-way
`initialization` flags, `phase`, replica summaries of control plane and workers, and the
conditions clients read (InfrastructureReady, ControlPlaneInitialized, ControlPlaneAvailable,
WorkersAvailable, Available, ...). Deleting a Cluster deletes everything below it first.
"""

from __future__ import annotations

import copy

from .api import CLUSTERS, MACHINEDEPLOYMENTS, MACHINES, MACHINESETS
from .runtime import Context
from .util import (
    CLUSTER_FINALIZER,
    CLUSTER_NAME_LABEL,
    CONTROL_PLANE_LABEL,
    Obj,
    condition,
    deleting,
    dig,
    get_condition,
    is_true,
    labels,
    meta,
    with_conditions,
    with_owner,
)

_SUMMARY = ("replicas", "readyReplicas", "availableReplicas", "upToDateReplicas")


def _in_cluster(obj: Obj, name: str) -> bool:
    return dig(obj, "spec", "clusterName") == name or labels(obj).get(CLUSTER_NAME_LABEL) == name


def _machines_ready(machines: list[Obj], what: str) -> Obj:
    if not machines:
        return condition(what, True, "NoReplicas")
    bad = sorted(meta(m)["name"] for m in machines if not is_true(m, "Ready"))
    return condition(what, not bad, "NotReady" if bad else "Ready",
                     "Not ready: " + ", ".join(bad) if bad else "")


class ClusterReconciler:
    kinds = (CLUSTERS,)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def reconcile(self, c: Obj) -> float | None:
        if deleting(c):
            return self._delete(c)
        api = self.ctx.api
        if CLUSTER_FINALIZER not in (meta(c).get("finalizers") or []):
            new = copy.deepcopy(c)
            new["metadata"]["finalizers"] = [*(meta(c).get("finalizers") or []),
                                             CLUSTER_FINALIZER]
            c = api.update(new) or c
        ns = meta(c).get("namespace", "")
        name = meta(c)["name"]
        infra = self._adopt(api.get_ref(dig(c, "spec", "infrastructureRef"), ns), c)
        cp = self._adopt(api.get_ref(dig(c, "spec", "controlPlaneRef"), ns), c)
        endpoint = dig(infra, "spec", "controlPlaneEndpoint") if infra is not None else None
        if isinstance(endpoint, dict) and endpoint.get("host") and \
                not dig(c, "spec", "controlPlaneEndpoint", "host"):
            new = copy.deepcopy(c)
            new["spec"]["controlPlaneEndpoint"] = {"host": endpoint["host"],
                                                   "port": endpoint.get("port") or 6443}
            c = api.update(new) or c
        mds = [md for md in api.list_of(MACHINEDEPLOYMENTS, ns) if _in_cluster(md, name)]
        machines = [m for m in api.list_of(MACHINES, ns) if _in_cluster(m, name)]
        api.set_status(c, self._status(c, infra, cp, mds, machines))
        return None

    def _adopt(self, obj: Obj | None, cluster: Obj) -> Obj | None:
        """Infra cluster and control plane are controlled by (and labelled with) the Cluster."""
        if obj is None:
            return None
        new = with_owner(obj, cluster, controller=True)
        if new is None and labels(obj).get(CLUSTER_NAME_LABEL) == meta(cluster)["name"]:
            return obj
        new = new or copy.deepcopy(obj)
        new["metadata"].setdefault("labels", {})[CLUSTER_NAME_LABEL] = meta(cluster)["name"]
        return self.ctx.api.update(new) or obj

    def _status(self, c: Obj, infra: Obj | None, cp: Obj | None, mds: list[Obj],
                machines: list[Obj]) -> Obj:
        old = c.get("status") or {}
        status: Obj = {k: v for k, v in old.items() if k in ("conditions", "deprecated")}
        was = old.get("initialization") or {}
        infra_ok = bool(was.get("infrastructureProvisioned")) or (
            infra is not None and dig(infra, "status", "initialization", "provisioned") is True)
        cp_init = bool(was.get("controlPlaneInitialized")) or (
            cp is not None and dig(cp, "status", "initialization",
                                   "controlPlaneInitialized") is True)
        status["initialization"] = {"infrastructureProvisioned": infra_ok,
                                    "controlPlaneInitialized": cp_init}
        if infra_ok and dig(c, "spec", "controlPlaneEndpoint", "host"):
            status["phase"] = "Provisioned"
        elif dig(c, "spec", "infrastructureRef") or dig(c, "spec", "controlPlaneRef"):
            status["phase"] = "Provisioning"
        else:
            status["phase"] = "Pending"
        gen = meta(c).get("generation")
        if isinstance(gen, int):
            status["observedGeneration"] = gen
        domains = dig(infra, "status", "failureDomains") if infra is not None else None
        if isinstance(domains, list) and domains:
            status["failureDomains"] = domains
        if cp is not None:
            summary = {"desiredReplicas": dig(cp, "spec", "replicas")
                       if isinstance(dig(cp, "spec", "replicas"), int) else 1}
            summary.update({k: int(dig(cp, "status", k) or 0) for k in _SUMMARY})
            status["controlPlane"] = summary
        workers = {"desiredReplicas": sum(int(dig(md, "spec", "replicas") or 0) for md in mds)}
        workers.update({k: sum(int(dig(md, "status", k) or 0) for md in mds) for k in _SUMMARY})
        status["workers"] = workers

        infra_kind = dig(c, "spec", "infrastructureRef", "kind") or "InfrastructureCluster"
        if infra is None:
            infra_cond = condition("InfrastructureReady", False, "ObjectDoesNotExist",
                                   f"{infra_kind} does not exist")
        elif get_condition(infra, "Ready") is not None:
            src = get_condition(infra, "Ready") or {}
            infra_cond = {"type": "InfrastructureReady", "status": src.get("status", "Unknown"),
                          "reason": src.get("reason") or "Ready",
                          "message": src.get("message") or ""}
        else:
            infra_cond = condition("InfrastructureReady", infra_ok,
                                   "Ready" if infra_ok else "NotReady")
        cp_kind = dig(c, "spec", "controlPlaneRef", "kind") or "ControlPlane"
        cp_src = get_condition(cp, "Available") if cp is not None else None
        if cp is None:
            cp_avail = condition("ControlPlaneAvailable", False, "ObjectDoesNotExist",
                                 f"{cp_kind} does not exist")
        elif cp_src is not None:
            cp_avail = {"type": "ControlPlaneAvailable",
                        "status": cp_src.get("status", "Unknown"),
                        "reason": cp_src.get("reason") or "Available",
                        "message": cp_src.get("message") or ""}
        else:
            cp_avail = condition("ControlPlaneAvailable", cp_init,
                                 "Available" if cp_init else "NotAvailable")
        bad_mds = sorted(meta(md)["name"] for md in mds if not is_true(md, "Available"))
        workers_cond = condition("WorkersAvailable", not bad_mds,
                                 ("Available" if mds else "NoWorkers") if not bad_mds
                                 else "NotAvailable",
                                 "Not available: " + ", ".join(bad_mds) if bad_mds else "")
        probe = condition("RemoteConnectionProbe", cp_init,
                          "ProbeSucceeded" if cp_init else "ProbeFailed",
                          "" if cp_init else "Control plane not yet initialized")
        summary_of = (infra_cond, cp_avail, workers_cond, probe)
        failing = [x["type"] for x in summary_of if x["status"] != "True"]
        cp_machines = [m for m in machines if CONTROL_PLANE_LABEL in labels(m)]
        worker_machines = [m for m in machines if CONTROL_PLANE_LABEL not in labels(m)]
        conds = [
            condition("Available", not failing, "NotAvailable" if failing else "Available",
                      "Not available: " + ", ".join(failing) if failing else ""),
            infra_cond,
            condition("ControlPlaneInitialized", cp_init,
                      "Initialized" if cp_init else "NotInitialized",
                      "" if cp_init else "Control plane not yet initialized"),
            cp_avail,
            workers_cond,
            probe,
            _machines_ready(cp_machines, "ControlPlaneMachinesReady"),
            _machines_ready(worker_machines, "WorkerMachinesReady"),
            condition("Deleting", False, "NotDeleting"),
            condition("Paused", False, "NotPaused"),
        ]
        return with_conditions(status, c, conds)

    def _delete(self, c: Obj) -> float | None:
        """Delete workers and control plane, wait for every Machine, then the infra cluster."""
        finalizers = meta(c).get("finalizers") or []
        if CLUSTER_FINALIZER not in finalizers:
            return None
        api = self.ctx.api
        ns = meta(c).get("namespace", "")
        name = meta(c)["name"]
        status = dict(c.get("status") or {})
        status["phase"] = "Deleting"
        with_conditions(status, c, [condition("Deleting", True, "Deleting")])
        c = api.set_status(c, status) or c
        below: list[Obj] = [o for kind in (MACHINEDEPLOYMENTS, MACHINESETS, MACHINES)
                 for o in api.list_of(kind, ns) if _in_cluster(o, name)]
        cp = api.get_ref(dig(c, "spec", "controlPlaneRef"), ns)
        if cp is not None:
            below.append(cp)
        for o in below:
            api.delete(o)
        if below:
            return self.ctx.config.step_delay
        infra = api.get_ref(dig(c, "spec", "infrastructureRef"), ns)
        if infra is not None:
            api.delete(infra)
            return self.ctx.config.step_delay
        new = copy.deepcopy(c)
        new["metadata"]["finalizers"] = [f for f in finalizers if f != CLUSTER_FINALIZER]
        api.update(new)
        return None
