"""What the owners of replica Machines (KubeadmControlPlane, MachineDeployment, MachineSet)
report alike: desired replicas, replica counts and versions, and the conditions about them.

One spelling for all three, so a client sees the same status shape whichever owner it reads.
"""

from __future__ import annotations

from collections import Counter

from .api import Api
from .conditions import condition, flag, is_true
from .util import Obj, deleting, dig, meta, observe, version_key


def spec_replicas(obj: Obj) -> int:
    """spec.replicas as written, 1 when unset (the webhooks' default)."""
    r = dig(obj, "spec", "replicas")
    return r if isinstance(r, int) else 1


def replicas_of(obj: Obj) -> int:
    """A MachineSet's or MachineDeployment's spec.replicas; a negative count also means 1."""
    r = spec_replicas(obj)
    return r if r >= 0 else 1


def replica_status(owner: Obj, machines: list[Obj], *, selector: str, up_to_date: int,
                   keep: tuple[str, ...] = ("conditions",)) -> Obj:
    """The replica counts and versions of owner's Machines (deleting ones included), plus the
    `keep` fields of its current status; owners add their own fields and conditions."""
    status: Obj = {k: v for k, v in (owner.get("status") or {}).items() if k in keep}
    status["selector"] = selector
    status["replicas"] = len(machines)
    status["readyReplicas"] = sum(is_true(m, "Ready") for m in machines)
    status["availableReplicas"] = sum(is_true(m, "Available") for m in machines)
    status["upToDateReplicas"] = up_to_date
    versions = Counter(v for m in machines
                       if isinstance(v := dig(m, "spec", "version"), str) and v)
    if versions:
        status["versions"] = [{"version": v, "replicas": n}
                              for v, n in sorted(versions.items(),
                                                 key=lambda kv: version_key(kv[0]))]
    return observe(status, owner)


def machines_ready(machines: list[Obj], type_: str = "MachinesReady") -> Obj:
    """True when every Machine is Ready (reason NoReplicas when there are none)."""
    bad = sorted(meta(m)["name"] for m in machines if not is_true(m, "Ready"))
    if bad:
        return condition(type_, False, "NotReady", "Not ready: " + ", ".join(bad))
    return condition(type_, True, "Ready" if machines else "NoReplicas")


def replica_conditions(machines: list[Obj], desired: int, *, up_from: int, down_from: int,
                       rollout: list[Obj]) -> list[Obj]:
    """MachinesReady, the owner's rollout conditions, ScalingUp / ScalingDown (counting from
    `up_from` / `down_from` Machines), and the idle Remediating, Deleting and Paused."""
    up, down = up_from < desired, down_from > desired
    return [
        machines_ready(machines),
        *rollout,
        flag("ScalingUp", up, "ScalingUp",
             f"Scaling up from {up_from} to {desired} replicas" if up else ""),
        flag("ScalingDown", down, "ScalingDown",
             f"Scaling down from {down_from} to {desired} replicas" if down else ""),
        condition("Remediating", False, "NotRemediating"),
        condition("Deleting", False, "NotDeleting"),
        condition("Paused", False, "NotPaused"),
    ]


def mark_up_to_date(api: Api, machines: list[Obj], outdated: dict[str, str]) -> None:
    """Each live Machine's UpToDate condition; `outdated` maps a name to why it is not."""
    for m in machines:
        if not deleting(m):
            why = outdated.get(meta(m)["name"])
            api.set_conditions(m, [flag("UpToDate", why is None, "UpToDate", why or "")])
