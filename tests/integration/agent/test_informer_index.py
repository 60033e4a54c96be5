"""An informer's indexes follow its cache through list, watch events and write-through, so a
lookup by an indexed value never scans the whole cache and never returns a stale object."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from agent.kube import ApiKubeClient, Obj
from agent.kube.resources import CONFIG_MAP
from agent.runtime.informer import Informer
from tests.fixtures.kube import eventually

FM = "outpost-test"


def team(obj: Obj) -> tuple[str, ...]:
    label = (obj["metadata"].get("labels") or {}).get("team")
    return (label,) if label else ()


def names(objs: list[Obj]) -> set[str]:
    return {o["metadata"]["name"] for o in objs}


async def test_indexes_follow_list_watch_and_writes(kubeconfig: Path) -> None:
    async with await ApiKubeClient.from_kubeconfig(kubeconfig, request_timeout=5) as kc:
        for name, label in (("a", "red"), ("b", "red"), ("c", "blue")):
            await kc.create(CONFIG_MAP, {"metadata": {
                "name": name, "namespace": "default", "labels": {"team": label}}})
        inf = Informer(kc, CONFIG_MAP, "default", indexers={"team": team})
        task = asyncio.create_task(inf.run())
        try:
            await asyncio.wait_for(inf.synced.wait(), 10)
            assert names(inf.by_index("team", "red")) == {"a", "b"}
            assert names(inf.by_index("team", "blue")) == {"c"}

            await kc.patch(CONFIG_MAP, "a", {"metadata": {"labels": {"team": "blue"}}},
                           "default", field_manager=FM)
            await kc.delete(CONFIG_MAP, "c", "default")

            async def moved() -> bool:
                return (names(inf.by_index("team", "red")) == {"b"}
                        and names(inf.by_index("team", "blue")) == {"a"})

            await eventually(moved, timeout=10)
            assert inf.by_index("team", "green") == []

            # Our own write lands in the cache (and its index) before the watch brings it.
            b = await kc.patch(CONFIG_MAP, "b", {"metadata": {"labels": {"team": "green"}}},
                               "default", field_manager=FM)
            inf.store(b)
            assert names(inf.by_index("team", "green")) == {"b"}
            assert inf.by_index("team", "red") == []
            inf.forget("b")
            assert inf.by_index("team", "green") == []
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
