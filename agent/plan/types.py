"""What a plan is made of: observed state in, actions out. Plain data, no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

Obj = dict[str, Any]

# The field manager the agent applies as; the planner reads this manager's managedFields entry.
AGENT_FIELD_MANAGER = "outpost-agent"


def dig(obj: Any, *path: str) -> Any:
    """The value at `path` in nested mappings, or None where any step is missing."""
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


@dataclass(frozen=True)
class Observed:
    """The slice of the cluster a topology pass looks at, as the API returned it."""

    now: datetime
    kcp: Obj | None = None
    machine_deployments: Mapping[str, Obj] = field(default_factory=dict)
    machine_sets: Sequence[Obj] = ()
    infra_templates: Mapping[str, Obj] = field(default_factory=dict)
    bootstrap_templates: Mapping[str, Obj] = field(default_factory=dict)
    machines: Sequence[Obj] = ()


@dataclass(frozen=True)
class FieldsClaim:
    """A one-time rewrite of an object's metadata.managedFields, to be written before the
    Apply it rides on, so that the agent alone owns the fields it is the authority for (see
    `ownership`). Written as a merge patch of metadata.managedFields (the list is replaced
    whole) with metadata.resourceVersion as precondition: a stale one fails with 409 Conflict
    and the Apply must then wait for the next pass, which plans afresh."""

    managed_fields: tuple[Obj, ...]  # the object's complete new managedFields
    resource_version: str  # of the object the rewrite was computed from
    moved: tuple[tuple[str, str], ...] = ()  # (previous manager, field) now the agent's alone


@dataclass(frozen=True)
class Apply:
    """Server-side apply `body`: the whole configuration the agent owns for the object (or a
    whole object to create). With `claim`, rewrite managedFields first (see FieldsClaim)."""

    kind: str
    name: str
    body: Obj
    reason: str
    claim: FieldsClaim | None = None


@dataclass(frozen=True)
class Delete:
    kind: str
    name: str
    namespace: str
    reason: str
    uid: str | None = None


@dataclass(frozen=True)
class Note:
    """Something the plan could not do yet, and why: surfaced as a condition, not an error."""

    reason: str
    message: str


Action = Apply | Delete


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    notes: tuple[Note, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.actions
