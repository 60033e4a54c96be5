"""Whether a disruptive operation may start now: pure, from the cluster's maintenance policy,
the time, how long ago the management plane was last heard from, and the earliest certificate
expiry.

- A stale spec (no contact for longer than `staleAfterDays`) starts no upgrade and no repave;
  certificate rotation goes on (an expired certificate is an outage).
- Outside every maintenance window nothing disruptive starts, except a certificate rotation
  when a certificate expires within `emergencyDays` (said in a note).
- An operation the policy says needs approval waits for one that approves the spec as it is
  (an approval of another version or template, e.g. replayed from an earlier change, does not
  count, and the note says so).
- What is already rolling is never interrupted (the planner's own rule); scaling and add-on
  repairs are not disruptive and never wait here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from agent.spec import ClusterSpec
from agent.spec.maintenance import (
    MaintenancePolicy,
    Operation,
    approval_subject,
    window_state,
)

from .types import Note


def _span(seconds: float) -> str:
    s = int(seconds)
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    return f"{d}d{h}h" if d else f"{h}h{m}m" if h else f"{m}m"


@dataclass(frozen=True)
class Gate:
    policy: MaintenancePolicy | None
    now: datetime
    contact_age: float | None = None  # seconds since the management plane was last heard
    cert_expiry: datetime | None = None
    approved: frozenset[Operation] = frozenset()  # approvals that match the spec as it is
    refused: tuple[str, ...] = ()  # approvals that do not, and why

    @property
    def stale(self) -> bool:
        p = self.policy
        return (p is not None and p.stale_after_days is not None
                and self.contact_age is not None and self.contact_age > p.stale_after_days * 86400)

    def check(self, op: Operation, what: str) -> tuple[bool, Note | None]:
        """(may start, a note saying why not or why anyway)."""
        p = self.policy
        if p is None:
            return True, None
        if self.stale and op != "rotation":
            return False, Note("StaleSpec", (
                f"{what} does not start: the management plane was last heard from "
                f"{_span(self.contact_age or 0)} ago, over the policy's "
                f"{p.stale_after_days}d; replicas, add-ons and certificate rotation go on"))
        expiring = self.cert_expiry is not None and self.cert_expiry - self.now < timedelta(
            days=p.emergency_days)
        is_open, next_open = window_state(p.windows, self.now)
        if op == "rotation" and expiring and (not is_open or op in p.require_approval):
            # An outage is worse than an unplanned rotation: no window, no approval needed.
            assert self.cert_expiry is not None
            return True, Note("EmergencyRotation", (
                f"{what} starts now, window or approval aside: a certificate expires "
                f"{self.cert_expiry:%Y-%m-%d %H:%M} UTC, within the policy's "
                f"{p.emergency_days}d"))
        if op in p.require_approval and op not in self.approved:
            why = f"; {'; '.join(self.refused)}" if self.refused else ""
            return False, Note("WaitingForApproval", (
                f"{what} needs an approval of the {op} (outpostctl approve <cluster> {op}){why}"))
        if is_open:
            return True, None
        when = (f"the next opens {next_open.isoformat(timespec='minutes')} (in "
                f"{_span((next_open - self.now).total_seconds())})" if next_open else
                "no window opens within a week")
        windows = "; ".join(w.describe() for w in p.windows)
        return False, Note("WaitingForMaintenanceWindow",
                           f"{what} waits for a maintenance window ({windows}): {when}")


def check_approvals(spec: ClusterSpec) -> tuple[frozenset[Operation], tuple[str, ...]]:
    """The operations the spec's approvals approve as it stands, and why the others do not."""
    body = spec.model_dump(by_alias=True, mode="json", exclude_none=True)
    approved: set[Operation] = set()
    refused: list[str] = []
    for a in spec.approvals or ():
        if a.subject == approval_subject(a.operation, body):
            approved.add(a.operation)
        else:
            refused.append(f"the approval of the {a.operation} by {a.approved_by} "
                           f"({a.approved_at:%Y-%m-%d %H:%M} UTC, revision {a.revision}) "
                           "approves another one and does not count")
    return frozenset(approved), tuple(refused)
