"""Launch one real control plane on loopback, as controller-runtime's envtest does: etcd,
kube-apiserver (secure serving, RBAC, service-account issuer), and optionally the controller
manager and the scheduler.

Ports: each process gets a port found free just before it starts; if another process took it
meanwhile, the start fails with "address already in use" and is retried with a fresh port, so
parallel test runs never race for good. Each process logs to its own file under the root, which
an error message quotes when something does not come up.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from ..procs import tied_to_parent
from .pki import Pki, make_pki, write_kubeconfig

__all__ = ["Binaries", "ControlPlane", "ControlPlaneError", "built_binaries", "free_port"]

SERVICE_CIDR = "10.96.0.0/16"
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_ATTEMPTS = 5
_LOG_TAIL = 4000


class ControlPlaneError(RuntimeError):
    """A component did not start or did not become ready; the message quotes its log."""


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path | None = None
    kube_scheduler: Path | None = None


def built_binaries() -> Binaries:
    """The pinned binaries from the cache, each verified (version and pins); raises
    ControlPlaneError saying what to run when one is missing or stale."""
    from . import build

    try:
        comps = {c.name: c for c in build.components(build.check_go())
                 if c.wrapper not in build.TOOLS}  # helm: see .helm.built_helm
    except build.BuildError as e:
        raise ControlPlaneError(f"cannot locate the control-plane binaries: {e}") from e
    bad = {name: why for name, c in comps.items() if (why := c.verify()) is not None}
    if bad:
        raise ControlPlaneError("control-plane binaries missing or stale ("
                                + "; ".join(f"{n}: {w}" for n, w in bad.items())
                                + "): run `make controlplane`")
    return Binaries(comps["etcd"].path, comps["kube-apiserver"].path,
                    comps["kube-controller-manager"].path, comps["kube-scheduler"].path)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-_LOG_TAIL:]
    except OSError:
        return "(no log)"


@dataclass
class _Proc:
    name: str
    proc: asyncio.subprocess.Process
    log: Path


@dataclass
class ControlPlane:
    """`await start()` brings it up under `root`; `kubeconfig` is then usable by any client."""

    root: Path
    binaries: Binaries
    name: str = "testbed"
    ready_timeout: float = 120.0
    pki: Pki | None = None
    etcd_url: str = ""
    url: str = ""
    started_in: float = 0.0
    _procs: list[_Proc] = field(default_factory=list)

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    async def start(self) -> None:
        began = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        self.pki = make_pki(self.root / "pki", cluster=self.name)
        try:
            await self._start_etcd()
            await self._start_apiserver()
            write_kubeconfig(self.kubeconfig, self.url, self.pki, name=self.name)
            if self.binaries.kube_controller_manager is not None:
                await self._spawn("kube-controller-manager", [
                    str(self.binaries.kube_controller_manager),
                    f"--kubeconfig={self.kubeconfig}",
                    f"--authentication-kubeconfig={self.kubeconfig}",
                    f"--authorization-kubeconfig={self.kubeconfig}",
                    "--leader-elect=false", "--controllers=*", "--bind-address=127.0.0.1",
                    f"--secure-port={free_port()}",
                    f"--service-account-private-key-file={self.pki.sa_key}",
                    f"--root-ca-file={self.pki.ca_cert}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--use-service-account-credentials=false"])
            if self.binaries.kube_scheduler is not None:
                await self._spawn("kube-scheduler", [
                    str(self.binaries.kube_scheduler), f"--kubeconfig={self.kubeconfig}",
                    f"--authentication-kubeconfig={self.kubeconfig}",
                    f"--authorization-kubeconfig={self.kubeconfig}",
                    "--leader-elect=false", "--bind-address=127.0.0.1",
                    f"--secure-port={free_port()}"])
            if self.binaries.kube_controller_manager is not None:
                await self._settled()
        except BaseException:
            await self.stop()
            raise
        self.started_in = time.monotonic() - began

    async def stop(self, grace: float = 10.0) -> None:
        """Stop in reverse order (etcd last), SIGTERM then SIGKILL after `grace`."""
        for p in reversed(self._procs):
            if p.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.proc.terminate()
                try:
                    await asyncio.wait_for(p.proc.wait(), grace)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        p.proc.kill()
                    await p.proc.wait()
        self._procs.clear()

    # -- components -----------------------------------------------------------------------------
    async def _start_etcd(self) -> None:
        data = self.root / "etcd"
        for attempt in range(_ATTEMPTS):
            client, peer = free_port(), free_port()
            self.etcd_url = f"http://127.0.0.1:{client}"
            p = await self._spawn("etcd", [
                str(self.binaries.etcd), f"--data-dir={data}", f"--name={self.name}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster={self.name}=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync", "--quota-backend-bytes=4294967296"])
            if await self._ready(p, f"{self.etcd_url}/health", None, attempt):
                return

    async def _start_apiserver(self) -> None:
        assert self.pki is not None
        pki = self.pki
        tls = ssl.create_default_context(cafile=str(pki.ca_cert))
        tls.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        for attempt in range(_ATTEMPTS):
            port = free_port()
            self.url = f"https://127.0.0.1:{port}"
            p = await self._spawn("kube-apiserver", [
                str(self.binaries.kube_apiserver), f"--etcd-servers={self.etcd_url}",
                f"--secure-port={port}", "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # The kubernetes Service endpoint may not be loopback: manage none (as envtest).
                "--endpoint-reconciler-type=none",
                f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}", "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}", "--allow-privileged=true",
                f"--cert-dir={self.root / 'apiserver-certs'}"])
            if await self._ready(p, f"{self.url}/readyz", tls, attempt):
                return

    async def _settled(self) -> None:
        """Wait for what every cluster has once its controller manager has run a moment: the
        `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap in each initial
        namespace. Clients (and tests) then see a steady cluster, not one still filling in."""
        assert self.pki is not None
        tls = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        tls.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        paths = [f"/api/v1/namespaces/{ns}/{what}" for ns in INITIAL_NAMESPACES
                 for what in ("serviceaccounts/default", "configmaps/kube-root-ca.crt")]
        deadline = time.monotonic() + self.ready_timeout
        async with aiohttp.ClientSession() as http:
            for path in paths:
                while True:
                    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                        async with http.get(self.url + path, ssl=tls,
                                            timeout=aiohttp.ClientTimeout(total=2)) as resp:
                            if resp.status == 200:
                                break
                    for p in self._procs:
                        if p.proc.returncode is not None:
                            raise ControlPlaneError(
                                f"{p.name} exited with code {p.proc.returncode}; its log "
                                f"({p.log}) ends with:\n{_tail(p.log)}")
                    if time.monotonic() > deadline:
                        raise ControlPlaneError(
                            f"{path} never appeared in {self.ready_timeout:.0f}s: is "
                            f"kube-controller-manager working? its log ends with:\n"
                            f"{_tail(self.root / 'kube-controller-manager.log')}")
                    await asyncio.sleep(0.05)

    async def _spawn(self, name: str, argv: list[str]) -> _Proc:
        log = self.root / f"{name}.log"
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *tied_to_parent(argv), stdout=out, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL)
        p = _Proc(name, proc, log)
        self._procs.append(p)
        return p

    async def _ready(self, p: _Proc, url: str, tls: ssl.SSLContext | None,
                     attempt: int) -> bool:
        """True once `url` answers 200; False if the process died of a port collision (the
        caller retries); raises ControlPlaneError otherwise."""
        deadline = time.monotonic() + self.ready_timeout
        async with aiohttp.ClientSession() as http:
            while True:
                if p.proc.returncode is not None:
                    log = _tail(p.log)
                    self._procs.remove(p)
                    if "address already in use" in log and attempt + 1 < _ATTEMPTS:
                        return False
                    raise ControlPlaneError(f"{p.name} exited with code {p.proc.returncode}; "
                                            f"its log ({p.log}) ends with:\n{log}")
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with http.get(url, ssl=tls if tls is not None else False,
                                        timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status == 200:
                            return True
                if time.monotonic() > deadline:
                    raise ControlPlaneError(f"{p.name} not ready at {url} after "
                                            f"{self.ready_timeout:.0f}s; its log ({p.log}) "
                                            f"ends with:\n{_tail(p.log)}")
                await asyncio.sleep(0.1)
