"""StatusReport: what an agent tells the management plane about its cluster."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from .base import Model

Phase = Literal["Pending", "Applying", "Converged", "Degraded"]


class Condition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: datetime


class ReplicaStatus(Model):
    desired: Annotated[int, Field(ge=0)]
    ready: Annotated[int, Field(ge=0)] = 0
    up_to_date: Annotated[int, Field(ge=0)] = 0
    version: str | None = None


class PoolStatus(ReplicaStatus):
    name: str


AddonPhase = Literal["Pending", "Applying", "Ready", "Degraded", "Failed", "Pruning"]


class AddonStatus(Model):
    """Where one add-on of the profile stands on the cluster."""

    name: str
    version: str = ""
    digest: str = ""
    phase: AddonPhase
    objects: Annotated[int, Field(ge=0)] = 0
    message: str = ""
    last_error: str | None = None


class MachineCertificates(Model):
    machine: str
    expires_at: datetime = Field(description="earliest expiry of the machine's certificates")


class StatusReport(Model):
    cluster: str
    observed_revision: Annotated[int, Field(ge=0)] = Field(
        description="newest revision received, accepted or not")
    applied_revision: Annotated[int, Field(ge=0)] = Field(
        description="newest revision the cluster has converged to")
    phase: Phase
    conditions: tuple[Condition, ...] = ()
    control_plane: ReplicaStatus | None = None
    workers: tuple[PoolStatus, ...] = ()
    addons: tuple[AddonStatus, ...] = ()
    # None (left out) until the control-plane machines report expiries.
    certificates: tuple[MachineCertificates, ...] | None = Field(
        default=None, description="control-plane machines' certificate expiry, soonest first")
    last_error: str | None = None
    connected: bool
    agent_version: str
    reported_at: datetime
