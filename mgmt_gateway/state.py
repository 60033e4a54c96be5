"""Cluster records: what the gateway knows of each cluster, persisted in the management cluster.

Each record is one ConfigMap (`outpost-cluster-<name>` in the gateway's namespace), written with
optimistic concurrency: two gateway replicas can never both create the same cluster or both
advance it, because the second write fails on a stale resourceVersion and re-reads. A gateway
restart resumes every cluster from its record.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field

from agent.kube import AlreadyExists, KubeClient, NotFound
from agent.kube import resources as r
from agent.spec import ClusterSpec
from agent.spec.models import Model

Phase = Literal["Requested", "CapiCreated", "FirstControlPlaneReady", "AgentInstalled",
                "Pivoted", "Managed", "Deleting", "Failed"]
PHASES: tuple[Phase, ...] = ("Requested", "CapiCreated", "FirstControlPlaneReady",
                             "AgentInstalled", "Pivoted", "Managed")
LABEL = "outpost.io/cluster-record"


def now() -> datetime:
    return datetime.now(UTC)


class StepRecord(Model):
    phase: Phase
    started_at: datetime
    finished_at: datetime | None = None
    detail: str = ""


class ClusterRecord(Model):
    name: str
    phase: Phase = "Requested"
    spec: ClusterSpec = Field(description="the newest desired spec (its revision included)")
    published_revision: int = 0
    published_kv_revision: int = 0
    failed_reason: str | None = None
    steps: tuple[StepRecord, ...] = ()
    pivot_journal: tuple[str, ...] = Field(
        default=(), description="object keys already moved (create or delete), for resuming")
    created_at: datetime = Field(default_factory=now)
    updated_at: datetime = Field(default_factory=now)
    # Not persisted in the JSON: the ConfigMap's resourceVersion, for compare-and-set.
    resource_version: str = Field(default="", exclude=True)

    def advanced(self, phase: Phase, detail: str = "") -> ClusterRecord:
        t = now()
        steps = [s if s.finished_at else s.model_copy(update={"finished_at": t})
                 for s in self.steps]
        steps.append(StepRecord(phase=phase, started_at=t, detail=detail))
        return self.model_copy(update={"phase": phase, "steps": tuple(steps), "updated_at": t,
                                       "failed_reason": None})

    def failed(self, reason: str) -> ClusterRecord:
        return self.model_copy(update={"phase": "Failed", "failed_reason": reason,
                                       "updated_at": now()})


class RecordStore:
    def __init__(self, kube: KubeClient, namespace: str = "outpost-system") -> None:
        self.kube = kube
        self.namespace = namespace

    @staticmethod
    def object_name(name: str) -> str:
        return f"outpost-cluster-{name}"

    def _to_obj(self, rec: ClusterRecord) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.object_name(rec.name), "namespace": self.namespace,
                                "labels": {LABEL: rec.name}}
        if rec.resource_version:
            meta["resourceVersion"] = rec.resource_version
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
                "data": {"record": rec.model_dump_json(by_alias=True)}}

    @staticmethod
    def _from_obj(obj: dict[str, Any]) -> ClusterRecord:
        rec = ClusterRecord.model_validate(json.loads(obj["data"]["record"]))
        return rec.model_copy(update={"resource_version": obj["metadata"]["resourceVersion"]})

    async def create(self, rec: ClusterRecord) -> ClusterRecord:
        """Raises AlreadyExists: a cluster is requested once, whichever replica is asked."""
        obj = await self.kube.create(r.CONFIG_MAP, self._to_obj(rec))
        return self._from_obj(obj)

    async def get(self, name: str) -> ClusterRecord | None:
        try:
            return self._from_obj(await self.kube.get(r.CONFIG_MAP, self.object_name(name),
                                                      self.namespace))
        except NotFound:
            return None

    async def list(self) -> list[ClusterRecord]:
        found = await self.kube.list(r.CONFIG_MAP, self.namespace, label_selector=LABEL)
        return sorted((self._from_obj(o) for o in found.items), key=lambda c: c.name)

    async def update(self, rec: ClusterRecord) -> ClusterRecord:
        """Compare-and-set on the record's resourceVersion; raises Conflict when stale."""
        obj = await self.kube.replace(r.CONFIG_MAP, self._to_obj(rec),
                                      field_manager="outpost-gateway")
        return self._from_obj(obj)

    async def delete(self, name: str) -> None:
        await self.kube.delete(r.CONFIG_MAP, self.object_name(name), self.namespace)


__all__ = ["PHASES", "AlreadyExists", "ClusterRecord", "Phase", "RecordStore", "StepRecord"]
