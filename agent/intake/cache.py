"""The last good spec on local disk, so the agent enforces it after a restart with NATS down.

Writes are crash-safe (temp file, fsync, rename, fsync of the directory) and the previous good
copy is kept, because a power cut or a failing disk must never leave the agent with no spec: a
damaged current copy is detected on load (checksum, then the full signature and validity check
the spec passed when it arrived) and the previous one is used instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.spec import ClusterSpec

from .durable import fsync_dir as _fsync_dir
from .verify import DEFAULT_MAX_BYTES, Rejected, check_candidate

__all__ = ["APPLIED", "CURRENT", "FORMAT", "PREVIOUS", "CachedSpec", "SpecCache"]

log = logging.getLogger(__name__)

FORMAT = 1
CURRENT = "spec.json"
PREVIOUS = "spec.prev.json"
APPLIED = "applied.json"
_TMP_PREFIX = ".spec-"
_TMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class CachedSpec:
    spec: ClusterSpec
    raw: bytes
    source: Literal["current", "previous"]


class _Unusable(Exception):
    """A cache file that exists but cannot be trusted; the message says why."""


class SpecCache:
    """`spec.json` (last good) and `spec.prev.json` (the one before) in `directory`.

    `keys` and `cluster` re-verify what is read back: a file on disk is no more trusted than a
    message from NATS. `last_problem` describes what the most recent load() found wrong (None if
    nothing); `corrupt_detected` counts unusable files found over the cache's lifetime.
    """

    def __init__(self, directory: Path, *, keys: Mapping[str, Ed25519PublicKey], cluster: str,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = Path(directory)
        self._keys = keys
        self._cluster = cluster
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self.last_problem: str | None = None
        self.corrupt_detected = 0

    # -- writing -------------------------------------------------------------------------------
    def save(self, raw_envelope: bytes, spec: ClusterSpec) -> None:
        """Persist an accepted envelope as the current copy; the old current becomes previous.

        Raises OSError if the disk refuses; the caller must then not treat the spec as saved.
        """
        document = json.dumps({
            "format": FORMAT,
            "cluster": spec.cluster_name,
            "revision": spec.revision,
            "sha256": hashlib.sha256(raw_envelope).hexdigest(),
            "savedAt": datetime.now(UTC).isoformat(),
            "envelope": raw_envelope.decode("utf-8"),
        }, ensure_ascii=False, indent=1).encode()
        current, previous = self.directory / CURRENT, self.directory / PREVIOUS
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._remove_leftover_temps()
            tmp = self._write_temp(document)
            try:
                # Rotate only a copy that is still good and differs from the new one: rotating a
                # damaged file would overwrite the only good copy left.
                old = self._try_read(current)
                if old is not None and old[1] != raw_envelope:
                    current.replace(previous)  # atomic rename (os.replace)
                    _fsync_dir(self.directory)
                tmp.replace(current)
                _fsync_dir(self.directory)
            finally:
                tmp.unlink(missing_ok=True)

    async def save_async(self, raw_envelope: bytes, spec: ClusterSpec) -> None:
        """save() off the event loop: fsync can take long on a slow or busy disk."""
        await asyncio.to_thread(self.save, raw_envelope, spec)

    def save_applied(self, revision: int) -> None:
        """Persist the revision the cluster last converged to, so a restarted agent reports it
        before its first pass instead of 0 (the fleet view would show it out of sync).
        Same crash-safe write as the spec; raises OSError if the disk refuses."""
        body = {"format": FORMAT, "cluster": self._cluster, "revision": revision,
                "appliedAt": datetime.now(UTC).isoformat()}
        document = json.dumps({**body, "sha256": _digest(body)}).encode()
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self._write_temp(document)
            try:
                tmp.replace(self.directory / APPLIED)
                _fsync_dir(self.directory)
            finally:
                tmp.unlink(missing_ok=True)

    async def save_applied_async(self, revision: int) -> None:
        await asyncio.to_thread(self.save_applied, revision)

    def load_applied(self) -> int:
        """The persisted applied revision, 0 if none or unreadable (logged). Never raises."""
        path = self.directory / APPLIED
        try:
            doc = json.loads(path.read_bytes())
            body = {k: doc[k] for k in ("format", "cluster", "revision", "appliedAt")}
            if doc.get("sha256") != _digest(body):
                raise ValueError("checksum mismatch")
            if body["cluster"] != self._cluster or not isinstance(body["revision"], int):
                raise ValueError(f"written for cluster {body['cluster']!r}")
            return max(0, body["revision"])
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring %s (%s): the applied revision is known again after the next "
                        "converged pass", path, e)
            return 0

    def _write_temp(self, data: bytes) -> Path:
        fd, name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=self.directory)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    def _remove_leftover_temps(self) -> None:
        """Temp files a crash left behind; they were never the current copy."""
        for path in self.directory.glob(f"{_TMP_PREFIX}*{_TMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                path.unlink()

    # -- reading -------------------------------------------------------------------------------
    def load(self) -> CachedSpec | None:
        """The current copy if it is good, else the previous one, else None. Never raises."""
        problems: list[str] = []
        found: CachedSpec | None = None
        sources: tuple[tuple[str, Literal["current", "previous"]], ...] = (
            (CURRENT, "current"), (PREVIOUS, "previous"))
        for name, source in sources:
            try:
                read = self._read(self.directory / name)
            except _Unusable as e:
                self.corrupt_detected += 1
                problems.append(f"{name} {e}")
                log.warning("cached spec %s is unusable, ignoring it: %s", name, e)
                continue
            if read is None:
                if source == "current" and (self.directory / PREVIOUS).exists():
                    problems.append(f"{name} is missing")
                continue
            found = CachedSpec(spec=read[0], raw=read[1], source=source)
            break
        self.last_problem = "; ".join(problems) or None
        if found is not None and problems:
            log.warning("using the %s cached spec (revision %d) because %s", found.source,
                        found.spec.revision, self.last_problem)
        return found

    def _try_read(self, path: Path) -> tuple[ClusterSpec, bytes] | None:
        try:
            return self._read(path)
        except _Unusable:
            return None

    def _read(self, path: Path) -> tuple[ClusterSpec, bytes] | None:
        """The verified spec and envelope in `path`; None if absent; _Unusable if bad."""
        limit = 4 * self._max_bytes + 4096  # JSON escaping at most doubles the envelope text
        try:
            with path.open("rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _Unusable(f"cannot be read: {e}") from e
        if len(data) > limit:
            raise _Unusable(f"is larger than {limit} bytes, which no cached spec can be")
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as e:
            raise _Unusable(f"is not valid JSON (truncated or overwritten?): {e}") from e
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise _Unusable(f"has format {got!r}, expected {FORMAT}")
        envelope, digest = doc.get("envelope"), doc.get("sha256")
        if not isinstance(envelope, str) or not isinstance(digest, str):
            raise _Unusable("lacks the envelope or its sha256 checksum")
        try:
            raw = envelope.encode("utf-8")
        except UnicodeError as e:
            raise _Unusable(f"holds an envelope that is not valid text: {e}") from e
        actual = hashlib.sha256(raw).hexdigest()
        if actual != digest:
            raise _Unusable(f"fails its checksum: it records sha256 {digest[:16]}..., the "
                            f"envelope hashes to {actual[:16]}... (the file was damaged)")
        try:
            spec = check_candidate(raw, keys=self._keys, cluster=self._cluster,
                                   cached_revision=0, max_bytes=self._max_bytes)
        except Rejected as e:
            raise _Unusable(f"no longer passes verification ({e.reason}): {e.message}") from e
        return spec, raw


def _digest(body: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
