"""Certificate facts from the control-plane machines, for the expiry metric and status."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from .types import Obj

CONTROL_PLANE_LABEL = "cluster.x-k8s.io/control-plane"


def _parse(ts: object) -> datetime | None:
    if not isinstance(ts, str):
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None


def earliest_expiry(machines: Iterable[Obj]) -> datetime | None:
    """The soonest `status.certificatesExpiryDate` among live control-plane machines: the day
    the cluster stops working unless certificates are rotated before it."""
    dates = [
        d for m in machines
        if CONTROL_PLANE_LABEL in ((m.get("metadata") or {}).get("labels") or {})
        and not (m.get("metadata") or {}).get("deletionTimestamp")
        and (d := _parse((m.get("status") or {}).get("certificatesExpiryDate"))) is not None
    ]
    return min(dates) if dates else None
