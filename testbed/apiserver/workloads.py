"""The emulator's stand-ins for the deployment, replica-set, daemon-set and job controllers and
the scheduler.

On a real cluster kube-controller-manager turns a Deployment into a ReplicaSet per pod template
and the ReplicaSet into Pods, kube-scheduler binds each Pod to a Node whose taints it tolerates,
and the kubelet of that Node runs it and reports it ready. The emulator has no controller
manager, so this module plays the first two the same way (the testbed's kubelet stand-in plays
the node on either backend): a Deployment gets a `<name>-<template hash>` ReplicaSet with the
`pod-template-hash` label, older ones are scaled to zero, Pods are named `<replicaset>-<5>`,
and the statuses count ready Pods. The scheduler honours taints and tolerations and the
nodeSelector (not affinity); a Pod no Node can take stays Pending with the scheduler's message.
Rolling updates are not paced (the new set is scaled up at once). A DaemonSet gets a Pod bound to
each eligible Node; a Job runs Pods until one succeeds, and is deleted once finished when its
ttlSecondsAfterFinished is 0 (longer TTLs are not timed).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import random
import string
from datetime import UTC, datetime
from typing import Any

from .errors import ApiError
from .registry import Registry
from .store import Event, Obj
from .sweeper import Sweeper

log = logging.getLogger(__name__)

HASH_LABEL = "pod-template-hash"
_SUFFIX = string.ascii_lowercase + string.digits
_KEYS = ("deployments.apps", "replicasets.apps", "daemonsets.apps", "jobs.batch", "pods",
         "nodes")
DS_HASH_LABEL = "controller-revision-hash"
MANAGER = "kube-controller-manager"


def tolerates(tolerations: list[dict[str, Any]] | None, taint: dict[str, Any]) -> bool:
    """Whether a toleration matches a taint, by the scheduler's rules."""
    for t in tolerations or []:
        if t.get("effect") not in (None, "", taint.get("effect")):
            continue
        if t.get("operator") == "Exists" and not t.get("key"):
            return True
        if t.get("key") != taint.get("key"):
            continue
        if t.get("operator", "Equal") == "Exists" or t.get("value", "") == taint.get("value",
                                                                                        ""):
            return True
    return False


def _controller_uid(obj: Obj) -> str | None:
    ref = next((r for r in obj["metadata"].get("ownerReferences") or [] if r.get("controller")),
               None)
    return str(ref.get("uid")) if ref else None


