"""A kubelet stand-in: one tainted control-plane node that runs Deployments' pods for real.

It registers its Node (with the control-plane NoSchedule taint, as the first kubeadm node has),
schedules a Deployment's pods only if they tolerate that taint, and runs the containers it knows
how to run as real local processes — the Outpost agent — with the environment, ConfigMaps and
Secrets the pod spec asks for. Anything else (the CAPI controllers' image) is marked running once
scheduled. So a broken install bundle (a missing toleration, a wrong Secret key, a bad setting)
fails here the way it would fail on a cluster.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .apiserver.errors import ApiError
from .apiserver.registry import Registry
from .apiserver.store import Event
from .kubeconfig import write_kubeconfig

log = logging.getLogger(__name__)

CONTROL_PLANE_TAINT = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
# Container commands this stand-in can run for real, mapped to local argv.
RUNNABLE = {"outpost-agent": [sys.executable, "-m", "agent.daemon"]}


def tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    for t in tolerations or []:
        if t.get("effect") not in (None, "", taint["effect"]):
            continue
        if t.get("operator") == "Exists" and not t.get("key"):
            return True
        if t.get("key") != taint["key"]:
            continue
        if t.get("operator", "Equal") == "Exists" or t.get("value", "") == taint.get("value",
                                                                                        ""):
            return True
    return False


class PodError(Exception):
    """The pod cannot start (a reference that does not resolve): reported, not raised."""


@dataclass
class Pod:
    name: str
    process: asyncio.subprocess.Process | None = None
    log_file: Path | None = None
    error: str | None = None


@dataclass
class Workload:
    key: tuple[str, str]
    template_hash: str
    pods: list[Pod] = field(default_factory=list)


class Kubelet:
    def __init__(self, registry: Registry, root: Path, api_url: str,
                 node_name: str = "cp-a") -> None:
        self.registry = registry
        self.root = root
        self.api_url = api_url
        self.node_name = node_name
        self.workloads: dict[tuple[str, str], Workload] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._register_node()
        self.registry.store.subscribe(self._on_event)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kubelet")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for wl in list(self.workloads.values()):
            await self._stop_pods(wl)
        self.workloads.clear()

    def _on_event(self, ev: Event) -> None:
        if ev.rkey in ("deployments.apps", "secrets", "configmaps"):
            self._wake.set()

    def _register_node(self) -> None:
        rt = self.registry.type_for("", "v1", "nodes")
        node = {"metadata": {"name": self.node_name, "labels": {
            "node-role.kubernetes.io/control-plane": "", "kubernetes.io/hostname":
            self.node_name}}, "spec": {"taints": [dict(CONTROL_PLANE_TAINT)]}}
        with contextlib.suppress(ApiError):
            self.registry.create(rt, None, node, manager="kubelet")
            current = self.registry.get(rt, None, self.node_name)
            current["status"] = {"conditions": [{"type": "Ready", "status": "True",
                                                 "reason": "KubeletReady",
                                                 "message": "testbed kubelet is posting ready"}]}
            self.registry.update(rt, None, self.node_name, current, subresource="status",
                                 manager="kubelet")

    async def _run(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception:
                log.exception("kubelet sync failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)

    # -- sync ------------------------------------------------------------------------------
    async def sync(self) -> None:
        rt = self.registry.type_for("apps", "v1", "deployments")
        seen = set()
        for dep in list(self.registry.store.items(rt.key)):
            meta = dep["metadata"]
            key = (meta["namespace"], meta["name"])
            seen.add(key)
            if meta.get("deletionTimestamp"):
                continue
            template = (dep.get("spec") or {}).get("template") or {}
            digest = hashlib.sha256(json.dumps([template, self._inputs(dep)],
                                               sort_keys=True).encode()).hexdigest()[:12]
            wl = self.workloads.get(key)
            if wl is not None and wl.template_hash != digest:
                await self._stop_pods(wl)
                wl = None
            if wl is None:
                wl = Workload(key, digest)
                self.workloads[key] = wl
            await self._converge(dep, wl)
            self._report(dep, wl)
        for key in set(self.workloads) - seen:
            await self._stop_pods(self.workloads.pop(key))

    def _inputs(self, dep: dict[str, Any]) -> list[Any]:
        """The Secrets and ConfigMaps a pod reads: a change to them restarts it, as a rollout
        would after the bundle is reapplied."""
        ns = dep["metadata"]["namespace"]
        spec = (dep.get("spec") or {}).get("template", {}).get("spec") or {}
        refs = []
        for c in spec.get("containers") or []:
            for src in c.get("envFrom") or []:
                for kind in ("configMapRef", "secretRef"):
                    if kind in src:
                        refs.append((kind, src[kind].get("name")))
        for v in spec.get("volumes") or []:
            if "secret" in v:
                refs.append(("secretRef", v["secret"].get("secretName")))
            if "configMap" in v:
                refs.append(("configMapRef", v["configMap"].get("name")))
        out = []
        for kind, name in refs:
            plural = "secrets" if kind == "secretRef" else "configmaps"
            obj = self.registry.store.peek(plural, (ns, name))
            out.append([plural, name, obj["metadata"]["resourceVersion"] if obj else None])
        return out

    async def _converge(self, dep: dict[str, Any], wl: Workload) -> None:
        want = int((dep.get("spec") or {}).get("replicas", 1))
        wl.pods = [p for p in wl.pods if p.process is None or p.process.returncode is None
                   or p.error]
        spec = (dep.get("spec") or {}).get("template", {}).get("spec") or {}
        if not tolerates(spec.get("tolerations") or [], CONTROL_PLANE_TAINT):
            wl.pods = [Pod(f"{dep['metadata']['name']}-pending", error="0/1 nodes are "
                           "available: 1 node(s) had untolerated taint "
                           "{node-role.kubernetes.io/control-plane: }")]
            return
        while len(wl.pods) > want:
            pod = wl.pods.pop()
            await self._stop_pod(pod)
        while len(wl.pods) < want:
            suffix = hashlib.sha256(f"{wl.template_hash}-{len(wl.pods)}".encode()).hexdigest()
            pod = Pod(f"{dep['metadata']['name']}-{wl.template_hash[:10]}-{suffix[:5]}")
            wl.pods.append(pod)
            try:
                await self._start_pod(dep, pod)
            except PodError as e:
                pod.error = str(e)
                log.warning("pod %s cannot start: %s", pod.name, e)

    def _report(self, dep: dict[str, Any], wl: Workload) -> None:
        running = [p for p in wl.pods if not p.error and (
            p.process is None or p.process.returncode is None)]
        errors = [p.error for p in wl.pods if p.error]
        rt = self.registry.type_for("apps", "v1", "deployments")
        status: dict[str, Any] = {
            "observedGeneration": dep["metadata"].get("generation", 1),
            "replicas": len(wl.pods), "readyReplicas": len(running),
            "availableReplicas": len(running), "updatedReplicas": len(wl.pods),
            "conditions": [{"type": "Available", "status": "True" if running else "False",
                            "reason": "MinimumReplicasAvailable" if running else
                            "MinimumReplicasUnavailable",
                            "message": errors[0] if errors else "pods are running"}],
        }
        if not running:
            status.pop("readyReplicas")
            status.pop("availableReplicas")
        if dep.get("status") == status:
            return
        new = copy.deepcopy(dep)
        new["status"] = status
        with contextlib.suppress(ApiError):
            self.registry.update(rt, dep["metadata"]["namespace"], dep["metadata"]["name"],
                                 new, subresource="status", manager="kubelet")

    # -- pods ------------------------------------------------------------------------------
    def _lookup(self, plural: str, ns: str, name: str) -> dict[str, Any]:
        obj = self.registry.store.peek(plural, (ns, name))
        if obj is None:
            kind = "secret" if plural == "secrets" else "configmap"
            raise PodError(f'{kind} "{name}" not found')
        return obj

    def _data(self, plural: str, obj: dict[str, Any]) -> dict[str, str]:
        data = dict(obj.get("data") or {})
        if plural == "secrets":
            return {k: base64.b64decode(v).decode() for k, v in data.items()}
        return {k: str(v) for k, v in data.items()}

    def _env(self, ns: str, pod: Pod, container: dict[str, Any],
             mounts: dict[str, Path]) -> dict[str, str]:
        env: dict[str, str] = {}
        for src in container.get("envFrom") or []:
            for kind, plural in (("configMapRef", "configmaps"), ("secretRef", "secrets")):
                if kind in src:
                    try:
                        env.update(self._data(plural, self._lookup(plural, ns,
                                                                   src[kind]["name"])))
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
                                     "spec.nodeName": self.node_name}.get(path, "")
            for kind, plural in (("secretKeyRef", "secrets"), ("configMapKeyRef", "configmaps")):
                if kind in vf:
                    ref = vf[kind]
                    data = self._data(plural, self._lookup(plural, ns, ref["name"]))
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

    def _volumes(self, ns: str, pod_dir: Path, spec: dict[str, Any],
                 container: dict[str, Any]) -> dict[str, Path]:
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
                data = self._data(plural, self._lookup(plural, ns, ref))
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

    async def _start_pod(self, dep: dict[str, Any], pod: Pod) -> None:
        ns = dep["metadata"]["namespace"]
        spec = (dep.get("spec") or {}).get("template", {}).get("spec") or {}
        pod_dir = self.root / "pods" / pod.name
        shutil.rmtree(pod_dir, ignore_errors=True)
        pod_dir.mkdir(parents=True)
        for container in spec.get("containers") or []:
            command = list(container.get("command") or [])
            if not command or command[0] not in RUNNABLE:
                continue  # an image this stand-in cannot run: counted as running once placed
            mounts = self._volumes(ns, pod_dir, spec, container)
            env = self._env(ns, pod, container, mounts)
            kubeconfig = write_kubeconfig(pod_dir / "kubeconfig", "in-cluster", self.api_url)
            env.setdefault("OUTPOST_AGENT_KUBECONFIG", str(kubeconfig))
            env.setdefault("OUTPOST_AGENT_HTTP_PORT", "0")
            env.setdefault("OUTPOST_AGENT_HTTP_HOST", "127.0.0.1")
            argv = RUNNABLE[command[0]] + command[1:] + list(container.get("args") or [])
            pod.log_file = pod_dir / f"{container['name']}.log"
            out = pod.log_file.open("ab")
            pod.process = await asyncio.create_subprocess_exec(
                *argv, env={"PATH": os.environ.get("PATH", ""), **env}, stdout=out,
                stderr=asyncio.subprocess.STDOUT)
            out.close()
            log.info("started pod %s (%s) pid %d", pod.name, container["name"],
                     pod.process.pid)

    async def _stop_pod(self, pod: Pod, grace: float = 20.0) -> None:
        proc = pod.process
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def _stop_pods(self, wl: Workload) -> None:
        await asyncio.gather(*(self._stop_pod(p) for p in wl.pods))
        wl.pods.clear()

    def pods(self) -> list[Pod]:
        return [p for wl in self.workloads.values() for p in wl.pods]
