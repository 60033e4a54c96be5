"""Publisher figures: how long a 10,000-event backlog takes to drain from the outbox into the
events stream, pipelined (the default window) and one record at a time (window 1, how it used
to work), next to a floor measured in the same run: the same events published straight to the
stream with ``js.publish_async`` (same Msg-Id header, same bound in flight), no outbox.

Each variant uses its own cluster name, so no message id repeats and nothing is dropped as a
duplicate. Filling an outbox (one fsync per event) is not timed.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import nats
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType

from agent.report.events import AgentEvent
from agent.report.outbox import Outbox
from agent.report.publisher import DEFAULT_WINDOW, Publisher
from agent.spec.wire import (
    EVENTS_DUPLICATE_WINDOW,
    EVENTS_MAX_AGE,
    EVENTS_STREAM,
    EVENTS_SUBJECTS,
    event_subject,
    msg_id,
)
from testbed.natsd import NatsServer

BACKLOG = 10_000
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def _event(cluster: str, seq: int) -> AgentEvent:
    return AgentEvent(cluster=cluster, seq=seq, time=T0, reason="Scaled",
                      message=f"MachineDeployment {cluster}-md-0 scaled to {seq} replicas",
                      revision=seq, object=f"MachineDeployment/default/{cluster}-md-0")


async def _in_stream(js: nats.js.JetStreamContext, cluster: str) -> int:
    info = await js.stream_info(EVENTS_STREAM, subjects_filter=event_subject(cluster))
    return (info.state.subjects or {}).get(event_subject(cluster), 0)


async def _floor(url: str, cluster: str) -> tuple[float, int]:
    """Raw pipelined publishes of the same payloads, at most DEFAULT_WINDOW awaiting acks."""
    payloads = [_event(cluster, seq).model_dump_json(by_alias=True).encode()
                for seq in range(1, BACKLOG + 1)]
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=10, publish_async_max_pending=DEFAULT_WINDOW)
        subject = event_subject(cluster)
        start = time.perf_counter()
        acks = [await js.publish_async(subject, payload,
                                       headers={"Nats-Msg-Id": msg_id(cluster, seq)})
                for seq, payload in enumerate(payloads, 1)]
        await asyncio.gather(*acks)
        elapsed = time.perf_counter() - start
        return elapsed, await _in_stream(js, cluster)
    finally:
        await nc.close()


async def _drain(url: str, root: Path, cluster: str, window: int) -> tuple[float, int]:
    """Time one Publisher.flush() over a backlog already on disk."""
    with Outbox(root / cluster) as outbox:
        for seq in range(1, BACKLOG + 1):
            outbox.append_event(_event(cluster, seq))
        nc = await nats.connect(url)
        try:
            publisher = Publisher(outbox, cluster, lambda: nc, timeout=10, window=window)
            start = time.perf_counter()
            ok = await publisher.flush()
            elapsed = time.perf_counter() - start
            if not ok:
                print(f"  ({cluster}: the drain did not finish; {outbox.depth} left)")
            return elapsed, await _in_stream(nc.jetstream(), cluster)
        finally:
            await nc.close()


def _line(label: str, seconds: float, stored: int, floor: float | None = None) -> str:
    rate = BACKLOG / seconds if seconds else float("inf")
    vs = f"   ({seconds / floor:.1f}x floor)" if floor else ""
    return f"  {label:<52} {seconds:6.2f} s   {rate:8,.0f}/s   [{stored:,} stored]{vs}"


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        async with NatsServer(root / "nats") as server:
            nc = await nats.connect(server.url)
            try:
                await nc.jetstream().add_stream(
                    name=EVENTS_STREAM, subjects=[EVENTS_SUBJECTS], storage=StorageType.FILE,
                    retention=RetentionPolicy.LIMITS, discard=DiscardPolicy.OLD,
                    max_age=EVENTS_MAX_AGE, duplicate_window=EVENTS_DUPLICATE_WINDOW)
            finally:
                await nc.close()
            floor, stored = await _floor(server.url, "bench-floor")
            print(f"  {BACKLOG:,}-event backlog into {EVENTS_STREAM}, "
                  f"{DEFAULT_WINDOW} in flight at most")
            print(_line("floor: js.publish_async straight to the stream", floor, stored))
            piped, stored = await _drain(server.url, root, "bench-pipelined", DEFAULT_WINDOW)
            print(_line(f"outbox drain, pipelined (window {DEFAULT_WINDOW})", piped, stored,
                        floor))
            single, stored = await _drain(server.url, root, "bench-single", 1)
            print(_line("outbox drain, one at a time (window 1)", single, stored, floor))
