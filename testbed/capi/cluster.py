"""The Cluster controller: owns the cluster's infra and control plane objects, summarises them.

It takes ownership of the objects `spec.infrastructureRef` and `spec.controlPlaneRef` name,
copies the infrastructure's control plane endpoint, and reports v1beta2 status: the one-way
`initialization` flags, `phase`, replica summaries of control plane and workers, and the
conditions clients read (InfrastructureReady, ControlPlaneInitialized, ControlPlaneAvailable,
WorkersAvailable, Available, ...). Deleting a Cluster deletes everything below it first.
"""

from __future__ import annotations

from .api import CLUSTERS, MACHINEDEPLOYMENTS, MACHINES, MACHINESETS
from .conditions import condition, flag, get_condition, is_true, with_conditions
from .replicas import machines_ready, spec_replicas
from .runtime import Reconciler
from .util import (
    CLUSTER_FINALIZER,
    CLUSTER_NAME_LABEL,
    CONTROL_PLANE_LABEL,
    Obj,
    deleting,
    dig,
    labels,
    meta,
    observe,
    released,
)

_SUMMARY = ("replicas", "readyReplicas", "availableReplicas", "upToDateReplicas")


def _in_cluster(obj: Obj, name: str) -> bool:
    return dig(obj, "spec", "clusterName") == name or labels(obj).get(CLUSTER_NAME_LABEL) == name


def _mirror(type_: str, obj: Obj | None, kind: str, source: str, fallback: bool) -> Obj:
    """A Cluster condition copied from the referenced object's `source` condition; derived
    from `fallback` while it has none, and False while the object does not exist."""
    if obj is None:
        return condition(type_, False, "ObjectDoesNotExist", f"{kind} does not exist")
    src = get_condition(obj, source)
    if src is None:
        return flag(type_, fallback, source)
    return {"type": type_, "status": src.get("status", "Unknown"),
            "reason": src.get("reason") or source, "message": src.get("message") or ""}


class ClusterReconciler(Reconciler):
    kinds = (CLUSTERS,)

    def reconcile(self, c: Obj) -> float | None:
        if deleting(c):
            return self._delete(c)
        api = self.api
        c = api.claim(c, finalizer=CLUSTER_FINALIZER) or c
        ns = meta(c).get("namespace", "")
        name = meta(c)["name"]
        infra = self._adopt(c, "infrastructureRef")
        cp = self._adopt(c, "controlPlaneRef")
        endpoint = dig(infra, "spec", "controlPlaneEndpoint") if infra is not None else None
        if isinstance(endpoint, dict) and endpoint.get("host") and \
                not dig(c, "spec", "controlPlaneEndpoint", "host"):
            c = api.update_spec(c, controlPlaneEndpoint={
                "host": endpoint["host"], "port": endpoint.get("port") or 6443}) or c
        mds = [md for md in api.list_of(MACHINEDEPLOYMENTS, ns) if _in_cluster(md, name)]
        machines = [m for m in api.list_of(MACHINES, ns) if _in_cluster(m, name)]
        api.set_status(c, self._status(c, infra, cp, mds, machines))
        return None

    def _adopt(self, c: Obj, ref: str) -> Obj | None:
        """The object spec.<ref> names, controlled by (and labelled with) the Cluster."""
        obj = self.api.get_ref(dig(c, "spec", ref), meta(c).get("namespace", ""))
        if obj is None:
            return None
        return self.api.claim(obj, c, controller=True, cluster=meta(c)["name"]) or obj

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
        observe(status, c)
        domains = dig(infra, "status", "failureDomains") if infra is not None else None
        if isinstance(domains, list) and domains:
            status["failureDomains"] = domains
        if cp is not None:
            status["controlPlane"] = {"desiredReplicas": spec_replicas(cp),
                                      **{k: int(dig(cp, "status", k) or 0) for k in _SUMMARY}}
        status["workers"] = {
            "desiredReplicas": sum(int(dig(md, "spec", "replicas") or 0) for md in mds),
            **{k: sum(int(dig(md, "status", k) or 0) for md in mds) for k in _SUMMARY}}

        infra_cond = _mirror("InfrastructureReady", infra,
                             dig(c, "spec", "infrastructureRef", "kind") or
                             "InfrastructureCluster", "Ready", infra_ok)
        cp_avail = _mirror("ControlPlaneAvailable", cp,
                           dig(c, "spec", "controlPlaneRef", "kind") or "ControlPlane",
                           "Available", cp_init)
        bad_mds = sorted(meta(md)["name"] for md in mds if not is_true(md, "Available"))
        workers_cond = condition("WorkersAvailable", not bad_mds,
                                 ("Available" if mds else "NoWorkers") if not bad_mds
                                 else "NotAvailable",
                                 "Not available: " + ", ".join(bad_mds) if bad_mds else "")
        probe = condition("RemoteConnectionProbe", cp_init,
                          "ProbeSucceeded" if cp_init else "ProbeFailed",
                          "" if cp_init else "Control plane not yet initialized")
        failing = [x["type"] for x in (infra_cond, cp_avail, workers_cond, probe)
                   if x["status"] != "True"]
        conds = [
            flag("Available", not failing, "Available",
                 "Not available: " + ", ".join(failing) if failing else ""),
            infra_cond,
            flag("ControlPlaneInitialized", cp_init, "Initialized",
                 "" if cp_init else "Control plane not yet initialized"),
            cp_avail,
            workers_cond,
            probe,
            machines_ready([m for m in machines if CONTROL_PLANE_LABEL in labels(m)],
                           "ControlPlaneMachinesReady"),
            machines_ready([m for m in machines if CONTROL_PLANE_LABEL not in labels(m)],
                           "WorkerMachinesReady"),
            condition("Deleting", False, "NotDeleting"),
            condition("Paused", False, "NotPaused"),
        ]
        return with_conditions(status, c, conds)

    def _delete(self, c: Obj) -> float | None:
        """Delete workers and control plane, wait for every Machine, then the infra cluster."""
        if CLUSTER_FINALIZER not in (meta(c).get("finalizers") or []):
            return None
        api = self.api
        ns = meta(c).get("namespace", "")
        name = meta(c)["name"]
        c = api.set_conditions(c, [condition("Deleting", True, "Deleting")],
                               phase="Deleting") or c
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
        api.update(released(c, CLUSTER_FINALIZER))
        return None
