"""The kubeadm bootstrap provider: turns a KubeadmConfig into a bootstrap data Secret.

As the real one, it waits for the owning Machine and the cluster infrastructure; the first
control plane machine "inits" at once, every other machine "joins" and so waits for the control
plane to be initialized. Rendering takes one `step_delay`, the Machine's Pending phase.
"""

from __future__ import annotations

from .api import KUBEADMCONFIGS
from .conditions import condition
from .runtime import Reconciler
from .secrets import cloud_config, ensure_bootstrap_secret
from .util import CONTROL_PLANE_LABEL, Obj, deleting, dig, labels, meta, observe


class KubeadmConfigReconciler(Reconciler):
    kinds = (KUBEADMCONFIGS,)

    def reconcile(self, obj: Obj) -> float | None:
        if deleting(obj):
            return None
        machine = self.api.machine_of(obj)  # WaitingForOwner until the Machine controller sets it
        cluster = self.api.cluster_of(machine) if machine is not None else None
        if machine is None or cluster is None:
            return None
        step = self.ctx.config.step_delay
        control_plane = CONTROL_PLANE_LABEL in labels(machine) or \
            CONTROL_PLANE_LABEL in labels(obj)
        initialized = dig(cluster, "status", "initialization", "controlPlaneInitialized") is True
        if dig(obj, "status", "initialization", "dataSecretCreated") is not True:
            if dig(cluster, "status", "initialization", "infrastructureProvisioned") is not True:
                return self._waiting(obj, "WaitingForClusterInfrastructureReady")
            if not control_plane and not initialized:
                return self._waiting(obj, "WaitingForControlPlaneInitialized")
            left = self.remaining(obj, "render", step)
            if left > 0:
                return left
            data = cloud_config(meta(machine)["name"], initialized, control_plane)
            if not ensure_bootstrap_secret(self.api, obj, meta(cluster)["name"], data):
                return step
        done = observe({"dataSecretName": meta(obj)["name"],
                        "initialization": {"dataSecretCreated": True}}, obj)
        conds = [condition("Ready", True, "Ready"),
                 condition("DataSecretAvailable", True, "Available"),
                 condition("Paused", False, "NotPaused")]
        if control_plane:
            conds.append(condition("CertificatesAvailable", True, "Available"))
        self.api.set_conditions(obj, conds, **done)
        return None

    def _waiting(self, obj: Obj, reason: str) -> float | None:
        """Report what rendering waits for; the change that ends the wait re-queues obj."""
        self.api.set_conditions(obj, [condition("Ready", False, reason),
                                      condition("DataSecretAvailable", False, reason),
                                      condition("Paused", False, "NotPaused")],
                                initialization={"dataSecretCreated": False})
        return None
