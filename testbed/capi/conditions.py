"""v1beta2 conditions: how the simulated controllers spell them and merge them into a status.

Merging keeps a condition's lastTransitionTime while its status holds, so recomputing the
conditions of a converged object yields exactly the status it already has (and no write).
"""

from __future__ import annotations

from typing import Any

from .util import Obj, dig, generation, now, rfc3339


def condition(type_: str, status: bool | None, reason: str, message: str = "") -> Obj:
    """A v1beta2 condition without its times; merge_conditions fills those in."""
    s = "Unknown" if status is None else ("True" if status else "False")
    return {"type": type_, "status": s, "reason": reason, "message": message}


def flag(type_: str, status: bool, reason: str, message: str = "") -> Obj:
    """A condition whose reason is `reason` when True and `Not<reason>` when False."""
    return condition(type_, status, reason if status else "Not" + reason, message)


def get_condition(obj: Obj, type_: str) -> Obj | None:
    conds = dig(obj, "status", "conditions")
    if not isinstance(conds, list):
        return None
    return next((c for c in conds if isinstance(c, dict) and c.get("type") == type_), None)


def is_true(obj: Obj, type_: str) -> bool:
    c = get_condition(obj, type_)
    return bool(c and c.get("status") == "True")


def merge_conditions(old: Any, new: list[Obj], generation: int | None) -> list[Obj]:
    """Set conditions by type, keeping the others and keeping lastTransitionTime when the
    status did not change."""
    stamp = rfc3339(now())
    result = [dict(c) for c in old if isinstance(c, dict)] if isinstance(old, list) else []
    index = {c.get("type"): i for i, c in enumerate(result)}
    for c in new:
        cur = result[index[c["type"]]] if c["type"] in index else None
        merged = dict(c)
        if generation is not None:
            merged["observedGeneration"] = generation
        if cur is not None and cur.get("status") == c["status"] and cur.get("lastTransitionTime"):
            merged["lastTransitionTime"] = cur["lastTransitionTime"]
        else:
            merged["lastTransitionTime"] = stamp
        if cur is None:
            index[c["type"]] = len(result)
            result.append(merged)
        else:
            result[index[c["type"]]] = merged
    return result


def with_conditions(status: Obj, obj: Obj, conds: list[Obj]) -> Obj:
    """status (a fresh dict) with conds merged into the object's current conditions."""
    status["conditions"] = merge_conditions(dig(obj, "status", "conditions"), conds,
                                            generation(obj))
    return status
