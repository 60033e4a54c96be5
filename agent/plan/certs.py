"""Certificate facts from the control-plane machines, for the expiry metric and status."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from .types import Obj

CONTROL_PLANE_LABEL = "cluster.x-k8s.io/control-plane"


def _parse(ts: object) -> datetime | None:
    if not isinstance(ts, str):
        return None
    try:
        found = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None
    return found if found.tzinfo is not None else found.replace(tzinfo=UTC)  # naive: UTC


def expiries(machines: Iterable[Obj]) -> list[tuple[str, datetime]]:
    """(machine, `status.certificatesExpiryDate`) of each live control-plane machine that
    reports one, soonest first."""
    out = [
        (str((m.get("metadata") or {}).get("name", "")), d) for m in machines
        if CONTROL_PLANE_LABEL in ((m.get("metadata") or {}).get("labels") or {})
        and not (m.get("metadata") or {}).get("deletionTimestamp")
        and (d := _parse((m.get("status") or {}).get("certificatesExpiryDate"))) is not None
    ]
    return sorted(out, key=lambda e: (e[1], e[0]))


def earliest_expiry(machines: Iterable[Obj]) -> datetime | None:
    """The day the cluster stops working unless certificates are rotated before it."""
    found = expiries(machines)
    return found[0][1] if found else None
