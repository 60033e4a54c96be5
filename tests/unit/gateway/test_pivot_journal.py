"""The pivot's small parts: journals, bounded retries, what a copied object keeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.kube import AlreadyExists, Conflict, Invalid, KubeError, Resource, Transient
from mgmt_gateway.pivot import FileJournal, MemoryJournal, RetryPolicy
from mgmt_gateway.pivot.model import (
    DELETE_FOR_MOVE_ANNOTATION,
    PIVOT_PAUSED_ANNOTATION,
    MovableType,
    Node,
)
from mgmt_gateway.pivot.move import _attempt, _copyable, _covers
from mgmt_gateway.pivot.retry import Retrier


async def test_file_journal_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    j = FileJournal(path)
    assert j.done == set()
    await j.record("1:pause")
    await j.record("1:create:/Secret/ns/a")
    assert FileJournal(path).done == {"1:pause", "1:create:/Secret/ns/a"}
    assert not path.with_name("journal.json.tmp").exists()


async def test_memory_journal() -> None:
    j = MemoryJournal({"1:pause"})
    await j.record("1:namespace")
    assert j.done == {"1:pause", "1:namespace"}


def test_an_abandoned_attempt_starts_the_next_one() -> None:
    assert _attempt(set()) == 1
    assert _attempt({"1:pause", "1:create:x"}) == 1
    assert _attempt({"1:pause", "1:abandoned", "2:pause"}) == 2
    assert _attempt({"1:abandoned", "2:abandoned"}) == 3


FAST = RetryPolicy(deadline=0.5, initial=0.001, maximum=0.01)


async def test_retries_what_can_pass_on_a_second_try() -> None:
    errors: list[KubeError] = [Transient("503", 503), Conflict("409", 409),
                               KubeError("garbled response")]
    call = Retrier(FAST)

    async def flaky() -> str:
        if errors:
            raise errors.pop(0)
        return "ok"
    assert await call("flaky", flaky) == "ok"
    assert call.retries == 3


@pytest.mark.parametrize("error", [Invalid("422", 422), AlreadyExists("409", 409),
                                   KubeError("403", 403)])
async def test_does_not_retry_what_cannot_pass(error: KubeError) -> None:
    call = Retrier(FAST)

    async def broken() -> None:
        raise error
    with pytest.raises(type(error)):
        await call("broken", broken)
    assert call.retries == 0


async def test_gives_up_at_the_deadline() -> None:
    call = Retrier(RetryPolicy(deadline=0.05, initial=0.01, maximum=0.01))

    async def down() -> None:
        raise Transient("connection refused")
    with pytest.raises(Transient):
        await call("down", down)
    assert 1 <= call.retries <= 6


CLUSTER = MovableType(Resource("cluster.x-k8s.io", "v1beta2", "clusters", "Cluster"),
                      status_subresource=True)
SECRET = MovableType(Resource("", "v1", "secrets", "Secret"))


def test_a_copy_drops_what_the_server_sets_and_keeps_the_rest() -> None:
    source: dict[str, Any] = {
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
        "metadata": {"name": "edge", "namespace": "ns", "uid": "u", "resourceVersion": "9",
                     "creationTimestamp": "t", "generation": 3, "managedFields": [{}],
                     "selfLink": "/x", "generateName": "ed", "finalizers": ["f"],
                     "labels": {"a": "b"}, "ownerReferences": [{"uid": "o"}],
                     "annotations": {DELETE_FOR_MOVE_ANNOTATION: "", "keep": "me"}},
        "spec": {"paused": False, "x": 1},
        "status": {"phase": "Provisioned"},
    }
    copy = _copyable(Node("k", CLUSTER, source))
    assert copy == {
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
        "metadata": {"name": "edge", "namespace": "ns", "finalizers": ["f"],
                     "labels": {"a": "b"}, "ownerReferences": [{"uid": "o"}],
                     "annotations": {"keep": "me", PIVOT_PAUSED_ANNOTATION: "true"}},
        "spec": {"paused": True, "x": 1},  # paused in the target until the move is complete
    }
    assert source["spec"]["paused"] is False  # the source object is not touched
    secret = {"kind": "Secret", "metadata": {"name": "s", "uid": "u"}, "data": {"k": "dg=="}}
    assert _copyable(Node("s", SECRET, secret)) == {"kind": "Secret",
                                                    "metadata": {"name": "s"},
                                                    "data": {"k": "dg=="}}


def test_a_live_object_with_server_defaults_still_covers_the_copy() -> None:
    want = {"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"l": [{"a": 1}]}}
    live = {"metadata": {"name": "a", "uid": "u", "labels": {"x": "1", "y": "2"}},
            "spec": {"l": [{"a": 1, "default": True}], "more": 1}}
    assert _covers(live, want)
    assert not _covers(live, {"spec": {"l": [{"a": 1}, {"a": 2}]}})
    assert not _covers(live, {"metadata": {"labels": {"x": "2"}}})
    assert not _covers(None, {"a": 1})
