"""Add-on bundles: a content store on disk, and a resumable fetch from the NATS Object Store.

The store holds each bundle under its sha256 digest, written crash-safely and checked again
whenever it is read, so a site restarted offline re-applies its add-ons from disk, and a damaged
file is noticed, dropped and fetched again rather than applied.

The fetch holds no JetStream consumer (a stream refuses its 1,001st, and a fleet has thousands
of agents): it reads the object's metadata and then each chunk by direct stream reads, the next
message on the object's chunk subject after the last one received. Progress is kept on disk, so
a link that drops mid-bundle resumes where it stopped instead of starting over; the assembled
bytes are checked against the digest the signed spec names before they enter the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import nats.errors
import nats.js.errors
from nats.aio.client import Client

from agent.spec.addons import Bundle, BundleError, BundleRef, decode_bundle, digest_of
from agent.spec.wire import BUNDLES_BUCKET

from .durable import fsync_dir, remove_temps, write_atomic

log = logging.getLogger(__name__)

_PARTIAL = ".partial-"
_PROGRESS_EVERY = 8  # chunks between progress records (128 KiB each by default)


def _file(digest: str) -> str:
    return digest.replace(":", "-") + ".json"


class ContentStore:
    """Bundles on disk, one file per digest."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.corrupt_detected = 0

    def path(self, digest: str) -> Path:
        return self.directory / _file(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def load(self, ref: BundleRef) -> Bundle | None:
        """The bundle, checked against `ref`; None when absent. A file that fails the check is
        removed (and counted), so it is fetched again."""
        path = self.path(ref.digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return decode_bundle(data, ref)
        except BundleError as e:
            self.corrupt_detected += 1
            log.error("bundle %s on disk is damaged (%s); removing it to fetch it again",
                      ref.digest, e)
            path.unlink(missing_ok=True)
            return None

    def put(self, data: bytes, ref: BundleRef) -> None:
        """Store `data` once it matches `ref`; raises BundleError or OSError."""
        decode_bundle(data, ref)
        write_atomic(self.path(ref.digest), data)

    def retain(self, digests: Iterable[str]) -> list[str]:
        """Remove every bundle (and partial download) not in `digests`; returns the removed
        digests. The caller keeps what the current spec names and each add-on's last good
        version."""
        keep = {_file(d) for d in digests}
        removed: list[str] = []
        if not self.directory.is_dir():
            return removed
        remove_temps(self.directory)
        for path in self.directory.iterdir():
            name = path.name.removeprefix(_PARTIAL).removesuffix(".progress")
            if path.is_file() and name not in keep:
                path.unlink(missing_ok=True)
                if not path.name.startswith(_PARTIAL):
                    removed.append(path.name.removesuffix(".json").replace("-", ":", 1))
        return removed


class FetchUnavailable(Exception):
    """NATS cannot be reached now, or the bundle is not in the Object Store (yet)."""


class BundleFetcher:
    """Fetches bundles the spec names into the content store."""

    def __init__(self, nc_provider: Callable[[], Client | None], store: ContentStore, *,
                 bucket: str = BUNDLES_BUCKET, timeout: float = 10.0) -> None:
        self._nc_provider = nc_provider
        self.store = store
        self.bucket = bucket
        self.timeout = timeout
        self.fetched_bytes = 0

    async def fetch(self, ref: BundleRef) -> None:
        """Into the store (a no-op when it is there); raises FetchUnavailable (retry later) or
        BundleError (the Object Store holds something else under that name)."""
        if self.store.has(ref.digest):
            return
        nc = self._nc_provider()
        if nc is None or not nc.is_connected:
            raise FetchUnavailable("not connected to NATS")
        try:
            await self._fetch(nc, ref)
        except (nats.js.errors.ObjectNotFoundError, nats.js.errors.BucketNotFoundError) as e:
            raise FetchUnavailable(f"bundle {ref.digest} is not in {self.bucket} (yet)") from e
        except (nats.errors.Error, TimeoutError) as e:
            raise FetchUnavailable(f"fetching bundle {ref.digest}: {type(e).__name__}: {e}"
                                   ) from e

    async def _fetch(self, nc: Client, ref: BundleRef) -> None:
        js = nc.jetstream(timeout=self.timeout)
        info = await (await js.object_store(self.bucket)).get_info(ref.digest)
        if info.size != ref.size:
            raise BundleError(f"{self.bucket}/{ref.digest} holds {info.size} bytes, the spec "
                              f"says {ref.size}")
        stream = f"OBJ_{self.bucket}"
        subject = f"$O.{self.bucket}.C.{info.nuid}"
        directory = self.store.directory
        directory.mkdir(parents=True, exist_ok=True)
        part = directory / f"{_PARTIAL}{_file(ref.digest)}"
        progress = part.with_name(part.name + ".progress")
        received, next_seq = self._resume(part, progress, str(info.nuid))
        if received:
            log.info("resuming bundle %s at %d of %d bytes", ref.digest, received, ref.size)
        chunks = 0
        with part.open("ab") as f:
            while received < ref.size:
                msg = await js.get_msg(stream, seq=next_seq, subject=subject, next=True)
                data = msg.data or b""
                if not data or msg.seq is None:
                    raise BundleError(f"{self.bucket}/{ref.digest}: an empty chunk")
                f.write(data)
                received += len(data)
                next_seq = msg.seq + 1
                self.fetched_bytes += len(data)
                chunks += 1
                if chunks % _PROGRESS_EVERY == 0:
                    f.flush()
                    await asyncio.to_thread(_record, progress, str(info.nuid), received,
                                            next_seq, f.fileno())
        data = part.read_bytes()
        part.unlink(missing_ok=True)
        progress.unlink(missing_ok=True)
        if len(data) != ref.size or digest_of(data) != ref.digest:
            raise BundleError(f"{self.bucket}/{ref.digest}: the assembled bytes are "
                              f"{digest_of(data)}, not what the spec names")
        await asyncio.to_thread(self.store.put, data, ref)
        log.info("fetched bundle %s (%d bytes)", ref.digest, ref.size)

    @staticmethod
    def _resume(part: Path, progress: Path, nuid: str) -> tuple[int, int]:
        """(bytes received, next stream sequence) of an interrupted fetch of the same upload,
        else (0, 1) with the partial file emptied."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            doc = json.loads(progress.read_bytes())
            if doc["nuid"] == nuid and part.stat().st_size >= int(doc["bytes"]):
                with part.open("r+b") as f:
                    f.truncate(int(doc["bytes"]))
                return int(doc["bytes"]), int(doc["next"])
        part.write_bytes(b"")
        progress.unlink(missing_ok=True)
        return 0, 1


def _record(progress: Path, nuid: str, received: int, next_seq: int, fd: int) -> None:
    os.fsync(fd)  # the bytes first, then the record that counts them
    progress.write_text(json.dumps({"nuid": nuid, "bytes": received, "next": next_seq}))
    fsync_dir(progress.parent)
