"""Make the agent the only owner of the fields it is the authority for, once, after a pivot.

Server-side apply removes a field the applier stops applying only when no other manager owns
it. After the pivot, the CAPI objects carry ownership the agent never wrote: the create in the
workload cluster records an Update entry (named after the pivot's client), and the gateway may
have applied the same fields ("outpost-gateway"). Their claim on `kubeadmConfigSpec.users` or
`rollout.after` would keep a revoked SSH key on every machine while the agent believes it removed
it. As Flux does when it takes over from kubectl, the agent rewrites managedFields once: the
fields in its domain move from those inherited entries into its own Apply entry, and the next
apply that omits them removes them. Managers the agent does not know (a person's kubectl, another
controller) are left alone; the planner reports their claim instead.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from datetime import datetime

from .compare import Path, decode_fields, encode_fields, is_entry, managed_entries, render
from .types import FieldsClaim, Obj

# Managers whose ownership of agent fields is the agent's by inheritance: the gateway that
# rendered the objects, the pivot that copied them, the stand-in the API server invents for
# objects nobody tracked, and the agent's own client when it creates rather than applies.
INHERITED_MANAGERS = frozenset({"outpost-gateway", "outpost-pivot", "before-first-apply"})


def _inherited(entry: Obj, manager: str) -> bool:
    if entry.get("subresource"):
        return False
    name = entry.get("manager")
    return name in INHERITED_MANAGERS or (name == manager and entry.get("operation") != "Apply")


def _in_domain(path: Path, domain: set[Path]) -> bool:
    return any(path[:len(d)] == d for d in domain)


def claim_fields(live: Obj, api_version: str, domain: Iterable[Path], manager: str,
                 now: datetime) -> FieldsClaim | None:
    """The managedFields rewrite moving `domain` fields (and anything below them) from
    inherited entries at `api_version` into `manager`'s Apply entry; None when none owns any.
    Entries at other apiVersions are left alone: their paths are another schema's."""
    scope = set(domain)
    entries = managed_entries(live)
    moved: list[tuple[str, Path]] = []
    rewritten: list[Obj] = []
    mine: Obj | None = None
    for entry in entries:
        if is_entry(entry, manager):
            mine = copy.deepcopy(entry)
            rewritten.append(mine)
            continue
        if not _inherited(entry, manager) or entry.get("apiVersion") != api_version:
            rewritten.append(copy.deepcopy(entry))
            continue
        fields = decode_fields(entry.get("fieldsV1"))
        taken = {p for p in fields if _in_domain(p, scope)}
        if not taken:
            rewritten.append(copy.deepcopy(entry))
            continue
        moved += [(str(entry.get("manager")), p) for p in sorted(taken)]
        if fields - taken:
            rewritten.append({**copy.deepcopy(entry), "fieldsV1": encode_fields(fields - taken)})
    if not moved:
        return None
    if mine is None:
        mine = {"manager": manager, "operation": "Apply", "apiVersion": api_version,
                "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "fieldsType": "FieldsV1",
                "fieldsV1": {}}
        rewritten.insert(0, mine)
    mine["fieldsV1"] = encode_fields(decode_fields(mine.get("fieldsV1"))
                                     | {p for _, p in moved})
    rv = str((live.get("metadata") or {}).get("resourceVersion") or "")
    return FieldsClaim(tuple(rewritten), rv,
                       tuple(sorted({(m, render(p)) for m, p in moved})))


def with_managed_fields(live: Obj, claim: FieldsClaim | None) -> Obj:
    """`live` as it reads once `claim` is written (so the rest of the plan sees it)."""
    if claim is None:
        return live
    meta = {**(live.get("metadata") or {}), "managedFields": [dict(e)
                                                                for e in claim.managed_fields]}
    return {**live, "metadata": meta}


def other_owners(live: Obj, path: Path, manager: str) -> list[str]:
    """Managers other than `manager`'s Apply entry owning `path` or something below it: while
    they do, server-side apply keeps the field even when `manager` stops applying it."""
    out = []
    for entry in managed_entries(live):
        if is_entry(entry, manager) or entry.get("subresource"):
            continue
        if any(p[:len(path)] == path for p in decode_fields(entry.get("fieldsV1"))):
            out.append(f"{entry.get('manager')} ({entry.get('operation')})")
    return out
