"""The two API backends of the testbed, behind one face: the emulated API server (in-process,
no Go needed, up in milliseconds) and a real control plane built from the pinned Go modules.

Everything that needs a cluster API (the testbed, the test fixtures, the demo and the
benchmarks) asks `make_api` for one, so a single switch picks the backend everywhere.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from kubernetes_asyncio import client

from .apiserver import ApiServer
from .apiserver.faults import Faults

Backend = Literal["emulated", "real"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)


class KubeApi(Protocol):
    """What the testbed uses of a cluster's API, whichever backend serves it."""

    backend: str
    name: str

    @property
    def url(self) -> str: ...
    @property
    def faults(self) -> Faults: ...
    @property
    def watcher_count(self) -> int: ...
    @property
    def requests(self) -> Counter[str]: ...

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def go_down(self) -> None: ...
    async def come_up(self) -> None: ...
    async def compact(self) -> None:
        """Compact the cluster's etcd at its current revision (what the watch cache still
        holds stays served, as on a real kube-apiserver)."""
        ...
    def cut_watches(self) -> int: ...
    async def install_crds(self, paths: list[Path]) -> int: ...
    def client_configuration(self) -> client.Configuration: ...
    def kubeconfig(self, context: str | None = None) -> dict[str, Any]:
        """An admin kubeconfig document that works wherever it goes (credentials embedded)."""
        ...
    def write_kubeconfig(self, path: Path, context: str | None = None) -> Path: ...


def make_api(backend: Backend, name: str, root: Path, *, port: int = 0,
             **emulated: Any) -> KubeApi:
    """A not yet started API of `backend` listening on `port` (0: a free one); `root` holds a
    real one's data, certificates and logs; `emulated` are more of ApiServer's keyword
    arguments (the bookmark interval)."""
    if backend == "emulated":
        return ApiServer(name, port=port, **emulated)
    if backend == "real":
        from .controlplane.api import RealApi
        return RealApi(name, root, port=port)
    raise ValueError(f"unknown API backend {backend!r}; use one of {', '.join(BACKENDS)}")
