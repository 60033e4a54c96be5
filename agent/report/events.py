"""AgentEvent: one thing the agent did or refused, as the management plane receives it.

Events travel through the disk outbox and JetStream, so they are small, immutable and carry a
per-agent sequence number: the outbox stamps it, it survives restarts, and it is the JetStream
message id (``<cluster>-<seq>``) that lets the server drop a re-sent copy after a retry.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Field

from agent.spec.base import Model

__all__ = ["MAX_MESSAGE_CHARS", "AgentEvent", "EventType", "Reason"]

EventType = Literal["Normal", "Warning"]

MAX_MESSAGE_CHARS: Final = 2048
"""Longer messages are cut: a rejected spec can explain itself at length, but one event must
never crowd the bounded outbox or exceed a NATS payload limit."""

_REASON = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_OBJECT = re.compile(r"^[A-Za-z][A-Za-z0-9]*/[^/\s]*/[^/\s]+$")


class Reason:
    """Well-known reasons (CamelCase, like Kubernetes event reasons); others are allowed."""

    SPEC_APPLIED: Final = "SpecApplied"
    SPEC_REJECTED: Final = "SpecRejected"
    SCALED: Final = "Scaled"
    CREATED: Final = "Created"
    DELETED: Final = "Deleted"
    DRIFT_CORRECTED: Final = "DriftCorrected"


def _cut(value: object) -> object:
    if isinstance(value, str) and len(value) > MAX_MESSAGE_CHARS:
        return value[: MAX_MESSAGE_CHARS - 1] + "…"
    return value


def _reason(value: str) -> str:
    if not _REASON.match(value):
        raise ValueError("must be CamelCase letters and digits, like SpecApplied")
    return value


def _object_ref(value: str | None) -> str | None:
    if value is not None and not _OBJECT.match(value):
        raise ValueError("must be 'Kind/namespace/name' ('Kind//name' for cluster-scoped objects)")
    return value


class AgentEvent(Model):
    """What changed in (or was refused for) one edge cluster; camelCase JSON on the wire.

    ``seq`` 0 means "not stamped yet": :meth:`Outbox.append_event` assigns the next number, so
    concurrent callers never race for one.
    """

    cluster: str
    seq: Annotated[int, Field(ge=0)] = 0
    time: AwareDatetime
    type: EventType = "Normal"
    reason: Annotated[str, AfterValidator(_reason)]
    message: Annotated[str, BeforeValidator(_cut)] = ""
    revision: Annotated[int, Field(ge=0)] | None = None
    object: Annotated[str | None, AfterValidator(_object_ref)] = Field(
        default=None, description="'Kind/namespace/name' of the object concerned")
