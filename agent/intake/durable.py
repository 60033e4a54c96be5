"""Crash-safe files: write a temp file, fsync it, rename it over the target, fsync the directory.

A power cut at any point leaves either the old content or the new, never a torn file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

TMP_SUFFIX = ".tmp"


def fsync_dir(directory: Path) -> None:
    """Make a rename durable: without this a power cut can undo it."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, durably; raises OSError if the disk refuses."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}-", suffix=TMP_SUFFIX, dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def remove_temps(directory: Path) -> None:
    """Temp files a crash left behind; they were never the real content."""
    for path in directory.glob(f".*{TMP_SUFFIX}"):
        path.unlink(missing_ok=True)
