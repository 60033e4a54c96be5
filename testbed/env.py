"""The whole local environment in one object: management and workload APIs, simulated CAPI, NATS.

The CLI, the tests and (later) the demo all build it the same way, so what the demo shows is what
the tests prove.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import TracebackType
from typing import Any

from .backends import Backend, make_api
from .capi import CapiSimulator, SimConfig
from .crds import crd_files, gateway_crd_files
from .kubelet import Kubelet
from .natsd import NatsServer

# The workload cluster's CAPI controllers: its simulated CAPI acts once they are available.
CONTROLLERS = ("deployments.apps", "capi-system", "capi-controller-manager")


class Testbed:
    __test__ = False  # not a test class, despite the name
    def __init__(self, state_dir: Path, *, sim: SimConfig | None = None, nats: bool = True,
                 management_port: int = 0, workload_port: int = 0,
                 kubelet: bool = True, api: Backend = "emulated") -> None:
        self.state_dir = state_dir
        self.api = api
        self.nats = NatsServer(state_dir / "nats") if nats else None
        self.management: Any = make_api(api, "management", state_dir / "management",
                                        port=management_port)
        self.workload: Any = make_api(api, "workload", state_dir / "workload",
                                      port=workload_port)
        cfg = sim or SimConfig()
        self.management_capi = CapiSimulator(
            self.management, config=cfg, workload_api=lambda ns, name: self.workload)
        # A fresh workload cluster runs no CAPI until the gateway installs its controllers.
        self.workload_capi = CapiSimulator(
            self.workload, config=cfg, workload_api=lambda ns, name: self.workload,
            active=self._workload_controllers_available, watch=(CONTROLLERS[0],))
        self.kubelet = Kubelet(self.workload, state_dir / "kubelet") if kubelet else None

    def _workload_controllers_available(self) -> bool:
        rkey, ns, name = CONTROLLERS
        dep = self.workload_capi.api.cache.get(rkey, ns, name)
        return bool(dep and (dep.get("status") or {}).get("availableReplicas"))

    @property
    def management_kubeconfig(self) -> Path:
        return self.state_dir / "management.kubeconfig"

    @property
    def workload_kubeconfig(self) -> Path:
        return self.state_dir / "workload.kubeconfig"

    @property
    def nats_url_file(self) -> Path:
        return self.state_dir / "nats.url"

    async def start(self) -> None:
        """Bring everything up; the files are written last, so their presence means ready."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for f in (self.management_kubeconfig, self.workload_kubeconfig, self.nats_url_file):
            f.unlink(missing_ok=True)
        await asyncio.gather(self.management.start(), self.workload.start())
        await self.management.install_crds([*crd_files(), *gateway_crd_files()])
        await asyncio.gather(self.management_capi.start(), self.workload_capi.start())
        if self.kubelet is not None:
            await self.kubelet.start()
        if self.nats is not None:
            await self.nats.start()
        self.management.write_kubeconfig(self.management_kubeconfig, "management")
        self.workload.write_kubeconfig(self.workload_kubeconfig, "workload")
        if self.nats is not None:
            tmp = self.nats_url_file.with_suffix(".tmp")
            tmp.write_text(self.nats.url + "\n")
            tmp.replace(self.nats_url_file)

    async def stop(self) -> None:
        for f in (self.management_kubeconfig, self.workload_kubeconfig, self.nats_url_file):
            f.unlink(missing_ok=True)
        # Everything is stopped whatever one part raises (a simulator whose worker died
        # re-raises its failure); the first failure is raised at the end.
        failure: BaseException | None = None
        parts = [self.kubelet, self.management_capi, self.workload_capi, self.workload,
                 self.management, self.nats]
        for part in parts:
            if part is None:
                continue
            try:
                await part.stop()
            except Exception as e:
                failure = failure or e
        if failure is not None:
            raise failure

    async def __aenter__(self) -> Testbed:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
