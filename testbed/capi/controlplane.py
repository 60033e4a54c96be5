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

from .api import KCPS, MACHINES
from .infra import endpoint_for
from .machines import MachinePlan, create_machine, ensure_parts
from .runtime import Context
from .secrets import ensure_cluster_secrets
from .util import (
    CLONED_FROM_NAME,
    CLUSTER_NAME_LABEL,
    CONTROL_PLANE_LABEL,
    CONTROL_PLANE_NAME_LABEL,
    Obj,
    annots,
    condition,
    created_key,
    deleting,
    dig,
    is_true,
    label_value,
    meta,
    now,
    owned_by,
    parse_time,
    selector_string,
    version_key,
    with_conditions,
    with_owner,
)


def running(m: Obj) -> bool:
    return dig(m, "status", "phase") == "Running" and dig(m, "status", "nodeRef") is not None


def kubeconfig_server(ctx: Context, ns: str, cluster: Obj) -> str:
    """The URL the kubeconfig Secret points at: the workload cluster's own API when there is
    one, else the cluster's control plane endpoint (a placeholder that never answers)."""
    name = meta(cluster)["name"]
    url = ctx.workload_server(ns, name)
    if url:
        return url
    host = dig(cluster, "spec", "controlPlaneEndpoint", "host")
    port = dig(cluster, "spec", "controlPlaneEndpoint", "port")
    if not host:
        host, port = endpoint_for(ctx, ns, name)
    return f"https://{host}:{port or 6443}"


