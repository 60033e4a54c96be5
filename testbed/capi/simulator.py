"""The simulated Cluster API of one emulated cluster: CAPI core, kubeadm bootstrap and control
plane, and the Dev / vSphere infrastructure providers, acting in-process on its registry."""

from __future__ import annotations

from collections.abc import Callable

from testbed.apiserver.registry import Registry

from .api import Api
from .bootstrap import KubeadmConfigReconciler
from .cluster import ClusterReconciler
from .controlplane import KubeadmControlPlaneReconciler
from .infra import InfraClusterReconciler, InfraMachineReconciler
from .machinedeployment import MachineDeploymentReconciler
from .machines import MachineReconciler
from .machineset import MachineSetReconciler
from .runtime import Context, Reconciler, Runtime, SimConfig, Timers


class CapiSimulator:
    """Controllers that make Cluster API objects behave end to end without real machines.

    `workload_server(namespace, cluster)` gives the URL of a cluster's own API, written into
    its kubeconfig Secret (None: a placeholder URL). While `active()` is False nothing acts,
    as when the controllers are not installed yet.
    """

    def __init__(self, registry: Registry, *, config: SimConfig | None = None,
                 workload_server: Callable[[str, str], str | None] = lambda ns, name: None,
                 active: Callable[[], bool] = lambda: True) -> None:
        self.registry = registry
        self.config = config or SimConfig()
        self.ctx = Context(api=Api(registry, manager="capi-simulator"), config=self.config,
                           timers=Timers(), workload_server=workload_server)
        reconcilers: list[Reconciler] = [
            ClusterReconciler(self.ctx),
            InfraClusterReconciler(self.ctx),
            KubeadmControlPlaneReconciler(self.ctx),
            MachineDeploymentReconciler(self.ctx),
            MachineSetReconciler(self.ctx),
            MachineReconciler(self.ctx),
            InfraMachineReconciler(self.ctx),
            KubeadmConfigReconciler(self.ctx),
        ]
        self.runtime = Runtime(registry, self.ctx, reconcilers, active)

    def start(self) -> None:
        """Start the worker and the resync (needs a running event loop); queues everything."""
        self.runtime.start()
        self.runtime.enqueue_namespace(None)

    async def stop(self) -> None:
        await self.runtime.stop()

    async def wait_idle(self) -> None:
        """Return once the work queue is empty (timed requeues still pending do not count)."""
        await self.runtime.wait_idle()

    def scheduled(self, namespace: str | None = None) -> list[tuple[str, str, str]]:
        """(resource, namespace, name) of the objects with a simulated step still to come
        (a timed requeue), in one namespace or all."""
        return self.runtime.scheduled(namespace)
