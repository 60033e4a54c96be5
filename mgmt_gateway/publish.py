"""The gateway's side of NATS: signed specs out (KV `outpost-specs`), agent status in
(KV `outpost-status`).

Both share one reconnecting client through `nc_provider`, a callable returning the connected
client or None: NATS may be down for long stretches, and nothing here may hang on it, so every
request is bounded by a timeout and a missing client is an immediate, typed error.

Publishing is compare-and-set on the KV revision: a gateway replica that publishes on a stale
view (another replica published meanwhile, or someone wrote the key by hand) gets
`PublishConflict` instead of silently overwriting a newer spec. Envelopes are deterministic
(canonical JSON, Ed25519), so re-publishing a spec that is already there is recognised and
answered with its revision: a gateway killed between publishing and saving its record resumes
without a false conflict.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from nats.js.object_store import ObjectStore
from pydantic import ValidationError

from agent.runtime import Backoff
from agent.spec import ClusterSpec, EnvelopeError, StatusReport, explain, parse_envelope, sign
from agent.spec.addons import digest_of
from agent.spec.wire import (
    BUNDLES_BUCKET,
    CONTENT_BUCKET,
    JS_STREAM_NAME_IN_USE,
    SPECS_BUCKET,
    SPECS_HISTORY,
    STATUS_BUCKET,
)

__all__ = [
    "SPECS_BUCKET", "SPECS_HISTORY", "STATUS_BUCKET", "NcProvider", "ObservedStatus",
    "PublishConflict", "PublishError", "PublishUnavailable", "SpecPublisher", "StatusCollector",
    "generate_signing_key", "load_signing_key",
]

log = logging.getLogger("outpost.gateway.publish")


NcProvider = Callable[[], Client | None]


class PublishError(Exception):
    """A spec was not published."""


class PublishUnavailable(PublishError):
    """NATS is not connected or did not answer in time: retry later, nothing was decided."""


class PublishConflict(PublishError):
    """The key is not at the KV revision the caller expected: someone else published.

    `current_kv_revision` (None: the key does not exist) and `current_spec_revision` (None: no
    readable envelope there) tell the caller what it raced with.
    """

    def __init__(self, message: str, *, current_kv_revision: int | None,
                 current_spec_revision: int | None) -> None:
        super().__init__(message)
        self.current_kv_revision = current_kv_revision
        self.current_spec_revision = current_spec_revision


def _connected(provider: NcProvider) -> Client | None:
    nc = provider()
    return nc if nc is not None and nc.is_connected else None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# -- publishing ----------------------------------------------------------------------------
class SpecPublisher:
    """Signs specs and writes them to the spec bucket, one key per cluster."""

    def __init__(self, nc_provider: NcProvider, signing_key: Ed25519PrivateKey, *,
                 bucket: str = SPECS_BUCKET, history: int = SPECS_HISTORY,
                 timeout: float = 5.0,
                 bundles: Callable[[str], bytes | None] = lambda digest: None,
                 bundle_bucket: str = BUNDLES_BUCKET, bundle_timeout: float = 60.0) -> None:
        self._nc_provider = nc_provider
        #: The bytes of a bundle by digest (the rendered profiles the gateway holds).
        self.bundles = bundles
        self.bundle_bucket = bundle_bucket
        self.bundle_timeout = bundle_timeout
        self._stored: set[str] = set()  # digests known to be in the bundle store
        self._objects: tuple[Client, ObjectStore] | None = None
        self._key = signing_key
        self.bucket = bucket
        self.history = history
        self.timeout = timeout
        self._kv: tuple[Client, KeyValue] | None = None  # bound to the client it came from

    async def publish(self, spec: ClusterSpec, *, last_kv_revision: int | None) -> int:
        """Publish `spec` under its cluster name; returns the new KV revision.

        `last_kv_revision` is the revision this gateway last published for the cluster (None:
        never). Raises PublishConflict when the key moved on, PublishUnavailable when NATS is
        unreachable or slow (the outcome is then unknown; publishing again is safe).
        """
        nc = _connected(self._nc_provider)
        if nc is None:
            raise PublishUnavailable("not connected to NATS")
        key = spec.cluster_name
        await self._put_bundles(nc, spec)
        value = sign(spec, self._key)
        try:
            async with asyncio.timeout(self.timeout):
                kv = await self._bucket(nc)
                try:
                    if last_kv_revision is None:
                        return int(await kv.create(key, value))
                    return int(await kv.update(key, value, last=last_kv_revision))
                except nats.js.errors.KeyWrongLastSequenceError:
                    return await self._on_wrong_revision(kv, spec, value, last_kv_revision)
        except TimeoutError as e:
            self._kv = None
            raise PublishUnavailable(f"NATS did not answer within {self.timeout:g}s while "
                                     f"publishing {key} revision {spec.revision}") from e
        except nats.errors.Error as e:
            self._kv = None  # the bucket may have been removed: look it up again next time
            raise PublishUnavailable(f"publishing {key} revision {spec.revision} failed: "
                                     f"{_describe(e)}") from e

    async def _put_bundles(self, nc: Client, spec: ClusterSpec) -> None:
        """Every bundle the spec refers to, in the Object Store before the spec that names it
        (an agent never sees a reference it cannot fetch). Bundles are immutable and named by
        digest: one already there is never written again."""
        refs = [a for a in (spec.profile.addons if spec.profile else ())
                if a.bundle.digest not in self._stored]
        if not refs:
            return
        try:
            async with asyncio.timeout(self.bundle_timeout):
                store = await self._bundle_store(nc)
                for addon in refs:
                    ref = addon.bundle
                    try:
                        info = await store.get_info(ref.digest)
                        present = info.size == ref.size
                    except nats.js.errors.ObjectNotFoundError:
                        present = False
                    if not present:
                        data = self.bundles(ref.digest)
                        if data is None:
                            raise PublishError(
                                f"the bundle of add-on {addon.name} ({ref.digest}) is neither "
                                "in the bundle store nor rendered here; re-render its profile")
                        await store.put(ref.digest, data)
                        log.info("stored bundle %s of add-on %s (%d bytes)", ref.digest,
                                 addon.name, ref.size)
                    self._stored.add(ref.digest)
        except TimeoutError as e:
            self._objects = None
            raise PublishUnavailable(f"NATS did not store the bundles of {spec.cluster_name} "
                                     f"within {self.bundle_timeout:g}s") from e
        except nats.errors.Error as e:
            self._objects = None
            raise PublishUnavailable(f"storing the bundles of {spec.cluster_name} failed: "
                                     f"{_describe(e)}") from e

    async def _bundle_store(self, nc: Client) -> ObjectStore:
        if self._objects is not None and self._objects[0] is nc:
            return self._objects[1]
        store = await _object_store(nc, self.bundle_bucket, self.timeout,
                                    "Outpost add-on bundles, named by sha256 digest")
        self._objects = (nc, store)
        return store

    # -- uploaded content -------------------------------------------------------------------
    async def put_content(self, data: bytes) -> str:
        """Store uploaded content under its digest (idempotent); raises PublishUnavailable."""
        nc = _connected(self._nc_provider)
        if nc is None:
            raise PublishUnavailable("not connected to NATS")
        digest = digest_of(data)
        try:
            async with asyncio.timeout(self.bundle_timeout):
                store = await _object_store(nc, CONTENT_BUCKET, self.timeout,
                                            "Outpost uploaded add-on content, by sha256")
                try:
                    info = await store.get_info(digest)
                    if info.size == len(data):
                        return digest
                except nats.js.errors.ObjectNotFoundError:
                    pass
                await store.put(digest, data)
        except (TimeoutError, nats.errors.Error) as e:
            raise PublishUnavailable(f"storing uploaded content failed: {_describe(e)}") from e
        log.info("stored uploaded content %s (%d bytes)", digest, len(data))
        return digest

    async def get_content(self, digest: str) -> bytes | None:
        """Uploaded content by digest; None when there is none; raises PublishUnavailable."""
        nc = _connected(self._nc_provider)
        if nc is None:
            raise PublishUnavailable("not connected to NATS")
        try:
            async with asyncio.timeout(self.bundle_timeout):
                store = await nc.jetstream(timeout=self.timeout).object_store(CONTENT_BUCKET)
                return bytes((await store.get(digest)).data or b"")
        except (nats.js.errors.ObjectNotFoundError, nats.js.errors.BucketNotFoundError):
            return None
        except (TimeoutError, nats.errors.Error) as e:
            raise PublishUnavailable(f"reading uploaded content failed: {_describe(e)}") from e

    async def _on_wrong_revision(self, kv: KeyValue, spec: ClusterSpec, value: bytes,
                                 expected: int | None) -> int:
        key = spec.cluster_name
        try:
            entry: KeyValue.Entry | None = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:  # also what a deleted key reads as
            entry = None
        if entry is not None and entry.value == value and entry.revision is not None:
            log.info("spec %s revision %d was already published (KV revision %d)", key,
                     spec.revision, entry.revision)
            return int(entry.revision)
        if entry is None and expected is not None:
            # Gone (deleted, or NATS lost its store): nothing newer can be overwritten, and
            # the agents need a spec there, so publish afresh instead of failing the cluster.
            log.warning("%s/%s vanished since KV revision %d; publishing spec revision %d "
                        "afresh", self.bucket, key, expected, spec.revision)
            try:
                return int(await kv.create(key, value))
            except nats.js.errors.KeyWrongLastSequenceError:
                return await self._on_wrong_revision(kv, spec, value, None)
        current_spec: int | None = None
        if entry is not None:
            with contextlib.suppress(EnvelopeError, ValidationError, ValueError):
                payload = base64.b64decode(parse_envelope(entry.value or b"").payload)
                current_spec = ClusterSpec.model_validate_json(payload).revision
        have = "absent" if entry is None else f"at KV revision {entry.revision}" + (
            f" (spec revision {current_spec})" if current_spec is not None else "")
        want = "absent" if expected is None else f"at KV revision {expected}"
        raise PublishConflict(
            f"{self.bucket}/{key} is {have}, not {want} as expected: another writer published "
            f"meanwhile; refusing to overwrite it with spec revision {spec.revision}",
            current_kv_revision=None if entry is None else entry.revision,
            current_spec_revision=current_spec)

    async def _bucket(self, nc: Client) -> KeyValue:
        """The spec bucket, created on first use (idempotent across replicas)."""
        if self._kv is not None and self._kv[0] is nc:
            return self._kv[1]
        js = nc.jetstream(timeout=self.timeout)
        try:
            kv = await js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            try:
                kv = await js.create_key_value(KeyValueConfig(
                    bucket=self.bucket, history=self.history, storage=StorageType.FILE,
                    # Agents read their key with a direct get, which names the key in its
                    # subject, so each cluster's permissions allow exactly its own.
                    direct=True,
                    description="Outpost signed cluster specs, one key per cluster"))
                log.info("created KV bucket %s (history %d)", self.bucket, self.history)
            except nats.js.errors.BadRequestError as e:
                if e.err_code != JS_STREAM_NAME_IN_USE:
                    raise
                kv = await js.key_value(self.bucket)  # another replica created it first
        self._kv = (nc, kv)
        return kv


async def _object_store(nc: Client, bucket: str, timeout: float,
                        description: str) -> ObjectStore:
    """An Object Store bucket, created on first use (idempotent across replicas)."""
    js = nc.jetstream(timeout=timeout)
    try:
        return await js.object_store(bucket)
    except nats.js.errors.BucketNotFoundError:
        try:
            store = await js.create_object_store(bucket, ObjectStoreConfig(
                bucket=bucket, storage=StorageType.FILE, description=description))
            log.info("created object store %s", bucket)
            return store
        except nats.js.errors.BadRequestError as e:
            if e.err_code != JS_STREAM_NAME_IN_USE:
                raise
            return await js.object_store(bucket)


# -- status ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ObservedStatus:
    """The newest report of one agent and when it reached NATS (`last_seen`)."""

    report: StatusReport
    last_seen: datetime
    kv_revision: int


class StatusCollector:
    """Keeps the newest StatusReport of every agent, from a watch on the status bucket.

    `latest` and `last_seen` are plain dicts keyed by cluster, readable at any time.
    `last_seen` is when NATS stored the report (its server timestamp, falling back to the local
    receive time), so a gateway restart, which replays every key, does not make silent agents
    look fresh. A value that is not a valid report is logged and skipped: one broken agent
    must not blind the fleet view. The watch is re-created after every reconnect (the server
    may have lost its consumer) and after `resync_interval` of silence; the replay of a new
    watch is the bucket's whole content, so clusters whose key vanished meanwhile are dropped.
    """

    def __init__(self, nc_provider: NcProvider, *, bucket: str = STATUS_BUCKET,
                 timeout: float = 5.0, poll: float = 1.0, backoff_max: float = 10.0,
                 resync_interval: float = 600.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._nc_provider = nc_provider
        self.bucket = bucket
        self.timeout = timeout
        self.poll = poll
        self.backoff_max = backoff_max
        self.resync_interval = resync_interval
        self._clock = clock
        self.latest: dict[str, StatusReport] = {}
        self.last_seen: dict[str, datetime] = {}
        self.kv_revision: dict[str, int] = {}
        self.junk = 0  # values skipped because they were not valid reports
        self.watches = 0  # watches created so far (a reconnect makes a new one)
        self.watching = False
        self._rewatch = asyncio.Event()
        self._warned: dict[str, int] = {}  # key -> KV revision of the last junk value logged
        #: Called with the cluster's name after each new report (the controller enqueues it).
        self.on_report: Callable[[str], None] | None = None

    def snapshot(self) -> dict[str, ObservedStatus]:
        """A consistent copy for one API answer."""
        return {k: ObservedStatus(report=v, last_seen=self.last_seen[k],
                                  kv_revision=self.kv_revision.get(k, 0))
                for k, v in self.latest.items() if k in self.last_seen}

    def __call__(self) -> dict[str, ObservedStatus]:
        return self.snapshot()

    async def on_reconnected(self) -> None:
        """For `nats.connect(reconnected_cb=...)`: re-create the watch now, not at the next
        check."""
        self._rewatch.set()

    def ingest(self, key: str, value: bytes | None, *, kv_revision: int,
               stored_at: datetime | None = None, deleted: bool = False) -> bool:
        """Take one KV entry; True if it changed `latest`. Public so tools and tests can feed
        the collector without NATS."""
        if deleted:
            found = self.latest.pop(key, None) is not None
            self.last_seen.pop(key, None)
            self.kv_revision.pop(key, None)
            if found:
                self._reported(key)
            return found
        try:
            report = StatusReport.model_validate_json(value or b"")
        except ValidationError as e:
            self._junk(key, kv_revision, f"not a status report: {explain(e)}")
            return False
        if report.cluster != key:
            self._junk(key, kv_revision, f"the report is for cluster {report.cluster!r}")
            return False
        self.latest[key] = report
        self.last_seen[key] = stored_at or self._clock()
        self.kv_revision[key] = kv_revision
        self._warned.pop(key, None)
        self._reported(key)
        return True

    def _reported(self, key: str) -> None:
        if self.on_report is None:
            return
        try:
            self.on_report(key)
        except Exception:  # a broken listener must not stop the watch
            log.exception("the report listener failed for %s", key)

    def _junk(self, key: str, kv_revision: int, why: str) -> None:
        self.junk += 1
        # A re-created watch replays the same bad value: say it once per value.
        level = logging.DEBUG if self._warned.get(key) == kv_revision else logging.WARNING
        self._warned[key] = kv_revision
        log.log(level, "skipping %s/%s at KV revision %d: %s", self.bucket, key, kv_revision,
                why[:500])

    async def run(self) -> None:
        """Watch until cancelled; waits out NATS outages and a bucket not created yet."""
        backoff = Backoff(min(self.poll, self.backoff_max), self.backoff_max)
        while True:
            nc = _connected(self._nc_provider)
            if nc is None:
                self.watching = False
                await self._sleep(self.poll)
                continue
            try:
                watcher = await asyncio.wait_for(self._watch(nc), self.timeout)
            except (nats.errors.Error, TimeoutError) as e:
                self.watching = False
                delay = backoff.next()
                level = (logging.INFO if isinstance(e, nats.js.errors.BucketNotFoundError)
                         else logging.WARNING)
                log.log(level, "cannot watch %s (%s); retrying in %.1fs", self.bucket,
                        _describe(e), delay)
                await self._sleep(delay)
                continue
            backoff.reset()
            self.watches += 1
            self.watching = True
            try:
                await self._pump(nc, watcher)
            finally:
                self.watching = False
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(watcher.stop(),  # type: ignore[no-untyped-call]
                                           self.timeout)

    async def _watch(self, nc: Client) -> KeyValue.KeyWatcher:
        kv = await nc.jetstream(timeout=self.timeout).key_value(self.bucket)
        self._rewatch.clear()
        watcher: KeyValue.KeyWatcher = await kv.watchall()
        log.info("watching %s for agent status", self.bucket)
        return watcher

    async def _pump(self, nc: Client, watcher: KeyValue.KeyWatcher) -> None:
        """Apply entries until the link changes or the watch goes quiet for too long."""
        reconnects = _reconnects(nc)
        quiet_since = asyncio.get_running_loop().time()
        replayed: set[str] | None = set()  # keys in the initial replay; None once it ended
        while True:
            # Checked before every entry, not only when idle: a busy fleet never lets it idle.
            if (self._rewatch.is_set() or _connected(self._nc_provider) is not nc
                    or _reconnects(nc) != reconnects):
                log.info("NATS link changed; re-creating the status watch")
                return
            try:
                entry = await asyncio.wait_for(anext(watcher), self.poll)
            except TimeoutError:
                if asyncio.get_running_loop().time() - quiet_since > self.resync_interval:
                    return
                continue
            except StopAsyncIteration:
                return
            quiet_since = asyncio.get_running_loop().time()
            if entry is None:  # end of the initial replay
                if replayed is not None:
                    self._forget_all_but(replayed)
                replayed = None
                continue
            if replayed is not None:
                replayed.add(entry.key)
            self.ingest(entry.key, entry.value, kv_revision=entry.revision or 0,
                        stored_at=entry.created,
                        deleted=entry.operation in (KV_DEL, KV_PURGE))

    def _forget_all_but(self, keys: set[str]) -> None:
        """Drop clusters whose key vanished while the watch was down (purged, bucket reset):
        the replay of a new watch is the whole current content of the bucket."""
        for key in [k for k in self.latest if k not in keys]:
            self.ingest(key, None, kv_revision=0, deleted=True)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._rewatch.wait(), seconds)


def _reconnects(nc: Client) -> int:
    stats: Any = getattr(nc, "stats", None) or {}
    return int(stats.get("reconnects", 0))


# -- keys --------------------------------------------------------------------------------------
def load_signing_key(path: Path | str) -> Ed25519PrivateKey:
    """The gateway's Ed25519 key from a PEM file (PKCS#8) or base64 of the 32 raw bytes."""
    path = Path(path)
    data = path.read_bytes().strip()
    if path.stat().st_mode & 0o077:
        log.warning("signing key %s is readable by other users; chmod 600 it", path)
    try:
        if data.startswith(b"-----BEGIN"):
            key: Any = serialization.load_pem_private_key(data, password=None)
        else:
            key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(data, validate=True))
    except (ValueError, TypeError, binascii.Error) as e:
        raise ValueError(f"signing key {path} is neither an unencrypted PEM private key nor "
                         f"base64 of 32 raw Ed25519 bytes: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"signing key {path} is a {type(key).__name__}, not an Ed25519 key")
    return key


def generate_signing_key(path: Path | str) -> Ed25519PrivateKey:
    """Create a key at `path` (PEM, mode 0600) and return it.

    Never overwrites: the file appears atomically and complete, and if another replica created
    it first, that key is loaded and returned instead, so all replicas sign with one key.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd, tmp = tempfile.mkstemp(prefix=".signing-key-", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return load_signing_key(path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    log.info("created a new signing key at %s", path)
    return key