class KubeadmControlPlaneReconciler:
    kinds = (KCPS,)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def reconcile(self, kcp: Obj) -> float | None:
        api = self.ctx.api
        if deleting(kcp):
            return None  # its Machines go through garbage collection (they are owned)
        cluster = api.cluster_of(kcp)
        if cluster is None:
            return None
        ns = meta(kcp).get("namespace", "")
        spec = kcp.get("spec") or {}
        template_ref = dig(spec, "machineTemplate", "spec", "infrastructureRef")
        template = api.get_ref(template_ref, ns)
        if template is not None:
            owned = with_owner(template, cluster)
            if owned is not None:
                api.update(owned)
        bootstrap_spec = copy.deepcopy(spec.get("kubeadmConfigSpec") or {})
        machines = sorted((m for m in api.list_of(MACHINES, ns) if owned_by(m, kcp, True)),
                          key=created_key)
        for m in machines:
            ensure_parts(self.ctx, m, template, bootstrap_spec)
        outdated, recheck = self._outdated(kcp, machines)
        self._mark_up_to_date(machines, outdated)

        initialized = dig(kcp, "status", "initialization", "controlPlaneInitialized") is True \
            or any(running(m) for m in machines)
        secrets_ok = False
        if initialized:
            secrets_ok = ensure_cluster_secrets(api, ns, meta(cluster)["name"], kcp,
                                                kubeconfig_server(self.ctx, ns, cluster))
        infra_ready = dig(cluster, "status", "initialization", "infrastructureProvisioned") is True
        if infra_ready and template is not None:
            self._scale(kcp, cluster, template, bootstrap_spec, machines, outdated, initialized)
            machines = sorted((m for m in api.list_of(MACHINES, ns) if owned_by(m, kcp, True)),
                              key=created_key)
            outdated, recheck = self._outdated(kcp, machines)
        self._write_status(kcp, cluster, machines, outdated, initialized, secrets_ok)
        return recheck

    # -- decisions --------------------------------------------------------------------------
    def _outdated(self, kcp: Obj, machines: list[Obj]) -> tuple[dict[str, str], float | None]:
        """Machine name -> why it needs replacing; plus when to look again (rollout.after)."""
        api = self.ctx.api
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
            infra = api.get_ref(dig(m, "spec", "infrastructureRef"), ns)
            cloned = annots(infra).get(CLONED_FROM_NAME) if infra is not None else None
            if cloned and want_template and cloned != want_template:
                out[name] = f"{infra_kind_name(m)} is not up-to-date"
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
        desired = dig(kcp, "spec", "replicas")
        desired = desired if isinstance(desired, int) else 1
        if not machines:
            if desired > 0:
                self._create(kcp, cluster, template, bootstrap_spec)
            return
        if not initialized or not all(running(m) for m in machines):
            return
        if len(machines) > desired:
            victims = [m for m in machines if meta(m)["name"] in outdated] or machines
            self.ctx.api.delete(victims[0])  # oldest outdated first, else oldest
        elif len(machines) < desired or outdated:
            self._create(kcp, cluster, template, bootstrap_spec)

    def _create(self, kcp: Obj, cluster: Obj, template: Obj, bootstrap_spec: Obj) -> None:
        spec = kcp.get("spec") or {}
        mt = spec.get("machineTemplate") or {}
        mt_spec = mt.get("spec") or {}
        machine_spec: Obj = {"version": spec.get("version")}
        for f in ("deletion", "readinessGates", "taints"):
            if f in mt_spec:
                machine_spec[f] = copy.deepcopy(mt_spec[f])
        mt_meta = mt.get("metadata") or {}
        plan = MachinePlan(
            prefix=meta(kcp)["name"],
            cluster=meta(cluster)["name"],
            owner=kcp,
            spec=machine_spec,
            infra_template=template,
            bootstrap_spec=bootstrap_spec,
            labels={**(mt_meta.get("labels") or {}),
                    CLUSTER_NAME_LABEL: meta(cluster)["name"],
                    CONTROL_PLANE_LABEL: "",
                    CONTROL_PLANE_NAME_LABEL: label_value(meta(kcp)["name"])},
            annotations=dict(mt_meta.get("annotations") or {}),
        )
        create_machine(self.ctx, meta(kcp).get("namespace", ""), plan)

    def _mark_up_to_date(self, machines: list[Obj], outdated: dict[str, str]) -> None:
        for m in machines:
            if deleting(m):
                continue
            why = outdated.get(meta(m)["name"])
            cond = condition("UpToDate", why is None, "UpToDate" if why is None else
                             "NotUpToDate", why or "")
            status = dict(m.get("status") or {})
            self.ctx.api.set_status(m, with_conditions(status, m, [cond]))

    # -- status -----------------------------------------------------------------------------
    def _write_status(self, kcp: Obj, cluster: Obj, machines: list[Obj],
                      outdated: dict[str, str], initialized: bool, secrets_ok: bool) -> None:
        api = self.ctx.api
        desired = dig(kcp, "spec", "replicas")
        desired = desired if isinstance(desired, int) else 1
        active = [m for m in machines if not deleting(m)]
        ready = [m for m in machines if is_true(m, "Ready")]
        available = [m for m in machines if is_true(m, "Available")]
        up_to_date = [m for m in machines if meta(m)["name"] not in outdated]
        versions: dict[str, int] = {}
        for m in machines:
            v = dig(m, "spec", "version")
            if isinstance(v, str) and v:
                versions[v] = versions.get(v, 0) + 1
        running_versions = [dig(m, "spec", "version") for m in machines if running(m)
                            and isinstance(dig(m, "spec", "version"), str)]
        status: Obj = {k: v for k, v in (kcp.get("status") or {}).items()
                       if k in ("conditions", "lastRemediation")}
        status["selector"] = selector_string(
            {CLUSTER_NAME_LABEL: meta(cluster)["name"]}, (CONTROL_PLANE_LABEL,))
        status["replicas"] = len(machines)
        status["readyReplicas"] = len(ready)
        status["availableReplicas"] = len(available)
        status["upToDateReplicas"] = len(up_to_date)
        if running_versions:
            status["version"] = min(running_versions, key=version_key)
        if versions:
            status["versions"] = [{"version": v, "replicas": n}
                                  for v, n in sorted(versions.items(),
                                                     key=lambda kv: version_key(kv[0]))]
        gen = meta(kcp).get("generation")
        if isinstance(gen, int):
            status["observedGeneration"] = gen
        status["initialization"] = {"controlPlaneInitialized": initialized}
        not_ready = sorted(meta(m)["name"] for m in machines if not is_true(m, "Ready"))
        conds = [
            condition("Available", initialized and bool(ready),
                      "Available" if initialized and ready else "NotAvailable",
                      "" if initialized and ready else "Control plane not yet available"),
            condition("Initialized", initialized,
                      "Initialized" if initialized else "NotInitialized",
                      "" if initialized else "Control plane not yet initialized"),
            condition("CertificatesAvailable", secrets_ok,
                      "Available" if secrets_ok else "NotAvailable"),
            condition("MachinesReady", not not_ready,
                      ("Ready" if machines else "NoReplicas") if not not_ready else "NotReady",
                      "" if not not_ready else "Not ready: " + ", ".join(not_ready)),
            condition("MachinesUpToDate", not outdated,
                      "UpToDate" if not outdated else "NotUpToDate",
                      "" if not outdated else "Not up-to-date: " + ", ".join(sorted(outdated))),
            condition("RollingOut", bool(outdated),
                      "RollingOut" if outdated else "NotRollingOut",
                      "" if not outdated else "Rolling out " + ", ".join(
                          sorted(set(outdated.values())))),
            condition("ScalingUp", len(active) < desired,
                      "ScalingUp" if len(active) < desired else "NotScalingUp",
                      f"Scaling up from {len(active)} to {desired} replicas"
                      if len(active) < desired else ""),
            condition("ScalingDown", len(active) > desired,
                      "ScalingDown" if len(active) > desired else "NotScalingDown",
                      f"Scaling down from {len(active)} to {desired} replicas"
                      if len(active) > desired else ""),
            condition("Remediating", False, "NotRemediating"),
            condition("Deleting", False, "NotDeleting"),
            condition("Paused", False, "NotPaused"),
        ]
        api.set_status(kcp, with_conditions(status, kcp, conds))


def infra_kind_name(m: Obj) -> str:
    return str(dig(m, "spec", "infrastructureRef", "kind") or "InfrastructureMachine")

