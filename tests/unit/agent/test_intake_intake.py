"""Intake without NATS: candidates fed straight to on_candidate, the cache on a tmp dir."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agent.intake import Intake, SpecCache, WatcherSettings
from agent.spec import ClusterSpec, sign
from tests.unit.agent.test_intake_verify import (
    CLUSTER,
    GATEWAY,
    KEYS,
    STRANGER,
    make_spec,
    signed_json,
    spec_data,
)

NOWHERE = WatcherSettings(servers=["nats://127.0.0.1:1"], cluster=CLUSTER, connect_timeout=0.2,
                          reconnect_time_wait=0.05, backoff_initial=0.05, backoff_max=0.1)


class Recorder:
    def __init__(self, tmp_path: Path, save_retry: float = 30.0) -> None:
        self.desired: list[ClusterSpec] = []
        self.rejected: list[tuple[str, str, int]] = []
        self.intake = Intake(NOWHERE, cache_dir=tmp_path, keys=KEYS,
                             on_desired=self.desired.append,
                             on_reject=lambda *r: self.rejected.append(r),
                             save_retry=save_retry)


def raw_spec(revision: int) -> bytes:
    return sign(make_spec(revision=revision), GATEWAY)


async def test_accepts_saves_then_publishes(tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    await rec.intake.on_candidate(raw_spec(3), 10)
    assert rec.intake.desired == make_spec(revision=3) and rec.desired == [make_spec(revision=3)]
    assert (SpecCache(tmp_path, keys=KEYS, cluster=CLUSTER).load() or pytest.fail()).raw \
        == raw_spec(3)
    assert rec.intake.observed_revision == 3


async def test_a_repeat_is_a_no_op(tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    for kv_revision in (10, 10, 11):
        await rec.intake.on_candidate(raw_spec(3), kv_revision)
    assert len(rec.desired) == 1 and rec.rejected == []


async def test_rejections_are_reported_and_change_nothing(tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    await rec.intake.on_candidate(raw_spec(3), 10)
    await rec.intake.on_candidate(sign(make_spec(revision=4), STRANGER), 11)
    await rec.intake.on_candidate(signed_json(spec_data(revision=7, workers="x")), 12)
    assert [(r[0], r[2]) for r in rec.rejected] == [("unknown_key", 11), ("invalid_spec", 12)]
    assert rec.intake.desired == make_spec(revision=3) and len(rec.desired) == 1
    assert rec.intake.observed_revision == 7
    assert dict(rec.intake.rejections) == {"unknown_key": 1, "invalid_spec": 1}
    last = rec.intake.last_rejection
    assert last is not None and last.reason == "invalid_spec"


async def test_not_enforced_until_saved_then_retried(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder(tmp_path, save_retry=0.05)
    await rec.intake.on_candidate(raw_spec(3), 10)

    def disk_full(raw: bytes, spec: ClusterSpec) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rec.intake.cache, "save", disk_full)
    await rec.intake.on_candidate(raw_spec(4), 11)
    assert rec.intake.desired == make_spec(revision=3)  # a restart would forget revision 4
    assert rec.rejected == []
    monkeypatch.undo()
    deadline = time.monotonic() + 2
    while rec.intake.desired != make_spec(revision=4):
        assert time.monotonic() < deadline, "the save was not retried"
        await asyncio.sleep(0.01)
    assert [s.revision for s in rec.desired] == [3, 4]


async def test_a_newer_candidate_supersedes_a_pending_retry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder(tmp_path, save_retry=0.1)

    def read_only(raw: bytes, spec: ClusterSpec) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(rec.intake.cache, "save", read_only)
    await rec.intake.on_candidate(raw_spec(3), 10)
    monkeypatch.undo()
    await rec.intake.on_candidate(raw_spec(4), 11)
    await asyncio.sleep(0.2)
    assert [s.revision for s in rec.desired] == [4]
    assert rec.rejected == []  # the retry of revision 3 never ran into stale_revision


async def test_callback_errors_do_not_break_the_intake(tmp_path: Path) -> None:
    def boom(*_: object) -> None:
        raise RuntimeError("reconciler bug")

    intake = Intake(NOWHERE, cache_dir=tmp_path, keys=KEYS, on_desired=boom, on_reject=boom)
    await intake.on_candidate(raw_spec(3), 1)
    await intake.on_candidate(b"junk", 2)
    assert intake.desired == make_spec(revision=3)


async def test_start_publishes_the_cache_and_stop_is_prompt_without_nats(
        tmp_path: Path) -> None:
    cached = make_spec(revision=5)
    SpecCache(tmp_path, keys=KEYS, cluster=CLUSTER).save(sign(cached, GATEWAY), cached)
    rec = Recorder(tmp_path)
    await rec.intake.start()
    assert rec.desired == [cached] and rec.intake.observed_revision == 5
    await asyncio.sleep(0.3)  # a few failed connection attempts
    assert not rec.intake.watcher.connected
    started = time.monotonic()
    await rec.intake.stop()
    assert time.monotonic() - started < 1.0
