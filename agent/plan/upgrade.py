"""Kubernetes upgrade policy: control plane first, one minor at a time, never down, never newer
workers than the control plane, never interrupt a rollout in progress.

Every version here may have been read from the cluster, so all comparisons go through the
tolerant parser (`versions`); an unreadable one raises VersionError, which the planner turns into
a note for that object."""

from __future__ import annotations

from .types import Obj
from .versions import compare, parse_version


def next_step(current: str, target: str) -> str | None:
    """The next version on the way from `current` to `target`; None when nothing is to be done
    (already there, or `target` is older: downgrades are refused by the caller's note)."""
    if compare(target, current) <= 0:
        return None
    cur, tgt = parse_version(current), parse_version(target)
    if tgt.major != cur.major or tgt.minor <= cur.minor + 1:
        return target
    # More than one minor ahead: stop at the next minor's first release, as kubeadm requires.
    return f"v{cur.major}.{cur.minor + 1}.0"


def is_downgrade(current: str, target: str) -> bool:
    return compare(target, current) < 0


def _int(obj: Obj, *path: str) -> int | None:
    cur: object = obj
    for p in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(p)
    return cur if isinstance(cur, int) and not isinstance(cur, bool) else None


def rollout_settled(obj: Obj) -> bool:
    """A KCP or MachineDeployment whose machines all match its spec: safe to change it again."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    if status.get("observedGeneration") != meta.get("generation"):
        return False
    want = _int(obj, "spec", "replicas")
    want = 1 if want is None else want
    return (_int(obj, "status", "replicas") == want
            and _int(obj, "status", "upToDateReplicas") == want
            and _int(obj, "status", "readyReplicas") == want)


def running_version(kcp: Obj) -> str | None:
    """The oldest version any control-plane machine runs (status.version), if reported."""
    v = (kcp.get("status") or {}).get("version")
    return v if isinstance(v, str) else None


def worker_version(target: str, current: str | None, control_plane: str | None) -> str | None:
    """The version a pool may run now: toward `target`, one minor at a time, never past the
    version the whole control plane already runs. None when the pool must wait."""
    ceiling = control_plane
    if ceiling is None:
        return current
    goal = target if compare(target, ceiling) <= 0 else ceiling
    if current is None:
        return goal
    if is_downgrade(current, goal):
        return current
    return next_step(current, goal) or current