def _owner(obj: Obj, kind: str, api_version: str) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def _ready(pod: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _template_hash(template: Obj) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    return "".join(_SUFFIX[int(digest[i:i + 2], 16) % len(_SUFFIX)] for i in range(0, 20, 2))


class WorkloadControllers(Sweeper):
    name = "workload-controllers"

    def __init__(self, registry: Registry, delay: float = 0.02) -> None:
        super().__init__(registry, delay)
        registry.store.subscribe(self._on_event)

    def _on_event(self, ev: Event) -> None:
        if ev.rkey in _KEYS:
            self.wake()

    def sweep(self) -> None:
        store = self.registry.store
        for d in list(store.items("deployments.apps")):
            if not d["metadata"].get("deletionTimestamp"):
                self._deployment(d)
        for rs in list(store.items("replicasets.apps")):
            if not rs["metadata"].get("deletionTimestamp"):
                self._replica_set(rs)
        for d in list(store.items("deployments.apps")):
            if not d["metadata"].get("deletionTimestamp"):
                self._deployment_status(d)
        for ds in list(store.items("daemonsets.apps")):
            if not ds["metadata"].get("deletionTimestamp"):
                self._daemon_set(ds)
        for job in list(store.items("jobs.batch")):
            if not job["metadata"].get("deletionTimestamp"):
                self._job(job)
        self._schedule()

    # -- writes ----------------------------------------------------------------------------
    def _write(self, plural: str, group: str, obj: Obj, *, status: bool = False) -> None:
        rt = self.registry.type_for(group, "v1", plural)  # apps/v1, batch/v1 and v1 alike
        with contextlib.suppress(ApiError):
            self.registry.update(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"],
                                 obj, manager=MANAGER, subresource="status" if status else None)

    def _create(self, plural: str, group: str, ns: str, body: Obj) -> None:
        rt = self.registry.type_for(group, "v1", plural)
        with contextlib.suppress(ApiError):
            self.registry.create(rt, ns, body, manager=MANAGER)

    # -- deployments -----------------------------------------------------------------------
    def _sets_of(self, d: Obj) -> list[Obj]:
        ns, uid = d["metadata"]["namespace"], d["metadata"]["uid"]
        return [rs for rs in self.registry.store.items("replicasets.apps", ns)
                if _controller_uid(rs) == uid]

    def _deployment(self, d: Obj) -> None:
        spec = d.get("spec") or {}
        want = int(spec.get("replicas", 1))
        template = copy.deepcopy(spec.get("template") or {})
        h = _template_hash(template)
        name = f"{d['metadata']['name']}-{h}"
        sets = self._sets_of(d)
        if not any(rs["metadata"]["name"] == name for rs in sets):
            template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = h
            selector = copy.deepcopy(spec.get("selector") or {})
            selector.setdefault("matchLabels", {})[HASH_LABEL] = h
            self._create("replicasets", "apps", d["metadata"]["namespace"], {
                "metadata": {"name": name, "labels": {
                    **(template["metadata"].get("labels") or {})},
                    "ownerReferences": [_owner(d, "Deployment", "apps/v1")]},
                "spec": {"replicas": want, "selector": selector, "template": template}})
        for rs in sets:
            replicas = want if rs["metadata"]["name"] == name else 0
            if (rs.get("spec") or {}).get("replicas") != replicas:
                new = copy.deepcopy(rs)
                new["spec"]["replicas"] = replicas
                self._write("replicasets", "apps", new)

    def _deployment_status(self, d: Obj) -> None:
        spec = d.get("spec") or {}
        want = int(spec.get("replicas", 1))
        h = _template_hash(spec.get("template") or {})
        sets = self._sets_of(d)
        pods = [p for rs in sets for p in self._pods_of(rs)]
        updated = [p for p in pods if (p["metadata"].get("labels") or {}).get(HASH_LABEL) == h]
        ready = sum(_ready(p) for p in pods)
        # maxUnavailable defaults to 25%, rounded down: one replica must be up.
        available_enough = ready >= want - (want // 4)
        status: Obj = {"observedGeneration": d["metadata"].get("generation", 1),
                       "replicas": len(pods), "updatedReplicas": len(updated),
                       "readyReplicas": ready, "availableReplicas": ready,
                       "unavailableReplicas": max(want - ready, 0)}
        status = {k: v for k, v in status.items() if v or k == "observedGeneration"}
        old = d.get("status") or {}
        old_cond = {c.get("type"): c for c in old.get("conditions") or []}
        conds = []
        for type_, ok, reason, message in (
                ("Available", available_enough,
                 "MinimumReplicasAvailable" if available_enough else
                 "MinimumReplicasUnavailable",
                 "Deployment has minimum availability." if available_enough else
                 "Deployment does not have minimum availability."),
                ("Progressing", True,
                 "NewReplicaSetAvailable" if len(updated) == ready == want else
                 "ReplicaSetUpdated",
                 f'ReplicaSet "{d["metadata"]["name"]}-{h}" '
                 + ("has successfully progressed." if len(updated) == ready == want else
                    "is progressing."))):
            prev = old_cond.get(type_) or {}
            same = prev.get("status") == ("True" if ok else "False") and \
                prev.get("reason") == reason
            conds.append({"type": type_, "status": "True" if ok else "False",
                          "lastUpdateTime": prev.get("lastUpdateTime") if same else _now(),
                          "lastTransitionTime": prev.get("lastTransitionTime")
                          if prev.get("status") == ("True" if ok else "False") else _now(),
                          "reason": reason, "message": message})
        status["conditions"] = conds
        if status != old:
            new = copy.deepcopy(d)
            new["status"] = status
            self._write("deployments", "apps", new, status=True)

    # -- replica sets ----------------------------------------------------------------------
    def _pods_of(self, rs: Obj) -> list[Obj]:
        ns, uid = rs["metadata"]["namespace"], rs["metadata"]["uid"]
        return [p for p in self.registry.store.items("pods", ns)
                if _controller_uid(p) == uid and not p["metadata"].get("deletionTimestamp")]

    def _replica_set(self, rs: Obj) -> None:
        want = int((rs.get("spec") or {}).get("replicas", 1))
        pods = sorted(self._pods_of(rs), key=lambda p: p["metadata"]["creationTimestamp"])
        ns = rs["metadata"]["namespace"]
        for _ in range(want - len(pods)):
            template = copy.deepcopy((rs.get("spec") or {}).get("template") or {})
            name = f"{rs['metadata']['name']}-" + "".join(random.choices(_SUFFIX[:26], k=5))
            meta = template.get("metadata") or {}
            self._create("pods", "", ns, {
                "metadata": {"name": name, "labels": meta.get("labels") or {},
                             "annotations": meta.get("annotations") or {},
                             "ownerReferences": [_owner(rs, "ReplicaSet", "apps/v1")]},
                "spec": template.get("spec") or {}})
        rt = self.registry.type_for("", "v1", "pods")
        for p in pods[want:][::-1] if len(pods) > want else []:
            with contextlib.suppress(ApiError):
                self.registry.delete(rt, ns, p["metadata"]["name"])
        pods = self._pods_of(rs)
        ready = sum(_ready(p) for p in pods)
        status = {k: v for k, v in {
            "replicas": len(pods), "fullyLabeledReplicas": len(pods), "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": rs["metadata"].get("generation", 1)}.items()
            if v or k in ("replicas", "observedGeneration")}
        if (rs.get("status") or {}) != status:
            new = copy.deepcopy(rs)
            new["status"] = status
            self._write("replicasets", "apps", new, status=True)

    # -- daemon sets -----------------------------------------------------------------------
    def _eligible(self, spec: Obj) -> list[Obj]:
        """Ready Nodes whose taints the pod template tolerates and whose labels it selects."""
        return [n for n in self.registry.store.items("nodes")
                if not (n.get("spec") or {}).get("unschedulable")
                and any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (n.get("status") or {}).get("conditions") or [])
                and all(tolerates(spec.get("tolerations"), t)
                        for t in (n.get("spec") or {}).get("taints") or []
                        if t.get("effect") in ("NoSchedule", "NoExecute"))
                and all((n["metadata"].get("labels") or {}).get(k) == v
                        for k, v in (spec.get("nodeSelector") or {}).items())]

    def _daemon_set(self, ds: Obj) -> None:
        """One Pod per eligible Node (bound to it directly), replaced when the template
        changes; the status counts as the real controller does."""
        template = copy.deepcopy((ds.get("spec") or {}).get("template") or {})
        h = _template_hash(template)
        ns = ds["metadata"]["namespace"]
        nodes = {n["metadata"]["name"] for n in self._eligible(template.get("spec") or {})}
        pods = self._pods_of(ds)
        rt = self.registry.type_for("", "v1", "pods")
        for p in pods:
            stale = (p["metadata"].get("labels") or {}).get(DS_HASH_LABEL) != h
            if stale or (p.get("spec") or {}).get("nodeName") not in nodes:
                with contextlib.suppress(ApiError):
                    self.registry.delete(rt, ns, p["metadata"]["name"])
        pods = self._pods_of(ds)
        placed = {(p.get("spec") or {}).get("nodeName") for p in pods}
        meta = template.get("metadata") or {}
        for node in sorted(nodes - placed):
            name = f"{ds['metadata']['name']}-" + "".join(random.choices(_SUFFIX[:26], k=5))
            self._create("pods", "", ns, {
                "metadata": {"name": name, "labels": {**(meta.get("labels") or {}),
                                                      DS_HASH_LABEL: h},
                             "annotations": meta.get("annotations") or {},
                             "ownerReferences": [_owner(ds, "DaemonSet", "apps/v1")]},
                "spec": {**(template.get("spec") or {}), "nodeName": node}})
        pods = self._pods_of(ds)
        ready = sum(_ready(p) for p in pods)
        status = {"observedGeneration": ds["metadata"].get("generation", 1),
                  "desiredNumberScheduled": len(nodes), "currentNumberScheduled": len(pods),
                  "numberMisscheduled": 0, "numberReady": ready, "numberAvailable": ready,
                  "updatedNumberScheduled": sum(
                      (p["metadata"].get("labels") or {}).get(DS_HASH_LABEL) == h
                      for p in pods)}
        if len(nodes) > ready:
            status["numberUnavailable"] = len(nodes) - ready
        if (ds.get("status") or {}) != status:
            new = copy.deepcopy(ds)
            new["status"] = status
            self._write("daemonsets", "apps", new, status=True)

    # -- jobs ------------------------------------------------------------------------------
    def _job(self, job: Obj) -> None:
        """Pods until one succeeds (or backoffLimit failures), then Complete (or Failed); a
        finished Job with ttlSecondsAfterFinished 0 is deleted, as the TTL controller does
        (longer TTLs are not timed here)."""
        spec = job.get("spec") or {}
        ns = job["metadata"]["namespace"]
        old = job.get("status") or {}
        done = {c.get("type") for c in old.get("conditions") or []
                if c.get("status") == "True"} & {"Complete", "Failed"}
        if done:
            if spec.get("ttlSecondsAfterFinished") == 0:
                rt = self.registry.type_for("batch", "v1", "jobs")
                with contextlib.suppress(ApiError):
                    self.registry.delete(rt, ns, job["metadata"]["name"])
            return
        pods = self._pods_of(job)
        succeeded = sum((p.get("status") or {}).get("phase") == "Succeeded" for p in pods)
        failed = sum((p.get("status") or {}).get("phase") == "Failed" for p in pods)
        active = len(pods) - succeeded - failed
        limit = int(spec.get("backoffLimit", 6))
        if not succeeded and failed <= limit and active == 0:
            template = copy.deepcopy(spec.get("template") or {})
            meta = template.get("metadata") or {}
            name = f"{job['metadata']['name']}-" + "".join(random.choices(_SUFFIX[:26], k=5))
            self._create("pods", "", ns, {
                "metadata": {"name": name, "labels": {
                    **(meta.get("labels") or {}), "job-name": job["metadata"]["name"],
                    "batch.kubernetes.io/job-name": job["metadata"]["name"]},
                    "annotations": meta.get("annotations") or {},
                    "ownerReferences": [_owner(job, "Job", "batch/v1")]},
                "spec": template.get("spec") or {}})
            active += 1
        status: Obj = {"startTime": old.get("startTime") or _now(), "active": active,
                       "succeeded": succeeded, "failed": failed}
        status = {k: v for k, v in status.items() if v or k == "startTime"}
        now = _now()
        if succeeded:
            status.update(completionTime=now, conditions=[
                {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                 "message": "Reached expected number of succeeded pods",
                 "lastProbeTime": now, "lastTransitionTime": now},
                {"type": "Complete", "status": "True", "reason": "CompletionsReached",
                 "message": "Reached expected number of succeeded pods",
                 "lastProbeTime": now, "lastTransitionTime": now}])
            status.pop("active", None)
        elif failed > limit:
            status["conditions"] = [
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": "Job has reached the specified backoff limit",
                 "lastProbeTime": now, "lastTransitionTime": now}]
            status.pop("active", None)
        if old != status:
            new = copy.deepcopy(job)
            new["status"] = status
            self._write("jobs", "batch", new, status=True)

    # -- scheduler -------------------------------------------------------------------------
    def _schedule(self) -> None:
        nodes = [n for n in self.registry.store.items("nodes")
                 if not (n.get("spec") or {}).get("unschedulable")
                 and any(c.get("type") == "Ready" and c.get("status") == "True"
                         for c in (n.get("status") or {}).get("conditions") or [])]
        for pod in list(self.registry.store.items("pods")):
            spec = pod.get("spec") or {}
            if spec.get("nodeName") or pod["metadata"].get("deletionTimestamp"):
                continue
            fits = [n for n in nodes if all(
                tolerates(spec.get("tolerations"), t)
                for t in (n.get("spec") or {}).get("taints") or []
                if t.get("effect") in ("NoSchedule", "NoExecute")) and all(
                (n["metadata"].get("labels") or {}).get(k) == v
                for k, v in (spec.get("nodeSelector") or {}).items())]
            new = copy.deepcopy(pod)
            if fits:
                new["spec"]["nodeName"] = fits[0]["metadata"]["name"]
                self._write("pods", "", new)
                continue
            message = self._unschedulable(nodes)
            cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": message}
            status = new.setdefault("status", {})
            if status.get("conditions") != [cond] or status.get("phase") != "Pending":
                status.update(phase="Pending", conditions=[cond])
                self._write("pods", "", new, status=True)

    def _unschedulable(self, nodes: list[Obj]) -> str:
        total = len(list(self.registry.store.items("nodes")))
        if not nodes:
            return f"0/{total} nodes are available."
        taint = ((nodes[0].get("spec") or {}).get("taints") or [{}])[0]
        return (f"0/{total} nodes are available: {len(nodes)} node(s) had untolerated taint "
                f"{{{taint.get('key')}: {taint.get('value', '')}}}.")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
