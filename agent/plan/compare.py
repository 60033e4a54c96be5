"""Does the live object already carry the fields we would apply? Zero writes when it does."""

from __future__ import annotations

from typing import Any


def covers(live: Any, wanted: Any) -> bool:
    """True when every field in `wanted` has the same value in `live` (maps compared as subsets,
    lists and scalars exactly). Fields others own are not looked at, so they never cause writes."""
    if isinstance(wanted, dict):
        return isinstance(live, dict) and all(
            k in live and covers(live[k], v) for k, v in wanted.items())
    return bool(live == wanted)
