"""The agent as a real subprocess: a SIGKILL is then a real crash (no finally blocks, no lease
release, no outbox close), and its file descriptors and threads can be counted from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from agent.spec import public_key_text
from tests.fixtures.site import CLUSTER, Site


class AgentProcess:
    def __init__(self, site: Site, root: Path, identity: str = "chaos") -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.log = root / "agent.log"
        self.env = {
            **os.environ,
            "OUTPOST_AGENT_CLUSTER_NAME": CLUSTER,
            "OUTPOST_AGENT_NATS_SERVERS": site.nats.url,
            "OUTPOST_AGENT_PUBLIC_KEYS": public_key_text(site.key.public_key()),
            "OUTPOST_AGENT_STATE_DIR": str(root / "state"),  # the same across restarts
            "OUTPOST_AGENT_KUBECONFIG": str(site.kubeconfig),
            "OUTPOST_AGENT_IDENTITY": identity,
            "OUTPOST_AGENT_HTTP_HOST": "127.0.0.1",
            "OUTPOST_AGENT_HTTP_PORT": "0",
            "OUTPOST_AGENT_RESYNC_SECONDS": "1",
            "OUTPOST_AGENT_STATUS_INTERVAL_SECONDS": "0.5",
            "OUTPOST_AGENT_LEASE_DURATION_SECONDS": "2",
            "OUTPOST_AGENT_RETRY_MAX_SECONDS": "0.5",
            "OUTPOST_AGENT_SHUTDOWN_GRACE_SECONDS": "5",
            "PYTHONFAULTHANDLER": "1",  # SIGABRT dumps every thread's stack into the log
        }
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        # Output goes to a file, never a pipe: nobody reads a pipe while the test waits, and a
        # full pipe would block the agent.
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agent.daemon", env=self.env,
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out)
        self.starts += 1

    async def kill9(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()

    async def stop(self, grace: float = 20.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit within `grace`; returns the exit code."""
        assert self.proc is not None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                await self.kill9()
        assert self.proc.returncode is not None
        return self.proc.returncode

    async def dump_and_abort(self) -> None:
        """For a failure report: the stacks of a stuck agent, then it is gone."""
        if not self.running:
            return
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGABRT)
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            await self.kill9()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def fds(self) -> int:
        assert self.proc is not None
        return sum(1 for _ in Path(f"/proc/{self.proc.pid}/fd").iterdir())

    def threads(self) -> int | None:
        assert self.proc is not None
        try:
            text = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        return None

    def tail(self, chars: int = 4000) -> str:
        try:
            data = self.log.read_bytes()
        except OSError:
            return ""
        return data[-chars:].decode(errors="replace")
