"""Bounded retries and call counting for the pivot's API traffic.

A pivot talks to a freshly bootstrapped cluster whose API server may still restart or shed load,
so every step retries what can succeed on a second try (5xx, 429, timeouts, unreachable server,
409 conflicts) with the product's one backoff (`agent.runtime.backoff`), within a deadline per
step so a dead target surfaces as an error instead of a hang.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from agent.kube import (
    Conflict,
    KubeClient,
    KubeError,
    Obj,
    ObjectList,
    Propagation,
    Resource,
    Transient,
    WatchEvent,
)
from agent.runtime import Backoff

log = logging.getLogger("outpost.gateway.pivot")

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    deadline: float = 60.0  # seconds one step may keep retrying
    initial: float = 0.05
    maximum: float = 2.0


def retriable(e: BaseException) -> bool:
    """Errors a repeat of the same idempotent step can get past. A bare `KubeError` with no
    HTTP status is a garbled response from a server going down, so it counts too."""
    if isinstance(e, Transient | Conflict):
        return True
    return type(e) is KubeError and e.status == 0


class Retrier:
    """Runs idempotent steps, retrying retriable errors until the policy's deadline."""

    def __init__(self, policy: RetryPolicy | None = None) -> None:
        self.policy = policy or RetryPolicy()
        self.retries = 0

    async def __call__(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        p = self.policy
        deadline = time.monotonic() + p.deadline
        backoff = Backoff(p.initial, p.maximum)
        while True:
            try:
                return await fn()
            except KubeError as e:
                delay = backoff.next()
                if not retriable(e) or time.monotonic() + delay > deadline:
                    raise
                self.retries += 1
                log.info("pivot: %s failed, retrying in %.2fs: %s", what, delay, e)
                await asyncio.sleep(delay)


class CountingClient:
    """A `KubeClient` that counts the calls it forwards, for the move report."""

    def __init__(self, inner: KubeClient) -> None:
        self.inner = inner
        self.calls = 0

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj:
        self.calls += 1
        return await self.inner.get(res, name, namespace)

    async def list(self, res: Resource, namespace: str | None = None, *,
                   label_selector: str | None = None) -> ObjectList:
        self.calls += 1
        return await self.inner.list(res, namespace, label_selector=label_selector)

    def watch(self, res: Resource, namespace: str | None = None, *,
              label_selector: str | None = None, resource_version: str | None = None,
              timeout_seconds: int = 300) -> AsyncGenerator[WatchEvent, None]:
        self.calls += 1
        return self.inner.watch(res, namespace, label_selector=label_selector,
                                resource_version=resource_version,
                                timeout_seconds=timeout_seconds)

    async def create(self, res: Resource, obj: Obj) -> Obj:
        self.calls += 1
        return await self.inner.create(res, obj)

    async def resources(self, api_version: str) -> builtins.list[Resource]:
        self.calls += 1
        return await self.inner.resources(api_version)

    async def apply(self, res: Resource, obj: Obj, *, field_manager: str,
                    force: bool = False) -> Obj:
        self.calls += 1
        return await self.inner.apply(res, obj, field_manager=field_manager, force=force)

    async def patch(self, res: Resource, name: str, patch: Mapping[str, Any],
                    namespace: str | None = None, *, field_manager: str) -> Obj:
        self.calls += 1
        return await self.inner.patch(res, name, patch, namespace, field_manager=field_manager)

    async def patch_status(self, res: Resource, name: str, patch: Mapping[str, Any],
                           namespace: str | None = None, *, field_manager: str) -> Obj:
        self.calls += 1
        return await self.inner.patch_status(res, name, patch, namespace,
                                             field_manager=field_manager)

    async def replace(self, res: Resource, obj: Obj, *, field_manager: str) -> Obj:
        self.calls += 1
        return await self.inner.replace(res, obj, field_manager=field_manager)

    async def replace_status(self, res: Resource, obj: Obj, *, field_manager: str) -> Obj:
        self.calls += 1
        return await self.inner.replace_status(res, obj, field_manager=field_manager)

    async def delete(self, res: Resource, name: str, namespace: str | None = None, *,
                     propagation: Propagation = "Background", uid: str | None = None) -> None:
        self.calls += 1
        await self.inner.delete(res, name, namespace, propagation=propagation, uid=uid)


if TYPE_CHECKING:
    def _conforms(c: CountingClient) -> KubeClient:
        return c
