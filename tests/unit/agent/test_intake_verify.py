"""check_candidate: every rejection reason, its precedence, key rotation, and a fuzz test."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.intake.verify import REASONS, Rejected, check_candidate
from agent.spec import ClusterSpec, key_id, sign
from agent.spec.envelope import DOMAIN

CLUSTER = "edge-1"
GATEWAY = Ed25519PrivateKey.generate()
ROTATED = Ed25519PrivateKey.generate()
STRANGER = Ed25519PrivateKey.generate()
KEYS = {key_id(k.public_key()): k.public_key() for k in (GATEWAY, ROTATED)}


def spec_data(cluster: object = CLUSTER, revision: object = 5, **over: Any) -> dict[str, Any]:
    """A valid spec as camelCase wire data; `over` replaces top-level fields."""
    data: dict[str, Any] = {
        "clusterName": cluster,
        "revision": revision,
        "kubernetesVersion": "v1.35.2",
        "infrastructure": {"provider": "dev"},
        "controlPlane": {"replicas": 1, "machine": {"provider": "dev"}},
        "workers": [{"name": "pool-a", "replicas": 2, "machine": {"provider": "dev"}}],
    }
    data.update(over)
    return data


def make_spec(cluster: str = CLUSTER, revision: int = 5, **over: Any) -> ClusterSpec:
    return ClusterSpec.model_validate(spec_data(cluster, revision, **over))


def envelope(payload: bytes, key: Ed25519PrivateKey = GATEWAY, *, kid: str | None = None,
             signed: bytes | None = None) -> bytes:
    """An envelope around arbitrary payload bytes (what sign() cannot produce)."""
    signature = key.sign(DOMAIN + (payload if signed is None else signed))
    return json.dumps({
        "algorithm": "ed25519",
        "keyId": kid or key_id(key.public_key()),
        "payload": base64.b64encode(payload).decode(),
        "signature": base64.b64encode(signature).decode(),
    }).encode()


def signed_json(data: object, key: Ed25519PrivateKey = GATEWAY) -> bytes:
    return envelope(json.dumps(data).encode(), key)


def check(raw: bytes, cached_revision: int = 4, current: ClusterSpec | None = None,
          max_bytes: int = 256 * 1024) -> ClusterSpec:
    return check_candidate(raw, keys=KEYS, cluster=CLUSTER, cached_revision=cached_revision,
                           max_bytes=max_bytes, current=current)


# -- acceptance -------------------------------------------------------------------------------
def test_accepts_a_newer_signed_spec() -> None:
    spec = make_spec(revision=5)
    assert check(sign(spec, GATEWAY), cached_revision=4) == spec


@pytest.mark.parametrize("key", [GATEWAY, ROTATED], ids=["old-key", "new-key"])
def test_key_rotation_either_trusted_key_works(key: Ed25519PrivateKey) -> None:
    spec = make_spec(revision=7)
    assert check(sign(spec, key)) == spec


def test_first_spec_with_no_cache() -> None:
    assert check(sign(make_spec(revision=1), GATEWAY), cached_revision=0).revision == 1


def test_same_revision_same_content_is_a_redelivery_not_a_replay() -> None:
    spec = make_spec(revision=4)
    # Re-signed with the rotated key: other bytes, same spec.
    assert check(sign(spec, ROTATED), cached_revision=4, current=spec) == spec


# -- rejection table --------------------------------------------------------------------------
def _tampered() -> bytes:
    env = json.loads(sign(make_spec(), GATEWAY))
    env["payload"] = base64.b64encode(json.dumps(spec_data(replicas=3)).encode()).decode()
    return json.dumps(env).encode()


def _dup_keys() -> bytes:
    body = json.dumps(spec_data())[:-1] + ', "clusterName": "edge-2"}'
    return envelope(body.encode())


CASES: list[tuple[str, bytes, str, tuple[str, ...]]] = [
    ("too big", b"x" * (256 * 1024 + 1), "oversize", ("262145 bytes", "262144")),
    ("too big even if valid", sign(make_spec(), GATEWAY) + b" " * 300_000, "oversize", ()),
    ("not json", b"hello", "malformed", ("not a signed spec envelope",)),
    ("empty", b"", "malformed", ()),
    ("json but no envelope", b'{"spec": 1}', "malformed", ()),
    ("envelope is a list", b"[]", "malformed", ()),
    ("payload not base64", json.dumps({"keyId": key_id(GATEWAY.public_key()), "payload": "%%",
                                       "signature": "AAAA"}).encode(), "malformed", ("base64",)),
    ("signed payload not json", envelope(b"\x00garbage"), "malformed", ("not valid JSON",)),
    ("signed payload not utf-8", envelope(b'{"a": "\xff"}'), "malformed", ()),
    ("signed payload a list", signed_json([1, 2]), "malformed", ("JSON object", "list")),
    ("signed payload with NaN", envelope(b'{"revision": NaN}'), "malformed", ("NaN",)),
    ("duplicate keys", _dup_keys(), "malformed", ("duplicate key 'clusterName'",)),
    ("untrusted key", sign(make_spec(), STRANGER), "unknown_key",
     ("does not trust", key_id(STRANGER.public_key()))),
    ("payload altered", _tampered(), "bad_signature", ("does not match",)),
    ("trusted key id, other key", envelope(json.dumps(spec_data()).encode(), STRANGER,
                                           kid=key_id(GATEWAY.public_key())), "bad_signature", ()),
    ("signature of other bytes", envelope(json.dumps(spec_data()).encode(), signed=b"{}"),
     "bad_signature", ()),
    ("other cluster", sign(make_spec(cluster="edge-2"), GATEWAY), "wrong_cluster",
     ("'edge-2'", "'edge-1'")),
    ("no cluster name", signed_json({k: v for k, v in spec_data().items()
                                     if k != "clusterName"}), "invalid_spec", ("clusterName",)),
    ("cluster name not a string", signed_json(spec_data(cluster=7)), "invalid_spec", ("7",)),
    ("older revision", sign(make_spec(revision=3), GATEWAY), "stale_revision",
     ("revision 3", "revision 4", "older")),
    ("equal revision, no spec in force", sign(make_spec(revision=4), GATEWAY),
     "stale_revision", ("revision 4", "content differs")),
    ("revision as text", signed_json(spec_data(revision="9")), "invalid_spec",
     ("revision", "'9'")),
    ("revision zero", signed_json(spec_data(revision=0)), "invalid_spec", ("at least 1",)),
    ("revision boolean", signed_json(spec_data(revision=True)), "invalid_spec", ()),
    ("worker ahead of control plane", signed_json(spec_data(workers=[
        {"name": "p", "replicas": 1, "machine": {"provider": "dev"}, "version": "v1.36.0"}])),
     "invalid_spec", ("workers[p].version v1.36.0 is newer",)),
    ("unknown field", signed_json(spec_data(fancyNewThing=True)), "invalid_spec",
     ("fancyNewThing",)),
    ("bad kubernetes version", signed_json(spec_data(kubernetesVersion="1.35")),
     "invalid_spec", ("kubernetesVersion", "v1.35.2")),
]


@pytest.mark.parametrize(("raw", "reason", "says"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_rejection_reasons(raw: bytes, reason: str, says: tuple[str, ...]) -> None:
    with pytest.raises(Rejected) as info:
        check(raw, cached_revision=4)
    assert info.value.reason == reason, info.value.message
    assert reason in REASONS
    for text in says:
        assert text in info.value.message
    assert str(info.value) == info.value.message


def test_every_reason_is_covered_by_the_table() -> None:
    assert {c[2] for c in CASES} == set(REASONS)


def test_replay_at_the_revision_in_force_with_other_content() -> None:
    in_force = make_spec(revision=4)
    replay = sign(make_spec(revision=4, kubernetesVersion="v1.34.0"), GATEWAY)
    with pytest.raises(Rejected) as info:
        check(replay, cached_revision=4, current=in_force)
    assert info.value.reason == "stale_revision"
    assert info.value.revision == 4


# -- precedence -------------------------------------------------------------------------------
def test_size_is_checked_before_anything_else() -> None:
    with pytest.raises(Rejected) as info:
        check(sign(make_spec(), GATEWAY), max_bytes=10)
    assert info.value.reason == "oversize"


def test_signature_is_checked_before_the_payload_is_read() -> None:
    forged = envelope(b"not even json", STRANGER)
    with pytest.raises(Rejected) as info:
        check(forged)
    assert info.value.reason == "unknown_key"
    assert info.value.revision is None


def test_cluster_is_checked_before_revision_and_validity() -> None:
    foreign_old_invalid = signed_json(spec_data(cluster="edge-2", revision=1, workers="x"))
    with pytest.raises(Rejected) as info:
        check(foreign_old_invalid, cached_revision=4)
    assert info.value.reason == "wrong_cluster"
    assert info.value.revision is None  # another cluster's revision means nothing here


def test_revision_is_checked_before_validity() -> None:
    with pytest.raises(Rejected) as info:
        check(signed_json(spec_data(revision=2, workers="x")), cached_revision=4)
    assert info.value.reason == "stale_revision"


def test_invalid_spec_reports_its_revision() -> None:
    with pytest.raises(Rejected) as info:
        check(signed_json(spec_data(revision=9, workers="x")))
    assert (info.value.reason, info.value.revision) == ("invalid_spec", 9)


# -- fuzzing ----------------------------------------------------------------------------------
VALID = make_spec(revision=5)
VALID_RAW = sign(VALID, GATEWAY)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12,
)


def _assert_contract(raw: bytes, signed: ClusterSpec | None) -> None:
    """Either the signed spec comes back, or Rejected with a known reason; nothing else."""
    try:
        got = check(raw, cached_revision=4)
    except Rejected as e:
        assert e.reason in REASONS
        assert e.message
        return
    assert signed is not None and got == signed


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_arbitrary_bytes(raw: bytes) -> None:
    _assert_contract(raw, None)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete"]), st.integers(0, 10**6),
                          st.integers(0, 255)), min_size=1, max_size=4))
def test_fuzz_mutated_valid_envelopes(edits: list[tuple[str, int, int]]) -> None:
    raw = bytearray(VALID_RAW)
    for op, pos, byte in edits:
        i = pos % (len(raw) + 1)
        if op == "insert":
            raw.insert(i, byte)
        elif raw and op == "flip":
            raw[i % len(raw)] ^= byte or 1
        elif raw:
            del raw[i % len(raw)]
    _assert_contract(bytes(raw), VALID)


@FUZZ
@given(json_values)
def test_fuzz_arbitrary_signed_json(data: object) -> None:
    expected = _valid_or_none(data)
    _assert_contract(signed_json(data), expected)


@FUZZ
@given(st.sampled_from(sorted(spec_data())) | st.text(max_size=12), json_values)
def test_fuzz_signed_spec_with_one_field_replaced(field: str, value: object) -> None:
    data = spec_data()
    data[field] = value
    _assert_contract(signed_json(data), _valid_or_none(data))


@FUZZ
@given(json_values)
def test_fuzz_arbitrary_json_envelope(data: object) -> None:
    _assert_contract(json.dumps(data).encode(), None)


def _valid_or_none(data: object) -> ClusterSpec | None:
    try:
        return ClusterSpec.model_validate(data)
    except ValueError:
        return None
