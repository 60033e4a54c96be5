"""SpecPublisher and StatusCollector against a real nats-server; signing keys on disk."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from agent.spec import (
    ClusterSpec,
    StatusReport,
    canonical_bytes,
    load_public_keys,
    parse_envelope,
    public_key_text,
    verify,
)
from mgmt_gateway.publish import (
    SPECS_BUCKET,
    STATUS_BUCKET,
    PublishConflict,
    PublishUnavailable,
    SpecPublisher,
    StatusCollector,
    generate_signing_key,
    load_signing_key,
)
from testbed.natsd import NatsServer


def spec(revision: int, name: str = "edge-1", replicas: int = 2) -> ClusterSpec:
    return ClusterSpec.model_validate({
        "clusterName": name, "namespace": "fleet", "revision": revision,
        "kubernetesVersion": "v1.35.2", "infrastructure": {"provider": "dev"},
        "controlPlane": {"replicas": 1, "machine": {"provider": "dev"}},
        "workers": [{"name": "a", "replicas": replicas, "machine": {"provider": "dev"}}]})


def status(name: str, applied: int) -> bytes:
    return StatusReport(cluster=name, observed_revision=applied, applied_revision=applied,
                        phase="Converged", connected=True, agent_version="0.1.0",
                        reported_at=datetime.now(UTC)).model_dump_json(by_alias=True).encode()


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def _quiet(_: Exception) -> None:
    pass


async def connect(server: NatsServer) -> Client:
    return await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1,
                              connect_timeout=2, error_cb=_quiet)


@pytest_asyncio.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await connect(nats_server)
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 5)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


async def status_bucket(nc: Client) -> KeyValue:
    """As the agents create it."""
    return await nc.jetstream(timeout=2).create_key_value(KeyValueConfig(
        bucket=STATUS_BUCKET, history=1, storage=StorageType.FILE))


# -- publishing ------------------------------------------------------------------------------
async def test_publish_creates_the_bucket_and_a_verifiable_envelope(
        nc: Client, key: Ed25519PrivateKey) -> None:
    publisher = SpecPublisher(lambda: nc, key)
    rev = await publisher.publish(spec(1), last_kv_revision=None)
    kv = await nc.jetstream().key_value(SPECS_BUCKET)
    assert (await kv.status()).history == 10
    entry = await kv.get("edge-1")
    assert entry.revision == rev
    env = parse_envelope(entry.value or b"")
    payload = verify(env, load_public_keys([public_key_text(key.public_key())]))
    assert payload == canonical_bytes(spec(1))
    assert ClusterSpec.model_validate_json(payload) == spec(1)


async def test_updates_are_compare_and_set(nc: Client, key: Ed25519PrivateKey) -> None:
    publisher = SpecPublisher(lambda: nc, key)
    rev1 = await publisher.publish(spec(1), last_kv_revision=None)
    rev2 = await publisher.publish(spec(2, replicas=3), last_kv_revision=rev1)
    assert rev2 > rev1
    with pytest.raises(PublishConflict) as err:  # a replica that missed revision 2
        await publisher.publish(spec(3, replicas=4), last_kv_revision=rev1)
    assert err.value.current_kv_revision == rev2
    assert err.value.current_spec_revision == 2
    kv = await nc.jetstream().key_value(SPECS_BUCKET)
    current = ClusterSpec.model_validate_json(
        base64.b64decode(parse_envelope((await kv.get("edge-1")).value or b"").payload))
    assert current.revision == 2


async def test_create_over_someone_elses_value_conflicts(nc: Client,
                                                         key: Ed25519PrivateKey) -> None:
    other = SpecPublisher(lambda: nc, Ed25519PrivateKey.generate())
    await other.publish(spec(1), last_kv_revision=None)
    with pytest.raises(PublishConflict) as err:
        await SpecPublisher(lambda: nc, key).publish(spec(1), last_kv_revision=None)
    assert err.value.current_spec_revision == 1
    assert "another writer" in str(err.value)


async def test_republishing_the_same_spec_is_idempotent(nc: Client,
                                                        key: Ed25519PrivateKey) -> None:
    """A gateway killed after publishing but before saving its record resumes cleanly."""
    publisher = SpecPublisher(lambda: nc, key)
    rev1 = await publisher.publish(spec(1), last_kv_revision=None)
    assert await publisher.publish(spec(1), last_kv_revision=None) == rev1
    rev2 = await publisher.publish(spec(2), last_kv_revision=rev1)
    assert await publisher.publish(spec(2), last_kv_revision=rev1) == rev2


async def test_a_vanished_key_is_published_afresh(nc: Client, key: Ed25519PrivateKey) -> None:
    """Deleted by hand, or NATS lost its store: nothing newer is there to protect."""
    publisher = SpecPublisher(lambda: nc, key)
    rev1 = await publisher.publish(spec(1), last_kv_revision=None)
    kv = await nc.jetstream().key_value(SPECS_BUCKET)
    await kv.delete("edge-1")
    rev2 = await publisher.publish(spec(2), last_kv_revision=rev1)
    await kv.purge("edge-1")
    rev3 = await publisher.publish(spec(3), last_kv_revision=rev2)
    entry = await kv.get("edge-1")
    assert entry.revision == rev3
    payload = base64.b64decode(parse_envelope(entry.value or b"").payload)
    assert ClusterSpec.model_validate_json(payload).revision == 3


async def test_unavailable_nats_fails_fast_and_typed(nats_server: NatsServer, nc: Client,
                                                     key: Ed25519PrivateKey) -> None:
    with pytest.raises(PublishUnavailable, match="not connected"):
        await SpecPublisher(lambda: None, key).publish(spec(1), last_kv_revision=None)
    publisher = SpecPublisher(lambda: nc, key, timeout=1.0)
    rev = await publisher.publish(spec(1), last_kv_revision=None)
    await nats_server.stop()
    started = time.monotonic()
    with pytest.raises(PublishUnavailable):
        await publisher.publish(spec(2), last_kv_revision=rev)
    assert time.monotonic() - started < 3
    await nats_server.start()
    await until(lambda: nc.is_connected)
    assert await publisher.publish(spec(2), last_kv_revision=rev) > rev


# -- status --------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def running(collector: StatusCollector) -> AsyncIterator[StatusCollector]:
    task = asyncio.create_task(collector.run())
    try:
        yield collector
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def applied(collector: StatusCollector, name: str) -> int | None:
    report = collector.latest.get(name)
    return report.applied_revision if report else None


async def test_collector_keeps_the_latest_reports_and_skips_junk(nc: Client) -> None:
    kv = await status_bucket(nc)
    await kv.put("edge-1", status("edge-1", 1))
    await kv.put("edge-9", b"not json at all")
    async with running(StatusCollector(lambda: nc, poll=0.1)) as collector:
        await until(lambda: applied(collector, "edge-1") == 1)
        await kv.put("edge-2", status("edge-2", 4))
        await kv.put("edge-3", status("edge-1", 1))  # a report under someone else's key
        await kv.put("edge-1", status("edge-1", 2))
        await until(lambda: applied(collector, "edge-1") == 2 and "edge-2" in collector.latest)
        await until(lambda: collector.junk == 2)
        assert set(collector.latest) == {"edge-1", "edge-2"}
        seen = collector.last_seen["edge-1"]
        assert abs((datetime.now(UTC) - seen).total_seconds()) < 10
        snap = collector.snapshot()
        assert snap["edge-2"].report.applied_revision == 4 and snap["edge-2"].kv_revision > 0
        await kv.delete("edge-2")
        await until(lambda: "edge-2" not in collector.latest)


async def test_collector_waits_for_the_bucket(nc: Client) -> None:
    async with running(StatusCollector(lambda: nc, poll=0.05, backoff_max=0.2)) as collector:
        await asyncio.sleep(0.3)
        assert not collector.watching
        kv = await status_bucket(nc)
        await kv.put("edge-1", status("edge-1", 3))
        await until(lambda: applied(collector, "edge-1") == 3)


async def test_collector_survives_a_server_restart(nats_server: NatsServer, nc: Client) -> None:
    kv = await status_bucket(nc)
    await kv.put("edge-1", status("edge-1", 1))
    async with running(StatusCollector(lambda: nc, poll=0.1)) as collector:
        await until(lambda: applied(collector, "edge-1") == 1)
        watches = collector.watches
        await nats_server.restart()
        await until(lambda: nc.is_connected)
        await until(lambda: collector.watches > watches)
        # Written by an agent on its own connection, while the gateway's is busy recovering.
        agent = await connect(nats_server)
        try:
            akv = await agent.jetstream(timeout=2).key_value(STATUS_BUCKET)
            await akv.put("edge-1", status("edge-1", 2))
            await akv.put("edge-2", status("edge-2", 1))
        finally:
            await agent.close()
        await until(lambda: applied(collector, "edge-1") == 2
                    and applied(collector, "edge-2") == 1)


async def test_collector_survives_an_outage_with_a_provider_that_goes_away(
        nats_server: NatsServer, nc: Client) -> None:
    """The daemon's provider answers None while disconnected, then the same client again."""
    kv = await status_bucket(nc)
    await kv.put("edge-1", status("edge-1", 1))
    provider = lambda: nc if nc.is_connected else None  # noqa: E731
    async with running(StatusCollector(provider, poll=0.1)) as collector:
        await until(lambda: applied(collector, "edge-1") == 1)
        await nats_server.stop()
        await until(lambda: not collector.watching)
        await nats_server.start()
        await until(lambda: collector.watching)
        await kv.put("edge-1", status("edge-1", 5))
        await until(lambda: applied(collector, "edge-1") == 5)


