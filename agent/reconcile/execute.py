"""Carry out a plan through the Kubernetes seam, in order, stopping at the first failure.

Stopping is safe because every pass re-plans from what it reads: whatever a cut-off pass left
undone, the next one does.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.kube import resources as r
from agent.kube.types import KubeClient, Obj, Resource
from agent.plan import Action, Apply, Plan

FIELD_MANAGER = "outpost-agent"


class UnknownKind(Exception):
    pass


def resource_for(kind: str, api_version: str | None = None) -> Resource:
    for res in r.ALL:
        if res.kind == kind and (api_version is None or res.api_version == api_version):
            return res
    raise UnknownKind(f"the agent has no resource mapping for kind {kind!r}")


async def execute(kube: KubeClient, plan: Plan, *, field_manager: str = FIELD_MANAGER,
                  written: Callable[[Action, Obj | None], None] | None = None) -> list[Action]:
    """Apply each action; returns those done. The agent is the authority for the fields it
    applies, so server-side apply forces ownership of exactly those fields and no others."""
    done: list[Action] = []
    for action in plan.actions:
        if isinstance(action, Apply):
            res = resource_for(action.kind, action.body.get("apiVersion"))
            result: Obj | None = await kube.apply(res, action.body,
                                                  field_manager=field_manager, force=True)
        else:
            res = resource_for(action.kind)
            await kube.delete(res, action.name, action.namespace, uid=action.uid)
            result = None
        done.append(action)
        if written is not None:
            written(action, result)
    return done
