"""A kubelet stand-in: it plays the node, on either API backend, over HTTP only.

It registers its Node (with the control-plane NoSchedule taint, as the first kubeadm node has,
Ready, with capacity the scheduler can place Pods on), then a Node for each Machine of the
cluster that joins (control-plane ones tainted too), and keeps their Leases in kube-node-lease
renewed, as kubelets' heartbeats do. Deployments, ReplicaSets and scheduling are the
controllers' business (the real ones on a real control plane, the emulator's stand-ins on it);
this only runs the Pods bound to its Nodes: the containers it knows how to run become real local
processes (the Outpost agent), with the environment, ConfigMaps and Secrets the Pod asks for;
any other image is reported running. So a broken install bundle (a missing toleration, a wrong
Secret key, a bad setting) fails here the way it would fail on a cluster. A process that exits
is restarted with a growing delay (CrashLoopBackOff); Job Pods succeed at once; `keep_unready`
names Pods that run but never become Ready.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
from kubernetes_asyncio import client

from .apiserver.errors import ApiError
from .capi.http import KubeHttp
from .kubeconfig import write_document

log = logging.getLogger(__name__)

CONTROL_PLANE_TAINT = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
# Container commands this stand-in can run for real, mapped to local argv.
RUNNABLE = {"outpost-agent": [sys.executable, "-m", "agent.daemon"]}
PODS = "/api/v1/pods"
BOUND = "spec.nodeName!="  # every Pod a scheduler has placed
MACHINES = "/apis/cluster.x-k8s.io/v1beta2/machines"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
CONTROL_PLANE_MACHINE = "cluster.x-k8s.io/control-plane"
LEASE_SECONDS = 40
HEARTBEAT = 10.0
Obj = dict[str, Any]


class Cluster(Protocol):
    """What the stand-in needs of its cluster's API (either testbed backend)."""

    def client_configuration(self) -> client.Configuration: ...
    def kubeconfig(self, context: str | None = None) -> dict[str, Any]: ...


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodError(Exception):
    """The pod cannot start (a reference that does not resolve): reported, not raised."""


@dataclass
class Pod:
    """A Pod this node runs: its process (None for an image only pretended), or why not."""

    namespace: str
    name: str
    uid: str
    node: str
    process: asyncio.subprocess.Process | None = None
    log_file: Path | None = None
    error: str | None = None
    started_at: str = field(default_factory=_now)
    restarts: int = 0
    restart_at: float = 0.0  # monotonic time of the next start after an exit
    last_exit: int | None = None
    reported: Obj | None = None  # the status last written


