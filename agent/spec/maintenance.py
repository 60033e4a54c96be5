"""When disruptive operations may start: maintenance windows, and how stale a spec may be.

Disruptive: a Kubernetes upgrade, a machine repave (a new machine template), an on-demand
certificate rotation; each replaces machines. Scaling and add-on repairs are never held.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, Field

from .base import Model

Day = Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
DAYS: tuple[Day, ...] = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


def _zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Europe" is a directory
        raise ValueError(f"{value!r} is not an IANA time zone like Europe/Berlin or UTC"
                         ) from None
    return value


def _hhmm(value: str) -> str:
    if not _HHMM.match(value):
        raise ValueError(f"{value!r} is not a time of day like 02:00 (24-hour HH:MM)")
    return value


class MaintenanceWindow(Model):
    """Opens at `start` local time on each of `days` (every day when empty) for
    `durationMinutes`; a window may run past midnight."""

    days: tuple[Day, ...] = ()
    start: Annotated[str, AfterValidator(_hhmm)]
    duration_minutes: Annotated[int, Field(ge=1, le=7 * 24 * 60)]
    time_zone: Annotated[str, AfterValidator(_zone)] = "UTC"

    def openings(self, around: datetime) -> list[tuple[datetime, datetime]]:
        """The window's (open, close) times, as aware datetimes, from a week before `around`
        to a week after (a window can last up to a week)."""
        zone = ZoneInfo(self.time_zone)
        local = around.astimezone(zone)
        hour, minute = (int(x) for x in self.start.split(":"))
        out = []
        for offset in range(-8, 9):
            day = (local + timedelta(days=offset)).date()
            if self.days and DAYS[day.weekday()] not in self.days:
                continue
            # Wall-clock local time (a DST gap or repeat resolves as zoneinfo does, fold 0).
            opens = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
            # The duration is real time, also across a DST change inside the window.
            closes = (opens.astimezone(UTC) + timedelta(minutes=self.duration_minutes)
                      ).astimezone(zone)
            out.append((opens, closes))
        return out

    def describe(self) -> str:
        days = ",".join(self.days) if self.days else "daily"
        return f"{days} {self.start} {self.time_zone} for {self.duration_minutes}m"


Operation = Literal["upgrade", "repave", "rotation"]
OPERATIONS: tuple[Operation, ...] = ("upgrade", "repave", "rotation")


def approval_subject(operation: Operation, spec: Mapping[str, Any]) -> str:
    """What an approval of `operation` approves, as a digest of the spec fields that make it
    (the spec as JSON, camelCase, unset fields left out; an OutpostCluster's spec and the
    signed ClusterSpec give the same): the target version and path of an upgrade, the machine
    templates of a repave, the rotateAfter of a rotation. An approval is valid only while the
    spec still says the same, so it cannot be replayed onto a later change."""
    if operation == "upgrade":
        body: Any = {"kubernetesVersion": spec.get("kubernetesVersion"),
                     "path": (spec.get("upgrade") or {}).get("path") or [],
                     "workers": {w.get("name"): w.get("version")
                                 for w in spec.get("workers") or ()}}
    elif operation == "repave":
        # Everything a machine template is made of: the machines and where they go.
        body = {"infrastructure": spec.get("infrastructure"),
                "controlPlane": (spec.get("controlPlane") or {}).get("machine"),
                "workers": {w.get("name"): w.get("machine") for w in spec.get("workers") or ()}}
    else:
        body = {"rotateAfter": (spec.get("certificates") or {}).get("rotateAfter")}
    raw = json.dumps([operation, body], sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(raw.encode()).hexdigest()


class Approval(Model):
    """Someone's go-ahead for one disruptive operation of the spec as it stands, signed with the
    spec by the gateway, so a site cut off after receiving it can still act on it."""

    operation: Operation
    subject: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$",
                                  description="approval_subject() of the spec approved")]
    approved_by: Annotated[str, Field(min_length=1, max_length=256)]
    approved_at: datetime
    revision: Annotated[int, Field(ge=0)] = Field(
        default=0, description="the spec revision the approver saw (for people; the subject "
                               "is what binds it)")


class MaintenancePolicy(Model):
    windows: tuple[MaintenanceWindow, ...] = Field(
        default=(), description="when disruptive operations may start (none: any time)")
    require_approval: tuple[Operation, ...] = Field(
        default=(), description="operations that start only with an approval in the spec")
    stale_after_days: Annotated[int, Field(ge=1, le=365)] | None = Field(
        default=None, description="no disruptive operation starts from a spec once the last "
                                  "contact with the management plane is older than this")
    emergency_days: Annotated[int, Field(ge=1, le=90)] = Field(
        default=7, description="a certificate rotation starts anyway (outside windows, stale) "
                               "when a certificate expires within this many days")


def window_state(windows: tuple[MaintenanceWindow, ...], now: datetime
                 ) -> tuple[bool, datetime | None]:
    """(open now, when the next one opens): (True, None) with no windows at all."""
    if not windows:
        return True, None
    upcoming: list[datetime] = []
    for w in windows:
        for opens, closes in w.openings(now):
            if opens <= now < closes:
                return True, None
            if opens > now:
                upcoming.append(opens)
    return False, min(upcoming) if upcoming else None
