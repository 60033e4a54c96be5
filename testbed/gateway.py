"""`outpost-gateway` as a child process of a test or benchmark: its HTTP port read from its log
(it listens on a free port), its memory from /proc, stopped with SIGTERM as Kubernetes does."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path
from types import TracebackType
from typing import Self

from .procs import tied_to_parent

_PORT = re.compile(r"listening on port (\d+)")


class GatewayProcess:
    """`outpost-gateway` as a child process; its port is read from its log."""

    def __init__(self, env: dict[str, str]) -> None:
        level = env.get("OUTPOST_GATEWAY_LOG_LEVEL", "INFO")
        # The port is read from an INFO line: the log is at least that verbose.
        self.env = {**env, "OUTPOST_GATEWAY_HTTP_PORT": "0", "OUTPOST_GATEWAY_LOG_LEVEL":
                    level if level in ("DEBUG", "INFO") else "INFO"}
        self.proc: asyncio.subprocess.Process | None = None
        self.port: int | None = None
        self._log: asyncio.Task[None] | None = None
        self._port_seen = asyncio.Event()
        self.tail: list[str] = []

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *tied_to_parent([sys.executable, "-m", "mgmt_gateway.daemon"]),
            env={**os.environ, **self.env}, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        self._port_seen.clear()
        self._log = asyncio.create_task(self._read())
        try:
            await asyncio.wait_for(self._port_seen.wait(), 60)
        except TimeoutError:
            raise RuntimeError("the gateway did not start:\n" + "\n".join(self.tail)) from None

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.tail = [*self.tail[-30:], line]
            m = _PORT.search(line)
            if m:
                self.port = int(m.group(1))
                self._port_seen.set()

    def memory_mib(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) in MiB."""
        assert self.proc is not None
        fields = dict(line.split(":", 1) for line in
                      Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
                      if ":" in line)
        return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._log is not None:
            self._log.cancel()
            await asyncio.gather(self._log, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
