"""Decide whether a candidate spec received from the management plane may be enforced.

Pure (no I/O, no asyncio) so every rule can be table-tested and fuzzed. The checks run in a fixed
order, cheapest and least trusting first: nothing from the payload is read before its signature
verifies, and the cluster name and revision are checked before full validation so a spec for
another cluster or a replayed old spec is reported as such even when it would not validate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from agent.spec import ClusterSpec, EnvelopeError, explain, parse_envelope, verify

__all__ = ["DEFAULT_MAX_BYTES", "REASONS", "Rejected", "check_candidate"]

DEFAULT_MAX_BYTES = 256 * 1024

REASONS: tuple[str, ...] = (
    "oversize",
    "malformed",
    "unknown_key",
    "bad_signature",
    "wrong_cluster",
    "stale_revision",
    "invalid_spec",
)


class Rejected(EnvelopeError):
    """A candidate that must not be enforced; `reason` is one of REASONS.

    `revision` is the revision the signed payload claims, when the check got far enough to read
    it for this cluster (stale_revision, invalid_spec), else None. Only then is it trustworthy.
    """

    def __init__(self, reason: str, message: str, *, revision: int | None = None) -> None:
        super().__init__(reason, message)
        self.revision = revision


def check_candidate(
    raw: bytes,
    *,
    keys: Mapping[str, Ed25519PublicKey],
    cluster: str,
    cached_revision: int,
    max_bytes: int = DEFAULT_MAX_BYTES,
    current: ClusterSpec | None = None,
) -> ClusterSpec:
    """The spec inside `raw` if this agent may enforce it, else raise Rejected.

    `current` is the spec in force (revision `cached_revision`): a candidate at that same revision
    is accepted only if it is the same spec (a re-delivery after reconnecting, or a re-signing);
    any other content at an already used revision is a replay.
    """
    if len(raw) > max_bytes:
        raise Rejected("oversize", f"the envelope is {len(raw)} bytes; at most {max_bytes} bytes "
                       "are accepted")
    try:
        payload = verify(parse_envelope(raw), keys)
    except EnvelopeError as e:
        reason = e.reason if e.reason in REASONS else "malformed"
        raise Rejected(reason, e.message) from e

    data = _payload_object(payload)

    name = data.get("clusterName")
    if not isinstance(name, str):
        raise Rejected("invalid_spec", f"clusterName: expected the name of this cluster "
                       f"({cluster!r}), got {_short(name)}")
    if name != cluster:
        raise Rejected("wrong_cluster", f"the spec is for cluster {_short(name)}, but this agent "
                       f"manages cluster {cluster!r}")

    revision = data.get("revision")
    if type(revision) is not int or revision < 1:
        raise Rejected("invalid_spec", f"revision: expected a whole number of at least 1, got "
                       f"{_short(revision)}")
    if revision < cached_revision:
        raise Rejected("stale_revision", f"revision {revision} is older than revision "
                       f"{cached_revision} already in force; a spec never goes backwards (an "
                       "old spec replayed, or the gateway lost its revision counter)",
                       revision=revision)
    if revision == cached_revision and not _same_spec(data, current):
        raise Rejected("stale_revision", f"revision {revision} is the revision already in force "
                       "but the content differs: a replay, or a change published without bumping "
                       "the revision", revision=revision)

    try:
        return ClusterSpec.model_validate(data)
    except ValidationError as e:
        raise Rejected("invalid_spec", explain(e), revision=revision) from e


def _payload_object(payload: bytes) -> dict[str, Any]:
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys (two parsers could disagree)."""
    try:
        data = json.loads(payload.decode("utf-8"), object_pairs_hook=_no_duplicates,
                          parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError included
        raise Rejected("malformed", f"the signed payload is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise Rejected("malformed", "the signed payload must be a JSON object, got "
                       f"{type(data).__name__}")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _same_spec(data: dict[str, Any], current: ClusterSpec | None) -> bool:
    if current is None:
        return False
    try:
        return ClusterSpec.model_validate(data) == current
    except ValidationError:
        return False


def _short(value: object, limit: int = 80) -> str:
    """repr() bounded in length: a message quotes attacker-sized values only in part."""
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