class Kubelet:
    def __init__(self, api: Cluster, root: Path, node_name: str = "cp-a", *,
                 keep_unready: Callable[[Obj], bool] = lambda pod: False) -> None:
        self.api = api
        self.root = root
        self.node_name = node_name
        self.keep_unready = keep_unready
        self.running: dict[str, Pod] = {}  # by Pod uid
        self.nodes: set[str] = set()  # the Nodes this stand-in plays
        self._joined: set[str] = set()  # of them, those of Machines that joined
        self._ready_since: dict[str, str] = {}
        self._http: KubeHttp | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- life cycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._http = KubeHttp(self.api.client_configuration(), manager="kubelet")
        await self._register_node()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(), name="kubelet"),
                       loop.create_task(self._watch(), name="kubelet-watch"),
                       loop.create_task(self._heartbeat(), name="kubelet-heartbeat")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        await asyncio.gather(*(self._stop_process(p) for p in self.running.values()))
        self.running.clear()
        if self._http is not None:
            await self._http.close()

    def pods(self) -> list[Pod]:
        return list(self.running.values())

    @property
    def http(self) -> KubeHttp:
        if self._http is None:
            raise RuntimeError("the kubelet is not started")
        return self._http

    # -- the nodes -------------------------------------------------------------------------
    def _node_status(self, name: str) -> Obj:
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "message": "kubelet is posting ready status", "lastHeartbeatTime": _now(),
                 "lastTransitionTime": self._ready_since.setdefault(name, _now())}
        capacity = {"cpu": "8", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        return {"conditions": [ready], "capacity": capacity, "allocatable": capacity,
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                              {"type": "Hostname", "address": name}],
                "nodeInfo": {"kubeletVersion": "v1.37.2", "kubeProxyVersion": "",
                             "operatingSystem": "linux", "architecture": "amd64",
                             "containerRuntimeVersion": "testbed://1", "osImage": "testbed",
                             "kernelVersion": "", "machineID": "", "systemUUID": "",
                             "bootID": ""}}

    async def _register_node(self, name: str = "", control_plane: bool = True) -> None:
        name = name or self.node_name
        labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
        spec: Obj = {}
        if control_plane:
            labels["node-role.kubernetes.io/control-plane"] = ""
            spec["taints"] = [dict(CONTROL_PLANE_TAINT)]
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": labels}, "spec": spec}
        with contextlib.suppress(ApiError):
            await self.http.request("POST", "/api/v1/nodes", node,
                                    {"fieldManager": "kubelet"})
        self.nodes.add(name)
        await self._post_node_status(name)

    async def _post_node_status(self, name: str) -> None:
        await self.http.request(
            "PATCH", f"/api/v1/nodes/{quote(name)}/status",
            {"status": self._node_status(name)}, {"fieldManager": "kubelet"},
            content_type="application/merge-patch+json")

    async def _join_machines(self) -> None:
        """Machines of this cluster (after the pivot) whose Node has joined (status.nodeRef)
        get that Node, tainted if they are control-plane machines; a Node whose Machine is
        gone is removed, as the machine controller removes it."""
        try:
            listed = await self.http.request("GET", MACHINES)
        except ApiError as e:
            if e.code == 404:  # Cluster API is not installed here (yet)
                return
            raise
        want: dict[str, bool] = {}
        for m in listed.get("items") or []:
            ref = (m.get("status") or {}).get("nodeRef") or {}
            if ref.get("name") and not m["metadata"].get("deletionTimestamp"):
                want[ref["name"]] = CONTROL_PLANE_MACHINE in (m["metadata"].get("labels") or {})
        for name, control_plane in want.items():
            if name not in self.nodes:
                await self._register_node(name, control_plane)
                self._joined.add(name)
        for name in [n for n in self._joined if n not in want]:
            self._joined.discard(name)
            self.nodes.discard(name)
            with contextlib.suppress(ApiError):
                await self.http.request("DELETE", f"/api/v1/nodes/{quote(name)}")
            with contextlib.suppress(ApiError):
                await self.http.request("DELETE", f"{LEASES}/{quote(name)}")
            await self._orphaned(name)

    async def _orphaned(self, node: str) -> None:
        """Delete the Pods bound to a Node that is gone, as the pod garbage collector does, so
        their controllers replace them elsewhere."""
        listed = await self.http.request("GET", PODS, params={
            "fieldSelector": f"spec.nodeName={node}"})
        for p in listed.get("items") or []:
            m = p["metadata"]
            run = self.running.get(m["uid"])
            if run is not None:
                await self._stop_process(run)
                self.running.pop(m["uid"], None)
            with contextlib.suppress(ApiError):
                await self.http.request(
                    "DELETE", f"/api/v1/namespaces/{quote(m['namespace'])}/pods/"
                    f"{quote(m['name'])}", {"kind": "DeleteOptions", "apiVersion": "v1",
                                            "gracePeriodSeconds": 0})

    async def _heartbeat(self) -> None:
        """Renew each node's Lease (and its Ready condition) as a kubelet does, so the node
        lifecycle controller never finds it gone."""
        while True:
            for name in sorted(self.nodes):
                try:
                    await self._renew(LEASES, name)
                    await self._post_node_status(name)
                except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as e:
                    log.warning("kubelet heartbeat of %s failed: %s", name, e)
                except Exception:  # the heartbeat goes on, whatever one round met
                    log.exception("kubelet heartbeat of %s failed", name)
            await asyncio.sleep(HEARTBEAT)

    async def _renew(self, path: str, name: str) -> None:
        spec = {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
        try:
            await self.http.request("PATCH", f"{path}/{quote(name)}", {"spec": spec},
                                    {"fieldManager": "kubelet"},
                                    content_type="application/merge-patch+json")
        except ApiError as e:
            if e.code != 404:
                raise
            await self.http.request("POST", path, {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name}, "spec": spec}, {"fieldManager": "kubelet"})

    # -- pods ------------------------------------------------------------------------------
    async def _list_pods(self) -> tuple[list[Obj], str]:
        page = await self.http.request("GET", PODS, params={"fieldSelector": BOUND})
        pods = [p for p in page.get("items") or [] if p["spec"].get("nodeName") in self.nodes]
        return pods, str(page["metadata"]["resourceVersion"])

    async def _watch(self) -> None:
        """Ring the sync loop whenever a bound Pod changes (or the watch breaks)."""
        while True:
            try:
                _, rv = await self._list_pods()
                params = {"watch": "true", "resourceVersion": rv, "fieldSelector": BOUND,
                          "timeoutSeconds": "240"}
                async for _ in self.http.stream(PODS, params):
                    self._wake.set()
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
                log.debug("kubelet pod watch ended: %r", e)
            self._wake.set()
            await asyncio.sleep(0.2)

    async def _run(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception:
                log.exception("kubelet sync failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)

    async def sync(self) -> None:
        await self._join_machines()
        pods, _ = await self._list_pods()
        seen = set()
        for pod in pods:
            m = pod["metadata"]
            if m.get("deletionTimestamp"):
                await self._terminate(pod)
                continue
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            seen.add(m["uid"])
            run = self.running.get(m["uid"])
            if run is None:
                run = Pod(m.get("namespace", ""), m["name"], m["uid"], pod["spec"]["nodeName"])
                self.running[m["uid"]] = run
                await self._start(pod, run)
            elif run.error is not None:
                if time.monotonic() >= run.restart_at:  # the reference may resolve by now
                    await self._start(pod, run)
                    if run.error is not None:
                        run.restart_at = time.monotonic() + 1.0
            elif run.process is not None and run.process.returncode is not None:
                if run.last_exit is None:
                    run.last_exit = run.process.returncode
                    run.restart_at = time.monotonic() + min(2.0 ** run.restarts, 30.0)
                if time.monotonic() >= run.restart_at:
                    run.restarts += 1
                    run.last_exit = None
                    await self._start(pod, run)
            await self._report(pod, run)
        for uid in [u for u in self.running if u not in seen]:
            await self._stop_process(self.running.pop(uid))

    async def _terminate(self, pod: Obj) -> None:
        """A Pod being deleted: stop its process, then confirm with a final delete, as the
        kubelet does (the API keeps the Pod until then)."""
        m = pod["metadata"]
        run = self.running.get(m["uid"])
        if run is not None:
            grace = m.get("deletionGracePeriodSeconds")
            if grace is None:
                grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds")
            await self._stop_process(run, min(float(30 if grace is None else grace), 20.0))
            self.running.pop(m["uid"], None)
        with contextlib.suppress(ApiError):
            await self.http.request(
                "DELETE", f"/api/v1/namespaces/{quote(m['namespace'])}/pods/{quote(m['name'])}",
                {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                 "preconditions": {"uid": m["uid"]}})

    def _is_job(self, pod: Obj) -> bool:
        return any(r.get("kind") == "Job" for r in pod["metadata"].get("ownerReferences") or [])

    async def _report(self, pod: Obj, run: Pod) -> None:
        spec = pod.get("spec") or {}
        containers = spec.get("containers") or []
        alive = run.error is None and (run.process is None or run.process.returncode is None)
        job = self._is_job(pod)
        ready = alive and not job and not self.keep_unready(pod)
        statuses = []
        for c in containers:
            st: Obj = {"name": c["name"], "image": c.get("image", ""), "imageID": "",
                       "ready": ready, "restartCount": run.restarts,
                       "started": alive and not job}
            if run.error is not None:
                st["state"] = {"waiting": {"reason": "CreateContainerConfigError",
                                           "message": run.error}}
            elif job:
                st["state"] = {"terminated": {"exitCode": 0, "reason": "Completed"}}
            elif not alive:
                st["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": (
                    f"back-off restarting failed container {c['name']} in pod "
                    f"{run.name}_{run.namespace}({run.uid})")}}
                st["lastState"] = {"terminated": {"exitCode": run.last_exit or 0,
                                                  "reason": "Error"}}
            else:
                st["state"] = {"running": {"startedAt": run.started_at}}
            statuses.append(st)
        phase = "Succeeded" if job else "Pending" if run.error is not None else "Running"
        old = pod.get("status") or {}
        conds = []
        for type_, ok in (("PodScheduled", True), ("Initialized", True),
                          ("ContainersReady", ready), ("Ready", ready)):
            status = "True" if ok else "False"
            prev: Obj = next((c for c in old.get("conditions") or []
                              if c.get("type") == type_), {})
            cond = {"type": type_, "status": status,
                    "lastTransitionTime": prev.get("lastTransitionTime")
                    if prev.get("status") == status else _now()}
            if not ok:
                cond["reason"] = "PodCompleted" if job else "ContainersNotReady"
            conds.append(cond)
        want = {"phase": phase, "conditions": conds, "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
                "startTime": old.get("startTime") or run.started_at,
                "containerStatuses": statuses}
        if run.reported == want and old.get("phase") == want["phase"]:
            return  # a steady Pod costs no write (a server adds empty fields of its own)
        with contextlib.suppress(ApiError):
            await self.http.request(
                "PATCH", f"/api/v1/namespaces/{quote(run.namespace)}/pods/{quote(run.name)}/"
                "status", {"status": want}, {"fieldManager": "kubelet"},
                content_type="application/merge-patch+json")
            run.reported = want

    # -- containers ------------------------------------------------------------------------
    async def _lookup(self, plural: str, ns: str, name: str) -> Obj:
        try:
            return await self.http.request(
                "GET", f"/api/v1/namespaces/{quote(ns)}/{plural}/{quote(name)}")
        except ApiError as e:
            if e.code == 404:
                kind = "secret" if plural == "secrets" else "configmap"
                raise PodError(f'{kind} "{name}" not found') from e
            raise

    def _data(self, plural: str, obj: Obj) -> dict[str, str]:
        data = dict(obj.get("data") or {})
        if plural == "secrets":
            return {k: base64.b64decode(v).decode() for k, v in data.items()}
        return {k: str(v) for k, v in data.items()}

    async def _env(self, ns: str, pod: Pod, container: Obj,
                   mounts: dict[str, Path]) -> dict[str, str]:
        env: dict[str, str] = {}
        for src in container.get("envFrom") or []:
            for kind, plural in (("configMapRef", "configmaps"), ("secretRef", "secrets")):
                if kind in src:
                    try:
                        env.update(self._data(plural, await self._lookup(
                            plural, ns, src[kind]["name"])))
                    except PodError:
                        if not src[kind].get("optional"):
                            raise
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = str(item["value"])
                continue
            vf = item.get("valueFrom") or {}
            if "fieldRef" in vf:
                path = vf["fieldRef"].get("fieldPath")
                env[item["name"]] = {"metadata.name": pod.name, "metadata.namespace": ns,
                                     "metadata.uid": pod.uid,
                                     "spec.nodeName": pod.node}.get(path, "")
            for kind, plural in (("secretKeyRef", "secrets"), ("configMapKeyRef", "configmaps")):
                if kind in vf:
                    ref = vf[kind]
                    data = self._data(plural, await self._lookup(plural, ns, ref["name"]))
                    if ref["key"] not in data:
                        raise PodError(f'couldn\'t find key {ref["key"]} in {plural[:-1]} '
                                       f'{ns}/{ref["name"]}')
                    env[item["name"]] = data[ref["key"]]
        # Paths inside the container map onto the directories this stand-in prepared.
        for key, value in list(env.items()):
            for mount, local in sorted(mounts.items(), key=lambda m: -len(m[0])):
                if value == mount or value.startswith(mount.rstrip("/") + "/"):
                    env[key] = str(local) + value[len(mount.rstrip("/")):]
                    break
        return env

    async def _volumes(self, ns: str, pod_dir: Path, spec: Obj,
                       container: Obj) -> dict[str, Path]:
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        mounts: dict[str, Path] = {}
        for m in container.get("volumeMounts") or []:
            v = volumes.get(m["name"])
            if v is None:
                raise PodError(f'volume "{m["name"]}" is mounted but not defined')
            local = pod_dir / "volumes" / m["name"]
            if "secret" in v or "configMap" in v:
                plural, ref = (("secrets", v["secret"].get("secretName")) if "secret" in v
                               else ("configmaps", v["configMap"].get("name")))
                data = self._data(plural, await self._lookup(plural, ns, ref))
                local.mkdir(parents=True, exist_ok=True)
                items = (v.get("secret") or v.get("configMap") or {}).get("items")
                files = {i["path"]: data[i["key"]] for i in items} if items else data
                for path, content in files.items():
                    (local / path).parent.mkdir(parents=True, exist_ok=True)
                    (local / path).write_text(content)
            elif "hostPath" in v:
                local = self.root / "host" / v["hostPath"]["path"].lstrip("/")
                local.mkdir(parents=True, exist_ok=True)
            else:  # emptyDir and the rest: a fresh directory
                local.mkdir(parents=True, exist_ok=True)
            mounts[m["mountPath"]] = local / m["subPath"] if m.get("subPath") else local
        return mounts

    async def _start(self, pod: Obj, run: Pod) -> None:
        """Start the Pod's containers this stand-in can run; an error is kept on `run`."""
        run.error = None
        try:
            await self._start_containers(pod, run)
        except PodError as e:
            run.error = str(e)
            log.warning("pod %s/%s cannot start: %s", run.namespace, run.name, e)

    async def _start_containers(self, pod: Obj, run: Pod) -> None:
        ns = run.namespace
        spec = pod.get("spec") or {}
        pod_dir = self.root / "pods" / run.name
        if run.restarts == 0:
            shutil.rmtree(pod_dir, ignore_errors=True)
        pod_dir.mkdir(parents=True, exist_ok=True)
        run.started_at = _now()
        for container in spec.get("containers") or []:
            command = list(container.get("command") or [])
            if not command or command[0] not in RUNNABLE:
                continue  # an image this stand-in cannot run: counted as running once placed
            mounts = await self._volumes(ns, pod_dir, spec, container)
            env = await self._env(ns, run, container, mounts)
            kubeconfig = write_document(pod_dir / "kubeconfig",
                                        self.api.kubeconfig("in-cluster"))
            env.setdefault("OUTPOST_AGENT_KUBECONFIG", str(kubeconfig))
            env.setdefault("OUTPOST_AGENT_HTTP_PORT", "0")
            env.setdefault("OUTPOST_AGENT_HTTP_HOST", "127.0.0.1")
            argv = RUNNABLE[command[0]] + command[1:] + list(container.get("args") or [])
            run.log_file = pod_dir / f"{container['name']}.log"
            with run.log_file.open("ab") as out:
                run.process = await asyncio.create_subprocess_exec(
                    *argv, env={"PATH": os.environ.get("PATH", ""), **env}, stdout=out,
                    stderr=asyncio.subprocess.STDOUT)
            log.info("started pod %s/%s (%s) pid %d", ns, run.name, container["name"],
                     run.process.pid)

    async def _stop_process(self, run: Pod, grace: float = 20.0) -> None:
        proc = run.process
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            proc.kill()
            await proc.wait()
