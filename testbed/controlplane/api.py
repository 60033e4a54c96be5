"""A real control plane behind the fault proxy, with the same face as the emulated API server
(testbed.backends.KubeApi), so the testbed, the fixtures and the benchmarks take either."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from testbed.apiserver.faults import Faults
from testbed.crds import load_documents

from .launcher import Binaries, ControlPlane, ControlPlaneError, built_binaries
from .pki import admin_kubeconfig as pki_kubeconfig
from .pki import write_kubeconfig
from .proxy import FaultProxy

__all__ = ["RealApi"]


class RealApi:
    """etcd, kube-apiserver, and (unless `controllers=False`) the controller manager and the
    scheduler under `root`; clients reach them through `url`, the fault proxy."""

    backend = "real"

    def __init__(self, name: str, root: Path, *, binaries: Binaries | None = None,
                 controllers: bool = True, port: int = 0) -> None:
        self.name = name
        self.port = port
        self.root = root
        self._binaries = binaries
        self._controllers = controllers
        self.control_plane: ControlPlane | None = None
        self.proxy: FaultProxy | None = None
        self.started_in = 0.0

    def _require_proxy(self) -> FaultProxy:
        if self.proxy is None:
            raise RuntimeError(f"the real API {self.name!r} is not started")
        return self.proxy

    @property
    def url(self) -> str:
        return self._require_proxy().url

    @property
    def direct_url(self) -> str:
        """kube-apiserver itself, bypassing the proxy (for benchmarks)."""
        assert self.control_plane is not None
        return self.control_plane.url

    @property
    def faults(self) -> Faults:
        return self._require_proxy().faults

    @property
    def watcher_count(self) -> int:
        return self._require_proxy().watcher_count

    @property
    def requests(self) -> Counter[str]:
        """Requests received, by method (through the proxy)."""
        return self._require_proxy().requests

    async def start(self) -> None:
        began = time.monotonic()
        binaries = self._binaries or built_binaries()
        if not self._controllers:
            binaries = Binaries(binaries.etcd, binaries.kube_apiserver)
        self.control_plane = ControlPlane(self.root, binaries, name=self.name)
        await self.control_plane.start()
        assert self.control_plane.pki is not None
        self.proxy = FaultProxy(self.control_plane.url, self.control_plane.pki, port=self.port)
        try:
            await self.proxy.start()
        except BaseException:
            await self.control_plane.stop()
            raise
        self.started_in = time.monotonic() - began

    async def stop(self) -> None:
        if self.proxy is not None:
            await self.proxy.stop()
        if self.control_plane is not None:
            await self.control_plane.stop()

    async def go_down(self) -> None:
        await self._require_proxy().go_down()

    async def come_up(self) -> None:
        await self._require_proxy().come_up()

    async def compact(self) -> None:
        """Compact etcd at its current revision, physically, through its JSON gateway (as the
        API server's own compactor does every few minutes). kube-apiserver's watch cache keeps
        serving what it holds; reads it delegates to etcd at an older revision answer 410."""
        assert self.control_plane is not None
        etcd = self.control_plane.etcd_url
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{etcd}/v3/kv/range", json={"key": "AA=="}) as r:  # key "\0"
                r.raise_for_status()
                revision = (await r.json(content_type=None))["header"]["revision"]
            async with s.post(f"{etcd}/v3/kv/compaction",
                              json={"revision": str(revision), "physical": True}) as r:
                # Compacted there already (nothing was written since): nothing to do.
                if r.status != 200 and "compacted" not in await r.text():
                    r.raise_for_status()

    def cut_watches(self) -> int:
        return self._require_proxy().cut_watches()

    def client_configuration(self) -> client.Configuration:
        assert self.control_plane is not None and self.control_plane.pki is not None
        pki = self.control_plane.pki
        cfg = client.Configuration()
        cfg.host = self.url
        cfg.ssl_ca_cert = str(pki.ca_cert)
        cfg.cert_file = str(pki.admin_cert)
        cfg.key_file = str(pki.admin_key)
        return cfg

    def kubeconfig(self, context: str | None = None) -> dict[str, Any]:
        assert self.control_plane is not None and self.control_plane.pki is not None
        return pki_kubeconfig(self.url, self.control_plane.pki, name=context or self.name)

    def write_kubeconfig(self, path: Path, context: str | None = None) -> Path:
        assert self.control_plane is not None and self.control_plane.pki is not None
        return write_kubeconfig(path, self.url, self.control_plane.pki,
                                name=context or self.name)

    async def install_crds(self, paths: list[Path], timeout: float = 60.0) -> int:
        """Create the CRDs in `paths` (kept if they exist) and wait until each is Established,
        as `kubectl wait --for condition=established` does."""
        docs = [d for p in paths for d in load_documents(p)
                if d.get("kind") == "CustomResourceDefinition"]
        async with client.ApiClient(self.client_configuration()) as c:
            ext = client.ApiextensionsV1Api(c)
            for doc in docs:
                try:
                    await ext.create_custom_resource_definition(doc)  # type: ignore[arg-type]
                except ApiException as e:
                    if e.status != 409:
                        raise
            deadline = time.monotonic() + timeout
            for doc in docs:
                name = doc["metadata"]["name"]
                while not _established(await ext.read_custom_resource_definition(name)):
                    if time.monotonic() > deadline:
                        raise ControlPlaneError(f"CRD {name} not Established after "
                                                f"{timeout:.0f}s")
                    await asyncio.sleep(0.05)
        return len(docs)


def _established(crd: Any) -> bool:
    conditions = (crd.status.conditions if crd.status else None) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)
