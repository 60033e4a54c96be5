"""SpecCache: round trip, the previous copy, and every kind of damage to the current copy."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.intake.cache import CURRENT, PREVIOUS, SpecCache
from agent.spec import ClusterSpec, key_id, sign
from tests.unit.agent.test_intake_verify import (
    CLUSTER,
    GATEWAY,
    KEYS,
    STRANGER,
    make_spec,
    signed_json,
    spec_data,
)


def cache_in(directory: Path) -> SpecCache:
    return SpecCache(directory, keys=KEYS, cluster=CLUSTER)


def put(cache: SpecCache, revision: int) -> tuple[ClusterSpec, bytes]:
    spec = make_spec(revision=revision)
    raw = sign(spec, GATEWAY)
    cache.save(raw, spec)
    return spec, raw


def test_round_trip(tmp_path: Path) -> None:
    cache = cache_in(tmp_path / "cache")  # created on first save
    spec, raw = put(cache, 3)
    loaded = cache_in(tmp_path / "cache").load()
    assert loaded is not None
    assert (loaded.spec, loaded.raw, loaded.source) == (spec, raw, "current")
    doc = json.loads((tmp_path / "cache" / CURRENT).read_text())
    assert doc["format"] == 1 and doc["revision"] == 3 and doc["savedAt"]
    assert doc["sha256"] == hashlib.sha256(raw).hexdigest()
    assert doc["envelope"].encode() == raw


def test_empty_directory_loads_nothing_without_complaint(tmp_path: Path) -> None:
    cache = cache_in(tmp_path)
    assert cache.load() is None
    assert cache.last_problem is None and cache.corrupt_detected == 0


def test_previous_copy_is_kept(tmp_path: Path) -> None:
    cache = cache_in(tmp_path)
    first, _ = put(cache, 1)
    put(cache, 2)
    (tmp_path / CURRENT).unlink()  # as if the machine died between the two renames
    loaded = cache.load()
    assert loaded is not None and (loaded.spec, loaded.source) == (first, "previous")
    assert cache.last_problem == f"{CURRENT} is missing"
    assert cache.corrupt_detected == 0


def test_saving_the_same_envelope_again_keeps_the_older_previous(tmp_path: Path) -> None:
    cache = cache_in(tmp_path)
    first, _ = put(cache, 1)
    second, raw = put(cache, 2)
    cache.save(raw, second)
    (tmp_path / CURRENT).write_text("{}")
    loaded = cache.load()
    assert loaded is not None and loaded.spec == first


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])


def _flip_envelope_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    i = data.index(b'"payload') + 20  # inside the envelope text: JSON stays valid
    data[i] ^= 0x01
    p.write_bytes(bytes(data))


def _flip_structure_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[0] ^= 0xFF
    p.write_bytes(bytes(data))


def _garbage(p: Path) -> None:
    p.write_bytes(b"\x00\x17\xfe garbage \xff" * 50)


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _wrong_checksum(p: Path) -> None:
    doc = json.loads(p.read_text())
    doc["sha256"] = "0" * 64
    p.write_text(json.dumps(doc))


def _rewrite_envelope(p: Path, raw: bytes) -> None:
    """Replace the envelope and fix up the checksum: only the signature check can tell."""
    doc = json.loads(p.read_text())
    doc["envelope"], doc["sha256"] = raw.decode(), hashlib.sha256(raw).hexdigest()
    p.write_text(json.dumps(doc))


def _forged_by_stranger(p: Path) -> None:
    _rewrite_envelope(p, sign(make_spec(revision=99), STRANGER))


def _tampered_payload(p: Path) -> None:
    env = json.loads(json.loads(p.read_text())["envelope"])
    good = json.loads(signed_json(spec_data(revision=99)))
    env["payload"] = good["payload"]  # a trusted key id, but this key never signed that payload
    _rewrite_envelope(p, json.dumps(env).encode())


def _other_cluster(p: Path) -> None:
    _rewrite_envelope(p, sign(make_spec(cluster="edge-2", revision=99), GATEWAY))


def _wrong_format(p: Path) -> None:
    doc = json.loads(p.read_text())
    doc["format"] = 2
    p.write_text(json.dumps(doc))


def _a_directory(p: Path) -> None:
    p.unlink()
    p.mkdir()


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (_truncate, "not valid JSON"),
    "empty": (_empty, "not valid JSON"),
    "envelope byte flipped": (_flip_envelope_byte, "checksum"),
    "structure byte flipped": (_flip_structure_byte, "not valid JSON"),
    "garbage": (_garbage, "not valid JSON"),
    "wrong checksum": (_wrong_checksum, "checksum"),
    "forged by an untrusted key": (_forged_by_stranger, "unknown_key"),
    "payload swapped": (_tampered_payload, "bad_signature"),
    "another cluster's spec": (_other_cluster, "wrong_cluster"),
    "unknown format": (_wrong_format, "format 2"),
    "unreadable": (_a_directory, "cannot be read"),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_damaged_current_falls_back_to_previous(
        tmp_path: Path, damage: tuple[Callable[[Path], None], str],
        caplog: pytest.LogCaptureFixture) -> None:
    corrupt, says = damage
    cache = cache_in(tmp_path)
    first, raw1 = put(cache, 1)
    put(cache, 2)
    corrupt(tmp_path / CURRENT)

    fresh = cache_in(tmp_path)
    loaded = fresh.load()
    assert loaded is not None
    assert (loaded.spec, loaded.raw, loaded.source) == (first, raw1, "previous")
    assert fresh.corrupt_detected == 1
    assert fresh.last_problem is not None and fresh.last_problem.startswith(CURRENT)
    assert says in fresh.last_problem
    assert any("unusable" in r.message for r in caplog.records)


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_both_damaged_loads_nothing(tmp_path: Path,
                                    damage: tuple[Callable[[Path], None], str]) -> None:
    corrupt, _ = damage
    cache = cache_in(tmp_path)
    put(cache, 1)
    put(cache, 2)
    corrupt(tmp_path / CURRENT)
    _garbage(tmp_path / PREVIOUS)
    assert cache.load() is None
    assert cache.corrupt_detected == 2
    assert cache.last_problem is not None
    assert CURRENT in cache.last_problem and PREVIOUS in cache.last_problem


def test_a_damaged_current_is_not_rotated_over_the_good_previous(tmp_path: Path) -> None:
    cache = cache_in(tmp_path)
    first, _ = put(cache, 1)
    put(cache, 2)
    _garbage(tmp_path / CURRENT)
    third, _ = put(cache, 3)
    assert (cache.load() or pytest.fail("nothing loaded")).spec == third
    (tmp_path / CURRENT).unlink()
    assert (cache.load() or pytest.fail("nothing loaded")).spec == first


def test_a_key_no_longer_trusted_makes_the_copy_unusable(tmp_path: Path) -> None:
    put(cache_in(tmp_path), 1)
    other = {key_id(STRANGER.public_key()): STRANGER.public_key()}
    cache = SpecCache(tmp_path, keys=other, cluster=CLUSTER)
    assert cache.load() is None
    assert cache.last_problem is not None and "unknown_key" in cache.last_problem


def test_no_temp_files_left_behind(tmp_path: Path) -> None:
    cache = cache_in(tmp_path)
    (tmp_path / ".spec-crashed.tmp").write_text("left by a crash mid-write")
    for revision in range(1, 6):
        put(cache, revision)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CURRENT, PREVIOUS]


def test_failed_write_leaves_no_temp_and_the_old_copy(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cache = cache_in(tmp_path)
    first, _ = put(cache, 1)

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("agent.intake.cache.os.fsync", disk_full)
    with pytest.raises(OSError):
        put(cache, 2)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [CURRENT]
    assert (cache.load() or pytest.fail("nothing loaded")).spec == first


async def test_save_async(tmp_path: Path) -> None:
    cache = cache_in(tmp_path)
    spec = make_spec(revision=8)
    await cache.save_async(sign(spec, GATEWAY), spec)
    assert (cache.load() or pytest.fail("nothing loaded")).spec == spec
