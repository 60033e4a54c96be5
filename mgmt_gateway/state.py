"""Cluster records: what the gateway knows of each cluster, persisted in the management cluster.

Each record is one ConfigMap (`outpost-cluster-<name>` in the gateway's namespace), written with
optimistic concurrency: two gateway replicas can never both create the same cluster or both
advance it, because the second write fails on a stale resourceVersion and re-reads. A gateway
restart resumes every cluster from its record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, ValidationError

from agent.kube import AlreadyExists, KubeClient, NotFound
from agent.kube import resources as r
from agent.spec import ClusterSpec, explain
from agent.spec.base import Model

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
    last_error: str | None = Field(
        default=None, description="why the gateway's last attempt at the current step failed "
                                  "(it retries with backoff); cleared when a step succeeds")
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
                                       "failed_reason": None, "last_error": None})

    def failed(self, reason: str) -> ClusterRecord:
        return self.model_copy(update={"phase": "Failed", "failed_reason": reason,
                                       "updated_at": now()})


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A ConfigMap that carries the record label but no usable record (edited by hand,
    truncated, written by an incompatible version). Skipped by everyone, reported, never
    fatal: one bad object must not stop the fleet."""

    name: str  # the cluster it claims to be (label value, else derived from the object name)
    object_name: str
    namespace: str
    resource_version: str
    reason: str
    kind: str = "ConfigMap"

    @property
    def key(self) -> tuple[str, str, str]:
        """One distinct problem: the same object at the same version for the same reason."""
        return (self.object_name, self.resource_version, self.reason)

    def describe(self) -> str:
        if self.kind != "ConfigMap":
            return f"{self.kind} {self.namespace}/{self.object_name} cannot be used: {self.reason}"
        return (f"ConfigMap {self.namespace}/{self.object_name} carries the label {LABEL} but "
                f"no readable cluster record: {self.reason}")

    def remedy(self) -> str:
        if self.kind != "ConfigMap":
            return (f"fix it (kubectl -n {self.namespace} edit {self.kind.lower()} "
                    f"{self.object_name}); its conditions say what is wrong")
        return (f"restore its data.record from a backup, or delete it (kubectl -n "
                f"{self.namespace} delete configmap {self.object_name}) and request the "
                "cluster again")


class UnreadableRecord(Exception):
    """Raised where one record was asked for and it cannot be read."""

    def __init__(self, problem: Unreadable) -> None:
        super().__init__(problem.describe())
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Scan:
    """Every record ConfigMap: the readable ones and the ones that must be skipped."""

    records: list[ClusterRecord]
    unreadable: list[Unreadable]


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
        data = rec.model_dump(mode="json", by_alias=True)
        if data.get("lastError") is None:
            data.pop("lastError", None)  # healthy records stay readable by older gateways
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
                "data": {"record": json.dumps(data, separators=(",", ":"))}}

    def _from_obj(self, obj: dict[str, Any]) -> ClusterRecord:
        """The record in `obj`; raises UnreadableRecord saying what is wrong with it."""
        meta = obj.get("metadata") or {}
        object_name = str(meta.get("name", ""))
        label = str((meta.get("labels") or {}).get(LABEL, ""))
        claimed = label or object_name.removeprefix("outpost-cluster-")

        def unreadable(reason: str) -> UnreadableRecord:
            return UnreadableRecord(Unreadable(
                name=claimed, object_name=object_name,
                namespace=str(meta.get("namespace") or self.namespace),
                resource_version=str(meta.get("resourceVersion", "")), reason=reason[:500]))

        text = (obj.get("data") or {}).get("record")
        if not isinstance(text, str) or not text.strip():
            raise unreadable("data.record is missing or empty")
        try:
            rec = ClusterRecord.model_validate_json(text)
        except ValidationError as e:
            if any(err["type"] == "json_invalid" for err in e.errors()):
                raise unreadable(f"data.record is not valid JSON ({len(text)} characters; "
                                 "truncated?)") from None
            raise unreadable(f"data.record is not a valid cluster record: {explain(e)}"
                             ) from None
        if object_name != self.object_name(rec.name) or (label and label != rec.name):
            raise unreadable(f"it holds the record of cluster {rec.name!r}, which belongs in "
                             f"ConfigMap {self.object_name(rec.name)} labelled {rec.name!r}")
        return rec.model_copy(update={"resource_version": str(meta.get("resourceVersion", ""))})

    async def create(self, rec: ClusterRecord) -> ClusterRecord:
        """Raises AlreadyExists: a cluster is requested once, whichever replica is asked."""
        obj = await self.kube.create(r.CONFIG_MAP, self._to_obj(rec))
        return self._from_obj(obj)

    async def get(self, name: str) -> ClusterRecord | None:
        """None when there is no record; raises UnreadableRecord when there is a bad one."""
        try:
            obj = await self.kube.get(r.CONFIG_MAP, self.object_name(name), self.namespace)
        except NotFound:
            return None
        return self._from_obj(obj)

    async def scan(self) -> Scan:
        """Every record, with the unreadable ones set apart instead of failing the lot."""
        found = await self.kube.list(r.CONFIG_MAP, self.namespace, label_selector=LABEL)
        records: list[ClusterRecord] = []
        unreadable: list[Unreadable] = []
        for obj in found.items:
            try:
                records.append(self._from_obj(obj))
            except UnreadableRecord as e:
                unreadable.append(e.problem)
        return Scan(sorted(records, key=lambda c: c.name),
                    sorted(unreadable, key=lambda u: u.object_name))

    async def list(self) -> list[ClusterRecord]:
        """The readable records only (see `scan` for the others)."""
        return (await self.scan()).records

    async def update(self, rec: ClusterRecord) -> ClusterRecord:
        """Compare-and-set on the record's resourceVersion; raises Conflict when stale."""
        obj = await self.kube.replace(r.CONFIG_MAP, self._to_obj(rec),
                                      field_manager="outpost-gateway")
        return self._from_obj(obj)

    async def delete(self, name: str) -> None:
        await self.kube.delete(r.CONFIG_MAP, self.object_name(name), self.namespace)


__all__ = ["PHASES", "AlreadyExists", "ClusterRecord", "Phase", "RecordStore", "Scan",
           "StepRecord", "Unreadable", "UnreadableRecord"]
