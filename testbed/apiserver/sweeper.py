"""The loop every emulated controller runs: woken by writes, one pass after a short delay."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .registry import Registry

log = logging.getLogger(__name__)


class Sweeper:
    """A controller of the emulated cluster: `wake()` on a relevant write, and `sweep()` runs
    shortly after, on the event loop, as kube-controller-manager's controllers act
    asynchronously after writes. A failed pass is logged and the loop goes on."""

    name = "controller"

    def __init__(self, registry: Registry, delay: float = 0.02) -> None:
        self.registry = registry
        self._delay = delay
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name=f"testbed-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self._delay)
            try:
                self.sweep()
            except Exception:  # a controller keeps running, as kube-controller-manager does
                log.exception("%s pass failed", self.name)

    def sweep(self) -> None:
        raise NotImplementedError
