"""Every name the gateway and the agents meet on over NATS, defined once for both daemons.

Renaming any of these is a wire-protocol change: agents in the field run old versions for years.
"""

from __future__ import annotations

from typing import Final

SPECS_BUCKET: Final = "outpost-specs"
"""KV bucket of signed specs, one key per cluster (the agent reads only its own key)."""
SPECS_HISTORY: Final = 10
"""Past envelopes kept per cluster: enough to see what was published recently, bounded."""
BUNDLES_BUCKET: Final = "outpost-bundles"
"""Object Store of add-on bundles, each named by its sha256 digest ("sha256:<hex>") and never
rewritten: the signed spec names the digest, so a bundle can be checked wherever it comes from."""
CONTENT_BUCKET: Final = "outpost-content"
"""Object Store of content uploaded to the gateway (add-on manifests, chart archives), each named
by its sha256 digest; only the gateway reads it (agents get rendered bundles)."""
STATUS_BUCKET: Final = "outpost-status"
"""KV bucket of agent status reports, one key per cluster, history 1."""
EVENTS_STREAM: Final = "OUTPOST_EVENTS"
EVENTS_SUBJECTS: Final = "outpost.events.>"
EVENTS_MAX_AGE: Final = 30 * 24 * 3600.0
EVENTS_DUPLICATE_WINDOW: Final = 3600.0
"""Longer than JetStream's 2-minute default: a re-send after an outage of up to an hour is still
recognised. Beyond that, consumers can dedupe on (cluster, seq), which never repeats."""

JS_STREAM_NAME_IN_USE: Final = 10058
"""JetStream API error code: a stream (or bucket) of that name already exists (a race won by
another client, which is fine)."""
JS_MAX_CONSUMERS: Final = 10026
"""JetStream API error code: the stream refuses another consumer (2.15's default limit is 1,000
per stream, which is why agents never hold a consumer of their own)."""


def kv_subject(bucket: str, key: str) -> str:
    """The subject JetStream stores a KV key's values under (puts and live updates)."""
    return f"$KV.{bucket}.{key}"


def event_subject(cluster: str) -> str:
    return f"outpost.events.{cluster}"


def msg_id(cluster: str, seq: int) -> str:
    """The Nats-Msg-Id of an agent event: re-sends within the duplicate window are dropped."""
    return f"{cluster}-{seq}"
