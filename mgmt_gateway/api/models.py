"""Response bodies of the gateway API (camelCase JSON), also the source of the OpenAPI schemas."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from agent.spec import ClusterSpec, StatusReport
from agent.spec.models import Model

from ..state import Phase


class Operation(Model):
    """The answer to a change: accepted, to be carried out by the bootstrap worker."""

    name: str
    phase: Phase
    revision: int = Field(description="the desired spec revision after this change")
    href: str = Field(description="where to follow the cluster")


class ClusterSummary(Model):
    """One row of the fleet view: what the gateway wants and what the agent last said."""

    name: str
    namespace: str
    phase: Phase
    desired_revision: int = Field(description="revision of the newest desired spec")
    published_revision: int = Field(description="newest revision published to the agent")
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
    last_error: str | None = None
    failed_reason: str | None = None


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
    spec: ClusterSpec = Field(description="the newest desired spec")
    steps: list[Step]
    created_at: datetime
    updated_at: datetime
    status: StatusReport | None = Field(default=None,
                                        description="the agent's last report, in full")


class Health(Model):
    status: str
