"""Kubernetes upgrade policy: control plane first, one minor at a time along the spec's path
(the exact release for each intermediate minor, never an invented one), never down, never newer
workers than the control plane nor more than the kubelet skew behind it, never interrupt a
rollout in progress.

Every version here may have been read from the cluster, so all comparisons go through the
tolerant parser (`versions`); an unreadable one raises VersionError, which the planner turns into
a note for that object."""

from __future__ import annotations

from collections.abc import Sequence

from agent.spec.models import MAX_KUBELET_SKEW

from .types import Obj
from .versions import compare, parse_version


class PathGap(Exception):
    """The upgrade must stop at a minor the spec's path names no release for."""

    def __init__(self, minor: str) -> None:
        super().__init__(minor)
        self.minor = minor


def next_step(current: str, target: str, path: Sequence[str] = ()) -> str | None:
    """The next version on the way from `current` to `target`; None when nothing is to be done
    (already there, or `target` is older: downgrades are refused by the caller's note). More
    than one minor ahead, kubeadm upgrades one minor at a time: the step is the path's release
    for the next minor; raises PathGap when the path has none."""
    if compare(target, current) <= 0:
        return None
    cur, tgt = parse_version(current), parse_version(target)
    if tgt.major != cur.major or tgt.minor <= cur.minor + 1:
        return target
    for stop in path:
        v = parse_version(stop)
        if (v.major, v.minor) == (cur.major, cur.minor + 1):
            return stop
    raise PathGap(f"v{cur.major}.{cur.minor + 1}")


def steps(current: str, target: str, path: Sequence[str] = ()) -> list[str]:
    """Every version the control plane still goes through, the target last (stops the path
    lacks are left out: next_step reports them)."""
    out: list[str] = []
    while True:
        try:
            step = next_step(current, target, path)
        except PathGap:
            return [*out, target]
        if step is None:
            return out
        out.append(step)
        current = step


def progress(current: str, target: str, path: Sequence[str] = ()) -> tuple[int, list[str]]:
    """(the step `current` is taking toward `target`, 1-based; the whole route): the path's
    stops older than the target, then the target. A stop of a minor the cluster has reached
    counts as done, whatever its patch."""
    tgt = parse_version(target)
    route = [v for v in path if (parse_version(v).major, parse_version(v).minor)
             < (tgt.major, tgt.minor)] + [target]
    cur = parse_version(current)
    done = sum(1 for v in route[:-1]
               if (parse_version(v).major, parse_version(v).minor) <= (cur.major, cur.minor))
    return done + 1, route


def skew_too_wide(control_plane: str, kubelet: str) -> bool:
    """A kubelet more than the supported number of minors behind the API server."""
    cp, kl = parse_version(control_plane), parse_version(kubelet)
    return cp.major != kl.major or cp.minor - kl.minor > MAX_KUBELET_SKEW


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
    """The version a pool may run now: `target`, but never past the version the whole control
    plane already runs. Straight there, not minor by minor: a pool's machines are replaced, not
    upgraded in place, so each extra stop would be a needless repave. None when the pool must
    wait."""
    ceiling = control_plane
    if ceiling is None:
        return current
    goal = target if compare(target, ceiling) <= 0 else ceiling
    if current is None:
        return goal
    if is_downgrade(current, goal):
        return current
    return goal
