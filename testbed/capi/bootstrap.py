"""The kubeadm bootstrap provider: turns a KubeadmConfig into a bootstrap data Secret.

As the real one, it waits for the owning Machine and the cluster infrastructure; the first
control plane machine "inits" at once, every other machine "joins" and so waits for the control
plane to be initialized. Rendering takes one `step_delay`, the Machine's Pending phase.
"""

from __future__ import annotations

from .api import KUBEADMCONFIGS, MACHINES
from .runtime import Context
from .secrets import cloud_config, ensure_bootstrap_secret
from .util import (
    CONTROL_PLANE_LABEL,
    Obj,
    condition,
    dig,
    labels,
    meta,
    owner_of_kind,
    with_conditions,
)


class KubeadmConfigReconciler:
    kinds = (KUBEADMCONFIGS,)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def reconcile(self, obj: Obj) -> float | None:
        api = self.ctx.api
        if meta(obj).get("deletionTimestamp"):
            return None
        ref = owner_of_kind(obj, "Machine")
        if ref is None:
            return None  # WaitingForOwner: the Machine controller sets it
        machine = api.get(MACHINES, meta(obj).get("namespace"), str(ref.get("name", "")))
        cluster = api.cluster_of(machine) if machine is not None else None
        if machine is None or cluster is None:
            return None
        done = dig(obj, "status", "initialization", "dataSecretCreated") is True
        control_plane = CONTROL_PLANE_LABEL in labels(machine) or \
            CONTROL_PLANE_LABEL in labels(obj)
        initialized = dig(cluster, "status", "initialization", "controlPlaneInitialized") is True
        if not done:
            if dig(cluster, "status", "initialization", "infrastructureProvisioned") is not True:
                return self._waiting(obj, "WaitingForClusterInfrastructureReady")
            if not control_plane and not initialized:
                return self._waiting(obj, "WaitingForControlPlaneInitialized")
            left = self.ctx.timers.remaining(meta(obj)["uid"], "render",
                                             self.ctx.config.step_delay)
            if left > 0:
                return left
            data = cloud_config(meta(machine)["name"], initialized, control_plane)
            if not ensure_bootstrap_secret(api, obj, meta(cluster)["name"], data):
                return self.ctx.config.step_delay
        status = dict(obj.get("status") or {})
        status["dataSecretName"] = meta(obj)["name"]
        status["initialization"] = {"dataSecretCreated": True}
        gen = meta(obj).get("generation")
        if isinstance(gen, int):
            status["observedGeneration"] = gen
        conds = [condition("Ready", True, "Ready"),
                 condition("DataSecretAvailable", True, "Available"),
                 condition("Paused", False, "NotPaused")]
        if control_plane:
            conds.append(condition("CertificatesAvailable", True, "Available"))
        api.set_status(obj, with_conditions(status, obj, conds))
        return None

    def _waiting(self, obj: Obj, reason: str) -> float | None:
        status = dict(obj.get("status") or {})
        status["initialization"] = {"dataSecretCreated": False}
        with_conditions(status, obj, [condition("Ready", False, reason),
                                      condition("DataSecretAvailable", False, reason),
                                      condition("Paused", False, "NotPaused")])
        self.ctx.api.set_status(obj, status)
        return None
