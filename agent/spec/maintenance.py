"""When disruptive operations may start: maintenance windows, and how stale a spec may be.

Disruptive: a Kubernetes upgrade, a machine repave (a new machine template), an on-demand
certificate rotation; each replaces machines. Scaling and add-on repairs are never held.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, Field

from .base import Model

Day = Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
DAYS: tuple[Day, ...] = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


def _zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
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


class MaintenancePolicy(Model):
    windows: tuple[MaintenanceWindow, ...] = Field(
        default=(), description="when disruptive operations may start (none: any time)")
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