async def test_collector_forgets_clusters_gone_after_a_store_reset(nc: Client) -> None:
    """NATS redeployed without its store: revisions restart low, old keys are gone."""
    kv = await status_bucket(nc)
    for _ in range(3):
        await kv.put("edge-1", status("edge-1", 1))
    await kv.put("edge-2", status("edge-2", 1))
    link = [True]
    async with running(StatusCollector(lambda: nc if link[0] else None, poll=0.05)
                       ) as collector:
        await until(lambda: {"edge-1", "edge-2"} <= set(collector.latest))
        link[0] = False
        await until(lambda: not collector.watching)
        await nc.jetstream().delete_key_value(STATUS_BUCKET)
        kv = await status_bucket(nc)
        await kv.put("edge-1", status("edge-1", 7))
        link[0] = True
        await until(lambda: applied(collector, "edge-1") == 7)
        await until(lambda: "edge-2" not in collector.latest)


def test_ingest_without_nats() -> None:
    collector = StatusCollector(lambda: None)
    assert collector.ingest("edge-1", status("edge-1", 2), kv_revision=9)
    assert not collector.ingest("edge-1", b"{}", kv_revision=10)
    assert collector.junk == 1 and applied(collector, "edge-1") == 2
    assert collector.ingest("edge-1", None, kv_revision=11, deleted=True)
    assert collector.latest == {} and collector.snapshot() == {}


# -- signing keys ----------------------------------------------------------------------------
def _raw_public(k: Ed25519PrivateKey) -> bytes:
    return k.public_key().public_bytes(serialization.Encoding.Raw,
                                       serialization.PublicFormat.Raw)


def test_generated_key_is_private_pem_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "signing-key.pem"
    made = generate_signing_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert _raw_public(load_signing_key(path)) == _raw_public(made)
    assert [p.name for p in path.parent.iterdir()] == ["signing-key.pem"]  # no temp files
    # Never overwritten: a second replica gets the first one's key.
    assert _raw_public(generate_signing_key(path)) == _raw_public(made)


def test_raw_base64_key_loads(tmp_path: Path) -> None:
    k = Ed25519PrivateKey.generate()
    raw = k.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                          serialization.NoEncryption())
    path = tmp_path / "key.b64"
    path.write_text(base64.b64encode(raw).decode() + "\n")
    path.chmod(0o600)
    assert _raw_public(load_signing_key(path)) == _raw_public(k)


@pytest.mark.parametrize("content", [
    b"definitely not a key",
    base64.b64encode(b"short"),
    generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()),
])
def test_unusable_keys_are_refused_clearly(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "key"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="signing key"):
        load_signing_key(path)
