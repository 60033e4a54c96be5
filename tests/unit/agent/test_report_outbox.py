"""The outbox keeps reports in order across restarts, stays bounded and survives torn writes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.report.events import AgentEvent
from agent.report.outbox import (
    FILE_NAME,
    Outbox,
    OutboxLockedError,
    Record,
    RecordTooLargeError,
)
from agent.spec.status import StatusReport

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def event(n: int, message: str = "") -> AgentEvent:
    return AgentEvent(cluster="edge-1", time=T0, reason="Scaled", message=message or f"e{n}")


def status(rev: int) -> StatusReport:
    return StatusReport(cluster="edge-1", observed_revision=rev, applied_revision=rev,
                        phase="Converged", connected=False, agent_version="0.1.0",
                        reported_at=T0)


def messages(records: list[Record]) -> list[str]:
    out = []
    for r in records:
        body = json.loads(r.payload)
        out.append(body["message"] if r.kind == "event" else f"status{body['observedRevision']}")
    return out


def test_events_keep_their_order_across_reopen(tmp_path: Path) -> None:
    with Outbox(tmp_path) as box:
        stored = [box.append_event(event(i)) for i in range(5)]
        assert [e.seq for e in stored] == [1, 2, 3, 4, 5]
        box.ack(2)
    with Outbox(tmp_path) as box:
        pending = box.pending()
        assert messages(pending) == ["e2", "e3", "e4"]
        assert [r.seq for r in pending] == [3, 4, 5]
        assert all(r.kind == "event" for r in pending)
        assert json.loads(pending[0].payload)["seq"] == 3  # the payload carries the seq
        assert box.depth == 3


def test_status_coalesces_and_follows_the_events_before_it(tmp_path: Path) -> None:
    with Outbox(tmp_path) as box:
        box.append_event(event(0))
        box.set_status(status(1))
        box.append_event(event(1))
        box.set_status(status(2))  # replaces status 1, goes after e1
        assert box.depth == 3
        assert messages(box.pending()) == ["e0", "e1", "status2"]
        assert box.dropped == 0  # a replaced status is not a drop
    with Outbox(tmp_path) as box:
        assert messages(box.pending()) == ["e0", "e1", "status2"]
        box.append_event(event(2))
        assert messages(box.pending()) == ["e0", "e1", "status2", "e2"]
        assert box.ack(box.pending()[2].seq) == 3
        assert messages(box.pending()) == ["e2"]
        assert box.status_seq is None


def test_ack_of_an_old_status_keeps_a_newer_one(tmp_path: Path) -> None:
    with Outbox(tmp_path) as box:
        old = box.set_status(status(1))
        box.set_status(status(2))  # while status 1 was being delivered
        assert box.ack(old.seq) == 0
        assert messages(box.pending()) == ["status2"]


def test_bound_by_entries_drops_oldest_events_and_counts(tmp_path: Path) -> None:
    with Outbox(tmp_path, max_entries=4) as box:
        box.set_status(status(1))
        for i in range(10):
            box.append_event(event(i))
        assert box.depth == 4
        assert box.dropped == 7
        assert messages(box.pending()) == ["status1", "e7", "e8", "e9"]  # status is kept
    with Outbox(tmp_path, max_entries=4) as box:
        assert box.dropped == 7  # persisted
        assert messages(box.pending()) == ["status1", "e7", "e8", "e9"]


def test_bound_by_bytes_drops_oldest_events_and_counts(tmp_path: Path) -> None:
    body = "x" * 900
    with Outbox(tmp_path, max_entries=1000, max_bytes=8192) as box:
        for i in range(20):
            box.append_event(event(i, f"{i:02d}{body}"))
        assert box.pending_bytes <= 8192
        kept = messages(box.pending())
        assert len(kept) + box.dropped == 20
        assert [m[:2] for m in kept] == [f"{i:02d}" for i in range(20 - len(kept), 20)]
        assert (tmp_path / FILE_NAME).stat().st_size <= 2 * 8192 + 4096
        with pytest.raises(RecordTooLargeError):
            box.append_event(event(99, "y" * 2000 + "z"))  # a quarter of the budget at most


def test_smaller_bounds_after_restart_apply_at_open(tmp_path: Path) -> None:
    with Outbox(tmp_path) as box:
        for i in range(6):
            box.append_event(event(i))
    with Outbox(tmp_path, max_entries=2) as box:
        assert messages(box.pending()) == ["e4", "e5"]
        assert box.dropped == 4


def test_torn_last_line_is_skipped_and_counted(tmp_path: Path) -> None:
    with Outbox(tmp_path) as box:
        box.append_event(event(0))
        box.append_event(event(1))
    path = tmp_path / FILE_NAME
    with path.open("ab") as f:  # a crash in the middle of the third append
        f.write(b'{"t":"event","seq":3,"p":"{\\"clus')
    with Outbox(tmp_path) as box:
        assert box.torn == 1
        assert messages(box.pending()) == ["e0", "e1"]
        assert box.append_event(event(2)).seq == 3  # appends after a clean line again
    assert path.read_bytes().endswith(b"\n")  # the torn bytes are gone from the file
    with Outbox(tmp_path) as box:
        assert box.torn == 0
        assert messages(box.pending()) == ["e0", "e1", "e2"]


def test_garbage_line_in_the_middle_is_skipped(tmp_path: Path) -> None:
    with Outbox(tmp_path) as box:
        box.append_event(event(0))
    with (tmp_path / FILE_NAME).open("ab") as f:
        f.write(b"\x00\x00not json\n")
    with Outbox(tmp_path) as box:
        box.append_event(event(1))
    with Outbox(tmp_path) as box:
        assert messages(box.pending()) == ["e0", "e1"]


def test_ack_compaction_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    with Outbox(tmp_path, compact_threshold=0) as box:
        for i in range(50):
            box.append_event(event(i))
        size_full = (tmp_path / FILE_NAME).stat().st_size
        box.ack(40)
        assert (tmp_path / FILE_NAME).stat().st_size < size_full / 2
        assert sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME, "outbox.lock"]
        box.ack(50)
        assert box.depth == 0
    lines = (tmp_path / FILE_NAME).read_bytes().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["t"] == "meta"


def test_leftover_temp_file_from_a_crashed_compaction_is_ignored(tmp_path: Path) -> None:
    with Outbox(tmp_path) as box:
        box.append_event(event(0))
    (tmp_path / f"{FILE_NAME}.tmp").write_bytes(b'{"t":"meta"')
    with Outbox(tmp_path) as box:
        assert messages(box.pending()) == ["e0"]
    assert not (tmp_path / f"{FILE_NAME}.tmp").exists()


def test_seq_survives_reopen_even_when_everything_was_acked(tmp_path: Path) -> None:
    with Outbox(tmp_path, compact_threshold=0) as box:
        for i in range(3):
            box.append_event(event(i))
        box.set_status(status(1))
        box.ack(4)
        assert box.depth == 0
    with Outbox(tmp_path) as box:
        assert box.append_event(event(9)).seq == 5
        assert box.next_seq() == 6


def test_reserved_seq_is_kept_and_an_overtaken_one_is_restamped(tmp_path: Path) -> None:
    with Outbox(tmp_path) as box:
        reserved = box.next_seq()
        assert box.append_event(event(0).model_copy(update={"seq": reserved})).seq == reserved
        late = box.next_seq()
        box.append_event(event(1))  # takes a later number first
        assert box.append_event(event(2).model_copy(update={"seq": late})).seq > late
        assert [r.seq for r in box.pending()] == sorted(r.seq for r in box.pending())


def test_last_seq_bounds_every_pending_record_across_reopen(tmp_path: Path) -> None:
    with Outbox(tmp_path) as box:
        assert box.last_seq == 0
        box.append_event(event(0))
        box.set_status(status(1))
        box.append_event(event(1))
        assert box.last_seq == 3
        box.set_status(status(2))  # a status replaced later still counts as written
        assert box.last_seq == max(r.seq for r in box.pending()) == 4
    with Outbox(tmp_path) as box:
        assert box.last_seq == 4
        assert box.append_event(event(2)).seq == box.last_seq == 5


def test_second_instance_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    with Outbox(tmp_path), pytest.raises(OutboxLockedError):
        Outbox(tmp_path)
    Outbox(tmp_path).close()  # released on close


async def test_async_wrappers(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    try:
        stored = await box.append_event_async(event(0))
        await box.set_status_async(status(3))
        assert messages(await box.pending_async()) == ["e0", "status3"]
        assert await box.ack_async(stored.seq) == 1
        assert box.depth == 1
    finally:
        await box.close_async()
