"""Bundle fetch against a real nats-server: an interrupted fetch (the agent restarted, the link
cut) resumes where its last progress record says instead of starting over; what the Object
Store holds under a digest is checked against it before anything reaches the content store."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import nats
import pytest

from agent.intake.bundles import BundleFetcher, ContentStore
from agent.spec.addons import Bundle, BundleError, BundleRef, digest_of
from agent.spec.wire import BUNDLES_BUCKET
from testbed.natsd import NatsServer
from tests.fixtures.nats import nats_server

__all__ = ["nats_server"]


def big_bundle(mib: int) -> tuple[bytes, BundleRef]:
    rng = random.Random(3)
    objs = tuple({"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": f"cm-{i}", "namespace": "x"},
                  "data": {"blob": "".join(rng.choices("abcdef0123456789", k=256 * 1024))}}
                 for i in range(mib * 4))
    data = Bundle(name="big", version="1", objects=objs).encode()
    return data, BundleRef(digest=digest_of(data), size=len(data), objects=len(objs))


async def test_an_interrupted_fetch_resumes(nats_server: NatsServer, tmp_path: Path) -> None:
    data, ref = big_bundle(6)
    nc = await nats.connect(nats_server.url)
    try:
        store = await nc.jetstream().create_object_store(BUNDLES_BUCKET)
        await store.put(ref.digest, data)
        content = ContentStore(tmp_path / "bundles")
        first = BundleFetcher(lambda: nc, content)
        task = asyncio.create_task(first.fetch(ref))
        while first.fetched_bytes < ref.size // 2:  # chunks arrive between these yields
            assert not task.done(), "the fetch ended before it could be interrupted"
            await asyncio.sleep(0)
        task.cancel()  # the agent stops mid-fetch
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not content.has(ref.digest)

        again = BundleFetcher(lambda: nc, content)  # the agent back
        await again.fetch(ref)
        assert content.has(ref.digest)
        assert content.load(ref) is not None
        # It fetched what the first one had not recorded (at most 8 chunks twice), not all.
        assert 0 < again.fetched_bytes <= ref.size - first.fetched_bytes + 8 * 128 * 1024
        assert again.fetched_bytes < ref.size * 0.75
        assert not list((tmp_path / "bundles").glob(".partial*"))
    finally:
        await nc.close()


async def test_other_bytes_under_a_digest_are_refused(nats_server: NatsServer,
                                                      tmp_path: Path) -> None:
    data, ref = big_bundle(1)
    forged = bytearray(data)
    forged[-10] ^= 1  # same size, one bit off
    nc = await nats.connect(nats_server.url)
    try:
        store = await nc.jetstream().create_object_store(BUNDLES_BUCKET)
        await store.put(ref.digest, bytes(forged))
        content = ContentStore(tmp_path / "bundles")
        with pytest.raises(BundleError, match="not what the spec names"):
            await BundleFetcher(lambda: nc, content).fetch(ref)
        assert not content.has(ref.digest)
    finally:
        await nc.close()
