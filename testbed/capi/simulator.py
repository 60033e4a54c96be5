"""The simulated Cluster API of one cluster: CAPI core, kubeadm bootstrap and control plane, and
the Dev / vSphere infrastructure providers, acting on the cluster's API over HTTP only (as the
real controllers do), so they run unchanged on the emulated and on a real API server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from kubernetes_asyncio import client

from .api import Api
from .bootstrap import KubeadmConfigReconciler
from .cache import CRDS, Cache, Event
from .cluster import ClusterReconciler
from .controlplane import KubeadmControlPlaneReconciler
from .http import KubeHttp, ServedType
from .infra import InfraClusterReconciler, InfraMachineReconciler
from .machinedeployment import MachineDeploymentReconciler
from .machines import MachineReconciler
from .machineset import MachineSetReconciler
from .runtime import Context, Reconciler, Runtime, SimConfig, Timers, WorkloadApi
from .util import CORE_GROUP

# The API groups read (discovery), and within them the kinds watched beyond Cluster API's own.
GROUPS = ("", CORE_GROUP, "apiextensions.k8s.io", "apps")
WATCHED = ("secrets", CRDS)


class Cluster(Protocol):
    """What the simulator needs of a cluster's API (either testbed backend)."""

    def client_configuration(self) -> client.Configuration: ...


class CapiSimulator:
    """Controllers that make Cluster API objects behave end to end without real machines.

    `workload_api(namespace, cluster)` gives a cluster's own API, whose admin kubeconfig goes
    into its kubeconfig Secret (None: one for a placeholder URL). While `active()` is False
    nothing acts, as when the controllers are not installed yet. `watch` names more kinds to
    keep in the cache (resource keys such as "deployments.apps"), for `active` to read from
    `api.cache`.
    """

    def __init__(self, cluster: Cluster, *, config: SimConfig | None = None,
                 workload_api: Callable[[str, str], WorkloadApi | None] = lambda ns, name: None,
                 active: Callable[[], bool] = lambda: True, watch: tuple[str, ...] = ()) -> None:
        self.cluster = cluster
        self.config = config or SimConfig()
        self.watch = watch
        self.ctx: Context | None = None
        self.runtime: Runtime | None = None
        self._workload_api = workload_api
        self._active = active

    @property
    def api(self) -> Api:
        if self.ctx is None:
            raise RuntimeError("the simulator is not started")
        return self.ctx.api

    def _wanted(self, t: ServedType) -> bool:
        return t.group.endswith(CORE_GROUP) or t.key in WATCHED or t.key in self.watch

    async def start(self) -> None:
        """Connect, list every watched kind, start the worker and the resync; queues
        everything."""
        http = KubeHttp(self.cluster.client_configuration(), manager="capi-simulator")
        cache = Cache(http, GROUPS, self._wanted, lambda ev: self._on_event(ev))
        self.ctx = Context(api=Api(cache, http, asyncio.get_running_loop()),
                           config=self.config, timers=Timers(),
                           workload_api=self._workload_api)
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
        self.runtime = Runtime(self.ctx, reconcilers, self._active)
        self.runtime.start()
        try:
            await cache.start()
        except BaseException:
            await self.stop()
            raise
        self.runtime.enqueue_namespace(None)

    def _on_event(self, ev: Event) -> None:
        if self.runtime is not None:
            self.runtime.on_event(ev)

    async def stop(self) -> None:
        try:
            if self.runtime is not None:
                await self.runtime.stop()
        finally:
            if self.ctx is not None:
                await self.ctx.api.cache.stop()
                await self.ctx.api.http.close()

    async def wait_idle(self, timeout: float = 60.0) -> None:
        """Return once the cache holds everything written before the call and the work queue
        is empty, with no write of the simulator's own still to echo back (timed requeues
        still pending do not count); the bound only ends a hang."""
        if self.runtime is None:
            raise RuntimeError("the simulator is not started")
        deadline = time.monotonic() + timeout
        while True:
            writes = self.api.writes
            await self.api.cache.synced(timeout)
            await self.runtime.wait_idle()
            if self.api.writes == writes:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the simulator kept writing for {timeout:.0f}s")

    def scheduled(self, namespace: str | None = None) -> list[tuple[str, str, str]]:
        """(resource, namespace, name) of the objects with a simulated step still to come
        (a timed requeue), in one namespace or all."""
        return [] if self.runtime is None else self.runtime.scheduled(namespace)
