"""Carry out a plan through the Kubernetes seam, going on past failures.

One object the API rejects for good must not block every other pool and the template clean-up,
so each action is tried on its own. Only an action that depends on a failed one waits: a
KubeadmControlPlane or MachineDeployment whose body references a template that could not be
created is not pointed at it. Every pass re-plans from what it reads, so whatever is left
undone is tried again by the next pass (after the work queue's backoff).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agent.kube import resources as r
from agent.kube.errors import KubeError
from agent.kube.types import KubeClient, Obj, Resource
from agent.plan import AGENT_FIELD_MANAGER, Action, Apply, Plan

FIELD_MANAGER = AGENT_FIELD_MANAGER
_REF_KEYS = ("infrastructureRef", "configRef")


class UnknownKind(Exception):
    pass


@dataclass(frozen=True)
class Failure:
    action: Action
    error: str
    permanent: bool  # the API refused the request itself (400/403/404/422): retrying as is fails


@dataclass
class Outcome:
    done: list[Action] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    waiting: list[tuple[Action, str]] = field(default_factory=list)  # not tried, and why

    @property
    def error(self) -> str | None:
        """One line for logs and the status report, or None when everything was done."""
        if not self.failed and not self.waiting:
            return None
        parts = [f"{f.action.kind}/{f.action.name}: {f.error}" for f in self.failed]
        parts += [f"{a.kind}/{a.name} waits: {why}" for a, why in self.waiting]
        return "; ".join(parts)


def resource_for(kind: str, api_version: str | None = None) -> Resource:
    for res in r.ALL:
        if res.kind == kind and (api_version is None or res.api_version == api_version):
            return res
    raise UnknownKind(f"the agent has no resource mapping for kind {kind!r}")


def references(body: Any) -> Iterator[tuple[str, str]]:
    """(kind, name) of every object reference (`infrastructureRef`, `configRef`) in a body."""
    if isinstance(body, dict):
        for key, value in body.items():
            if key in _REF_KEYS and isinstance(value, dict) and value.get("name"):
                yield str(value.get("kind") or ""), str(value["name"])
            else:
                yield from references(value)
    elif isinstance(body, list):
        for item in body:
            yield from references(item)


async def execute(kube: KubeClient, plan: Plan, *, field_manager: str = FIELD_MANAGER,
                  written: Callable[[Action, Obj | None], None] | None = None,
                  may_write: Callable[[], bool] = lambda: True) -> Outcome:
    """Apply each action; the agent is the authority for the fields it applies, so server-side
    apply forces ownership of exactly those fields and no others. `may_write` is asked before
    every write (leadership can be lost mid-pass): once it says no, nothing more is written."""
    out = Outcome()
    failed: set[tuple[str, str]] = set()
    for action in plan.actions:
        if not may_write():
            out.waiting.append((action, "this replica is no longer the leader"))
            continue
        blocked = [ref for ref in references(action.body) if ref in failed] \
            if isinstance(action, Apply) else []
        if blocked:
            kind, name = blocked[0]
            out.waiting.append((action, f"{kind}/{name} could not be written"))
            failed.add((action.kind, action.name))
            continue
        try:
            if isinstance(action, Apply):
                res = resource_for(action.kind, action.body.get("apiVersion"))
                if action.claim is not None:
                    # Become the only owner of the fields the agent is the authority for, so
                    # the apply below removes what the spec no longer says. The resourceVersion
                    # is a precondition: on 409 the next pass plans again from fresh data.
                    await kube.patch(res, action.name, {"metadata": {
                        "managedFields": list(action.claim.managed_fields),
                        "resourceVersion": action.claim.resource_version}},
                        action.body.get("metadata", {}).get("namespace"),
                        field_manager=field_manager)
                result: Obj | None = await kube.apply(res, action.body,
                                                      field_manager=field_manager, force=True)
            else:
                res = resource_for(action.kind)
                await kube.delete(res, action.name, action.namespace, uid=action.uid)
                result = None
        except (KubeError, UnknownKind) as e:
            status = getattr(e, "status", 0)
            out.failed.append(Failure(action, str(e), permanent=status in (400, 403, 404, 422)
                                      or isinstance(e, UnknownKind)))
            failed.add((action.kind, action.name))
            continue
        out.done.append(action)
        if written is not None:
            written(action, result)
    return out
