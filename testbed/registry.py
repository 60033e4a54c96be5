"""An OCI registry for tests: go-containerregistry's in-memory registry (the pinned build), on
localhost over plain HTTP. Charts are pushed to it with the real helm and pulled by oci://."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from .controlplane.helm import built_registry

_SERVING = re.compile(r"serving on port (\d+)")


class OciRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def host(self) -> str:
        """`host:port`, as oci:// references name a registry."""
        return f"localhost:{self.port}"

    async def start(self, timeout: float = 30.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.root / "registry.log"
        with log.open("wb") as out:  # a file, not a pipe: it logs every request
            self._proc = await asyncio.create_subprocess_exec(
                str(built_registry()), "-port", "0", stdout=out, stderr=out)
        deadline = time.monotonic() + timeout
        while not (found := _SERVING.search(log.read_text(errors="replace"))):
            if self._proc.returncode is not None or time.monotonic() > deadline:
                await self.stop()
                raise RuntimeError(f"the OCI registry did not start: {log.read_text()[-500:]}")
            await asyncio.sleep(0.05)
        self.port = int(found[1])

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            await self._proc.wait()

    async def __aenter__(self) -> OciRegistry:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
