"""Where a pivot records its progress, so a move interrupted at any point resumes on re-run.

The gateway keeps the journal in its cluster record; these two implementations serve tests and
tools. Step names are opaque to the journal.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Protocol


class Journal(Protocol):
    """`done` holds the steps already completed; `record` must persist a step before
    returning (a step recorded and then lost would be skipped on resume)."""

    done: set[str]

    async def record(self, step: str) -> None: ...


class MemoryJournal:
    """A journal that lives as long as the process: for tests and one-shot tools."""

    def __init__(self, done: set[str] | None = None) -> None:
        self.done: set[str] = set(done or ())

    async def record(self, step: str) -> None:
        self.done.add(step)


class FileJournal:
    """A journal in a JSON file, written atomically (temp file, fsync, rename), so a crash never
    leaves it half written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: set[str] = set()
        if path.exists():
            self.done = set(json.loads(path.read_text()))

    async def record(self, step: str) -> None:
        self.done.add(step)
        await asyncio.to_thread(self._write, sorted(self.done))

    def _write(self, steps: list[str]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w") as f:
            json.dump(steps, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
