"""LeaderElector's timing settings and lease record parsing, without an API server."""

from __future__ import annotations

from typing import Any, cast

import pytest

from agent.kube import KubeClient
from agent.runtime import LeaderElector
from agent.runtime.leader import LeaseRecord

NO_API = cast(KubeClient, object())


def make(**kw: Any) -> LeaderElector:
    return LeaderElector(NO_API, name="l", namespace="ns", identity="me", **kw)


def test_defaults_are_client_gos() -> None:
    e = make()
    assert (e.lease_duration, e.renew_deadline, e.retry_period) == (15.0, 10.0, 2.0)
    assert not e.is_leader


def test_unset_deadlines_scale_with_a_short_lease() -> None:
    e = make(lease_duration=2)  # what a test agent configures
    assert e.lease_duration > e.renew_deadline > e.retry_period > 0


@pytest.mark.parametrize(("kw", "names"), [
    ({"lease_duration": 10, "renew_deadline": 10}, ("lease_duration", "renew_deadline")),
    ({"lease_duration": 10, "renew_deadline": 12}, ("lease_duration", "renew_deadline")),
    ({"renew_deadline": 5, "retry_period": 5}, ("renew_deadline", "retry_period")),
    ({"retry_period": 0}, ("retry_period",)),
    ({"retry_period": -1}, ("retry_period",)),
])
def test_inconsistent_timings_are_refused_naming_the_setting(kw: dict[str, float],
                                                             names: tuple[str, ...]) -> None:
    with pytest.raises(ValueError) as err:
        make(**kw)
    for name in names:
        assert name in str(err.value)


def test_a_healthy_follower_holds_nothing() -> None:
    assert make().healthy() == (True, "not holding the lease")


def test_lease_record_tolerates_missing_and_malformed_fields() -> None:
    assert LeaseRecord.of({"metadata": {}}) == LeaseRecord("", 0, "", "", 0)
    rec = LeaseRecord.of({"spec": {"holderIdentity": "x", "leaseDurationSeconds": "abc",
                                   "renewTime": "yesterday", "leaseTransitions": None}})
    assert rec == LeaseRecord("x", 0, "", "yesterday", 0)
    # Timestamps are opaque: a different spelling of the same instant is a change.
    a = LeaseRecord.of({"spec": {"renewTime": "2030-01-01T00:00:00Z"}})
    b = LeaseRecord.of({"spec": {"renewTime": "2030-01-01T00:00:00.000000Z"}})
    assert a != b
