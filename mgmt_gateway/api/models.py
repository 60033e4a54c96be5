"""Response bodies of the gateway API (camelCase JSON), also the source of the OpenAPI schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from agent.spec import ClusterSpec, Condition, StatusReport
from agent.spec.base import Model

from ..state import Phase


class Operation(Model):
    """The answer to a change: accepted, to be carried out by the bootstrap worker."""

    name: str
    phase: Phase
    revision: int = Field(description="the desired spec revision after this change")
    href: str = Field(description="where to follow the cluster")


UNREADABLE: Literal["Unreadable"] = "Unreadable"


class ClusterSummary(Model):
    """One row of the fleet view: what the gateway wants and what the agent last said.

    A record the gateway cannot read is listed too, with phase `Unreadable` and
    `unreadableReason`, and without the fields only its record could tell (namespace,
    revisions): it is skipped until someone repairs or deletes it.
    """

    name: str
    namespace: str | None = Field(
        default=None, description="the cluster's namespace; unset when its record is unreadable")
    phase: Phase | Literal["Unreadable"]
    desired_revision: int | None = Field(
        default=None, description="revision of the newest desired spec; unset when unreadable")
    published_revision: int | None = Field(
        default=None,
        description="newest revision published to the agent; unset when unreadable")
    applied_revision: int | None = Field(
        default=None, description="revision the cluster has converged to (agent report)")
    observed_revision: int | None = Field(
        default=None, description="newest revision the agent received, accepted or not")
    in_sync: bool = Field(description="the agent reports the desired revision applied")
    connected: bool = Field(
        description="the agent reports a live link and its last report is recent")
    last_seen: datetime | None = Field(default=None,
                                       description="when the agent's last report reached NATS")
    agent_phase: str | None = Field(default=None,
                                    description="Pending, Applying, Converged or Degraded")
    last_error: str | None = Field(default=None, description="the agent's last error")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="the agent's conditions as last reported: Ready, SpecApplied, ... and one "
                    "per plan note that holds now (DowngradeRefused, WaitingForRollout, ...)")
    failed_reason: str | None = None
    bootstrap_error: str | None = Field(
        default=None, description="why the gateway's last attempt at the current step failed; "
                                  "it retries with backoff")
    unreadable_reason: str | None = Field(
        default=None, description="phase Unreadable: what is wrong with the record and how to "
                                  "fix it; the gateway skips this cluster meanwhile")


class ClusterList(Model):
    items: list[ClusterSummary]


class Step(Model):
    phase: Phase
    started_at: datetime
    finished_at: datetime | None = None
    duration_seconds: float | None = Field(default=None,
                                           description="unset while the step runs")
    detail: str = ""


class ClusterDetail(ClusterSummary):
    namespace: str
    phase: Phase
    desired_revision: int = Field(description="revision of the newest desired spec")
    published_revision: int = Field(description="newest revision published to the agent")
    spec: ClusterSpec = Field(description="the newest desired spec")
    steps: list[Step]
    created_at: datetime
    updated_at: datetime
    status: StatusReport | None = Field(default=None,
                                        description="the agent's last report, in full")


class Health(Model):
    status: str
