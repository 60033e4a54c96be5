"""The KubeadmControlPlane controller: control plane Machines, rollouts and cluster secrets.

Like the real KCP it changes one Machine at a time and only when every existing Machine is
Running: the first Machine initializes the control plane (then the cluster's CA and kubeconfig
Secrets are written), scale-up adds one, scale-down removes outdated ones first, then the
oldest, and a rollout surges by one (create an up-to-date Machine, wait for it, delete an
outdated one). A Machine is outdated on a version change, an infra template change,
`spec.rollout.after` having passed since its creation, or certificates expiring within
`spec.rollout.before.certificatesExpiryDays`.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

from testbed.kubeconfig import kubeconfig

from .api import KCPS, MACHINES
from .conditions import flag, with_conditions
from .infra import endpoint_for
from .machines import MachinePlan, create_machine, ensure_parts
from .replicas import mark_up_to_date, replica_conditions, replica_status, spec_replicas
from .runtime import Context, Reconciler
from .secrets import ensure_cluster_secrets
from .util import (
    CLONED_FROM_NAME,
    CLUSTER_NAME_LABEL,
    CONTROL_PLANE_LABEL,
    CONTROL_PLANE_NAME_LABEL,
    Obj,
    annots,
    deleting,
    dig,
    label_value,
    meta,
    now,
    parse_time,
    selector_string,
    version_key,
)


def running(m: Obj) -> bool:
    return dig(m, "status", "phase") == "Running" and dig(m, "status", "nodeRef") is not None


def cluster_kubeconfig(ctx: Context, ns: str, cluster: Obj) -> dict[str, Any]:
    """What the kubeconfig Secret holds: the workload cluster's own admin kubeconfig when
    there is one, else one for the control plane endpoint (a placeholder that never answers)."""
    name = meta(cluster)["name"]
    workload = ctx.workload_api(ns, name)
    if workload is not None:
        return workload.kubeconfig(name)
    host = dig(cluster, "spec", "controlPlaneEndpoint", "host")
    port = dig(cluster, "spec", "controlPlaneEndpoint", "port")
    if not host:
        host, port = endpoint_for(ctx, ns, name)
    return kubeconfig(name, f"https://{host}:{port or 6443}")


class KubeadmControlPlaneReconciler(Reconciler):
    kinds = (KCPS,)

    def reconcile(self, kcp: Obj) -> float | None:
        api = self.api
        if deleting(kcp):
            return None  # its Machines go through garbage collection (they are owned)
        cluster = api.cluster_of(kcp)
        if cluster is None:
            return None
        ns = meta(kcp).get("namespace", "")
        spec = kcp.get("spec") or {}
        template = api.get_ref(dig(spec, "machineTemplate", "spec", "infrastructureRef"), ns)
        if template is not None:
            api.claim(template, cluster)
        bootstrap_spec = copy.deepcopy(spec.get("kubeadmConfigSpec") or {})
        machines = api.children(MACHINES, kcp)
        for m in machines:
            ensure_parts(self.ctx, m, template, bootstrap_spec)
        outdated, recheck = self._outdated(kcp, machines)
        mark_up_to_date(api, machines, outdated)

        initialized = dig(kcp, "status", "initialization", "controlPlaneInitialized") is True \
            or any(running(m) for m in machines)
        secrets_ok = initialized and ensure_cluster_secrets(
            api, ns, meta(cluster)["name"], kcp, cluster_kubeconfig(self.ctx, ns, cluster))
        infra_ready = dig(cluster, "status", "initialization", "infrastructureProvisioned") is True
        if infra_ready and template is not None:
            self._scale(kcp, cluster, template, bootstrap_spec, machines, outdated, initialized)
            machines = api.children(MACHINES, kcp)
            outdated, recheck = self._outdated(kcp, machines)
        self._write_status(kcp, cluster, machines, outdated, initialized, secrets_ok)
        return recheck

    # -- decisions --------------------------------------------------------------------------
    def _outdated(self, kcp: Obj, machines: list[Obj]) -> tuple[dict[str, str], float | None]:
        """Machine name -> why it needs replacing; plus when to look again (rollout.after)."""
        spec = kcp.get("spec") or {}
        ns = meta(kcp).get("namespace", "")
        want_version = spec.get("version")
        want_template = dig(spec, "machineTemplate", "spec", "infrastructureRef", "name")
        after = parse_time(dig(spec, "rollout", "after"))
        before_days = dig(spec, "rollout", "before", "certificatesExpiryDays")
        t = now()
        recheck: float | None = None
        out: dict[str, str] = {}
        for m in machines:
            name = meta(m)["name"]
            if dig(m, "spec", "version") != want_version:
                out[name] = f"Version {dig(m, 'spec', 'version')}, {want_version} required"
                continue
            infra = self.api.get_ref(dig(m, "spec", "infrastructureRef"), ns)
            cloned = annots(infra).get(CLONED_FROM_NAME) if infra is not None else None
            if cloned and want_template and cloned != want_template:
                kind = dig(m, "spec", "infrastructureRef", "kind") or "InfrastructureMachine"
                out[name] = f"{kind} is not up-to-date"
                continue
            if after is not None:
                created = parse_time(meta(m).get("creationTimestamp"))
                if after <= t and created is not None and created < after:
                    out[name] = "KubeadmControlPlane spec.rollout.after expired"
                    continue
                if after > t:
                    wait = (after - t).total_seconds()
                    recheck = wait if recheck is None else min(recheck, wait)
            expiry = parse_time(dig(m, "status", "certificatesExpiryDate"))
            if isinstance(before_days, int) and expiry is not None and \
                    expiry - t < timedelta(days=before_days):
                out[name] = "Certificates will expire soon, rollout needed"
        return out, recheck

    def _scale(self, kcp: Obj, cluster: Obj, template: Obj, bootstrap_spec: Obj,
               machines: list[Obj], outdated: dict[str, str], initialized: bool) -> None:
        """At most one change per pass, and only when nothing else is in flight."""
        if any(deleting(m) for m in machines):
            return
        desired = spec_replicas(kcp)
        if not machines:
            if desired > 0:
                self._create(kcp, cluster, template, bootstrap_spec)
            return
        if not initialized or not all(running(m) for m in machines):
            return
        if len(machines) > desired:
            victims = [m for m in machines if meta(m)["name"] in outdated] or machines
            self.api.delete(victims[0])  # oldest outdated first, else oldest
        elif len(machines) < desired or outdated:
            self._create(kcp, cluster, template, bootstrap_spec)

    def _create(self, kcp: Obj, cluster: Obj, template: Obj, bootstrap_spec: Obj) -> None:
        spec = kcp.get("spec") or {}
        mt = spec.get("machineTemplate") or {}
        mt_spec = mt.get("spec") or {}
        machine_spec = {"version": spec.get("version"),
                        **{f: mt_spec[f] for f in ("deletion", "readinessGates", "taints")
                           if f in mt_spec}}
        create_machine(self.ctx, MachinePlan(
            owner=kcp,
            cluster=meta(cluster)["name"],
            spec=machine_spec,
            infra_template=template,
            bootstrap_spec=bootstrap_spec,
            template_meta=mt.get("metadata") or {},
            labels={CONTROL_PLANE_LABEL: "",
                    CONTROL_PLANE_NAME_LABEL: label_value(meta(kcp)["name"])},
        ))

    # -- status -----------------------------------------------------------------------------
    def _write_status(self, kcp: Obj, cluster: Obj, machines: list[Obj],
                      outdated: dict[str, str], initialized: bool, secrets_ok: bool) -> None:
        desired = spec_replicas(kcp)
        active = sum(not deleting(m) for m in machines)
        status = replica_status(
            kcp, machines,
            selector=selector_string({CLUSTER_NAME_LABEL: meta(cluster)["name"]},
                                     (CONTROL_PLANE_LABEL,)),
            up_to_date=sum(meta(m)["name"] not in outdated for m in machines),
            keep=("conditions", "lastRemediation"))
        running_versions = [v for m in machines
                            if running(m) and isinstance(v := dig(m, "spec", "version"), str)]
        if running_versions:
            status["version"] = min(running_versions, key=version_key)
        status["initialization"] = {"controlPlaneInitialized": initialized}
        available = initialized and status["readyReplicas"] > 0
        conds = [
            flag("Available", available, "Available",
                 "" if available else "Control plane not yet available"),
            flag("Initialized", initialized, "Initialized",
                 "" if initialized else "Control plane not yet initialized"),
            flag("CertificatesAvailable", secrets_ok, "Available"),
            *replica_conditions(machines, desired, up_from=active, down_from=active, rollout=[
                flag("MachinesUpToDate", not outdated, "UpToDate",
                     "Not up-to-date: " + ", ".join(sorted(outdated)) if outdated else ""),
                flag("RollingOut", bool(outdated), "RollingOut",
                     "Rolling out " + ", ".join(sorted(set(outdated.values())))
                     if outdated else ""),
            ]),
        ]
        self.api.set_status(kcp, with_conditions(status, kcp, conds))
