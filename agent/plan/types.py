"""What a plan is made of: observed state in, actions out. Plain data, no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

Obj = dict[str, Any]


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
class Apply:
    """Server-side apply `body` (only the fields Outpost owns, or a whole object to create)."""

    kind: str
    name: str
    body: Obj
    reason: str


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
