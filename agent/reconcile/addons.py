"""The add-on controller: installs and keeps every add-on of the cluster's profile.

One key per add-on in a work queue, so a failing add-on never holds the others up; triggers only
enqueue (a new spec, a watched object changing, a bundle arriving, the periodic resync). Each
pass is level-triggered and full-intent:

- add-ons go by order (lower first; one order's add-ons in parallel, a new version of a higher
  order waits until every lower one is Ready);
- inside an add-on, stage by stage (agent.plan.addons), each stage healthy before the next;
- Helm hooks run at their phase, install and upgrade kept apart, once per version;
- each object is applied by server-side apply only when it is not already as the agent left it
  (its body unchanged, its uid the same, and the agent's managedFields entry untouched), so a
  converged add-on costs zero writes;
- a field someone else took is taken back only if the agent applied it before; one a controller
  keeps taking back (an HPA's replicas) stops being fought after a few rounds and the add-on
  says which ignore rule would settle it;
- what a new version dropped, or a dropped add-on, is pruned once the new state is healthy,
  webhooks first, Namespaces last, only objects the agent created (by uid), PVCs only if asked;
- a version that does not become healthy in time rolls back to the last good bundle (or holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.intake.bundles import BundleFetcher, ContentStore, FetchUnavailable
from agent.kube import Conflict, Invalid, KubeClient, KubeError, NotFound, Obj, Resource
from agent.plan.addons import (
    STAGES,
    Health,
    ObjKey,
    apply_body,
    autoscaled,
    health,
    key_of,
    kstatus,
    prune_sorted,
    stage_of,
)
from agent.runtime.queue import WorkQueue
from agent.spec import ClusterSpec
from agent.spec.addons import Addon, Bundle, BundleError, BundleRef, Hook
from agent.spec.status import AddonPhase, AddonStatus

from .inventory import FIELD_MANAGER, Entry, Inventory, InventoryStore
from .mapper import NotServed, RestMapper
from .watches import FIELDS_DIGEST, ObjectWatches, fields_digest

log = logging.getLogger(__name__)

CONTESTED_LIMIT = 3  # forced re-takes of one object's fields within CONTESTED_WINDOW
CONTESTED_WINDOW = 600.0
HOOK_LABEL = "outpost.io/hook"
_EMPTY_CA_PATHS = ("webhooks[*].clientConfig.caBundle", "spec.caBundle",
                   "spec.conversion.webhook.clientConfig.caBundle")


class Waiting(Exception):
    """The pass cannot go on yet (a stage not healthy, a bundle not fetched); not an error."""


class VersionFailed(Exception):
    """The add-on version cannot become healthy (an object Failed, a hook failed)."""


class Contested(Exception):
    """Another manager keeps taking fields the add-on sets."""


def _digest(body: Obj) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
                          ).hexdigest()[:32]


@dataclass
class _Work:
    """What one pass of one add-on is doing, for its status."""

    phase: AddonPhase = "Pending"
    message: str = ""
    error: str | None = None


class AddonController:
    def __init__(self, kube: KubeClient, desired: Callable[[], ClusterSpec | None],
                 store: ContentStore, inventories: InventoryStore, *,
                 fetcher: BundleFetcher | None = None,
                 is_leader: Callable[[], bool] = lambda: True,
                 on_change: Callable[[], None] = lambda: None, resync: float = 30.0,
                 retry: float = 2.0, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.kube = kube
        self.desired = desired
        self.store = store
        self.inventories = inventories
        self.fetcher = fetcher
        self.is_leader = is_leader
        self.on_change = on_change
        self.resync = resync
        self.retry = retry
        self.clock = clock
        self.wall = wall
        self.queue = WorkQueue(base_delay=0.5, max_delay=30.0)
        self.mapper = RestMapper(kube)
        self.watches = ObjectWatches(kube, FIELD_MANAGER, self.trigger)
        self.inventory: dict[str, Inventory] = inventories.load_all()
        self.status: dict[str, AddonStatus] = {}
        self.writes = 0  # API writes made by passes (applies, deletes), for tests and metrics
        self._started: dict[tuple[str, str], float] = {}  # (add-on, digest) -> first attempt
        self._forced: dict[ObjKey, list[float]] = {}
        self._fetch_now = asyncio.Event()

    # -- triggers ------------------------------------------------------------------------------
    def trigger(self, addon: str = "") -> None:
        """One add-on, or (no name) every add-on the spec or an inventory names."""
        if addon:
            self.queue.add(addon)
            return
        for name in self._names():
            self.queue.add(name)
        self._fetch_now.set()

    def _names(self) -> set[str]:
        spec = self.desired()
        names = {a.name for a in spec.profile.addons} if spec and spec.profile else set()
        return names | set(self.inventory)

    def _addons(self) -> dict[str, Addon]:
        spec = self.desired()
        return {a.name: a for a in spec.profile.addons} if spec and spec.profile else {}

    # -- loops (each supervised by the daemon) -----------------------------------------------
    async def worker(self, beat: Callable[[], None] = lambda: None) -> None:
        while True:
            beat()
            if not self.is_leader():
                await asyncio.sleep(1.0)
                continue
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that races its timeout, and the loop would never stop.
                async with asyncio.timeout(5.0):
                    key = await self.queue.get()
            except TimeoutError:
                continue
            try:
                again = await self.reconcile(str(key))
            finally:
                self.queue.done(key)
            if again is not None:
                self.queue.add_after(key, again)

    async def resync_loop(self) -> None:
        while True:
            self.trigger()
            await asyncio.sleep(self.resync)

    async def fetch_loop(self) -> None:
        """Fetch every bundle the spec names that the store lacks; retried while NATS is away."""
        while True:
            self._fetch_now.clear()
            missing = False
            for addon in self._addons().values():
                if self.fetcher is None or self.store.has(addon.bundle.digest):
                    continue
                try:
                    await self.fetcher.fetch(addon.bundle)
                    self.queue.add(addon.name)
                except FetchUnavailable as e:
                    missing = True
                    log.info("bundle of add-on %s not fetched yet: %s", addon.name, e)
                except (BundleError, OSError) as e:
                    missing = True
                    log.error("bundle of add-on %s cannot be fetched: %s", addon.name, e)
            if not missing and self.desired() is not None:
                removed = await asyncio.to_thread(self.store.retain, self.retained_digests())
                if removed:
                    log.info("removed %d bundle(s) no add-on needs any more", len(removed))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.retry if missing else 60.0):
                    await self._fetch_now.wait()

    # -- one pass ------------------------------------------------------------------------------
    async def reconcile(self, name: str) -> float | None:
        """One pass over one add-on; returns when to look again (None: on the next trigger).
        Never raises but for cancellation."""
        work = _Work()
        try:
            again = await self._reconcile(name, work)  # a Failed version keeps its error
        except Waiting as e:
            work.message = str(e)
            again = self.retry
        except Contested as e:
            work.phase, work.error = "Degraded", str(e)
            again = self.resync
        except Exception as e:
            kind = "" if isinstance(e, KubeError) else f"{type(e).__name__}: "
            work.error = f"{kind}{e}"[:2000]
            if work.phase in ("Ready", "Pending"):
                work.phase = "Degraded"
            log.warning("add-on %s: pass failed: %s", name, work.error,
                        exc_info=None if isinstance(e, KubeError) else e,
                        extra={"addon": name})
            again = self.queue.retry(name)
        else:
            self.queue.forget(name)
        self._set_status(name, work)
        return again

    def _set_status(self, name: str, work: _Work) -> None:
        addon = self._addons().get(name)
        inv = self.inventory.get(name)
        if addon is None and inv is None:
            if self.status.pop(name, None) is not None:
                self.on_change()
            return
        status = AddonStatus(
            name=name, version=addon.version if addon else (inv.version if inv else ""),
            digest=addon.bundle.digest if addon else (inv.digest if inv else ""),
            phase=work.phase, objects=len(inv.entries) if inv else 0, message=work.message,
            last_error=work.error)
        if self.status.get(name) != status:
            self.status[name] = status
            self.on_change()

    async def _reconcile(self, name: str, work: _Work) -> float | None:
        spec = self.desired()
        if spec is None:
            return None  # no spec (yet): never prune on silence
        addon = self._addons().get(name)
        inv = self.inventory.get(name)
        if addon is None:
            if inv is not None:
                work.phase, work.message = "Pruning", "removed from the profile"
                await self._remove(inv)
            return None
        target, rolled_back = self._target(addon, inv)
        if rolled_back:
            # The last good version is judged as it became good: by its objects' own health,
            # not by rules written for the version that failed.
            addon = addon.model_copy(update={"health": ()})
        bundle = self.store.load(target)
        if bundle is None:
            self._fetch_now.set()
            work.message = f"waiting for bundle {target.digest} from the management plane"
            raise Waiting(work.message)
        fresh = inv is None or inv.digest != target.digest or not inv.ready
        if fresh:
            self._gate_on_order(addon)
        if inv is None or inv.digest != target.digest:
            self._started[(name, target.digest)] = self.clock()  # a new attempt at it
        started = self._started.get((name, target.digest))
        if started is None:
            started = self._started[(name, target.digest)] = self._resumed(inv, addon)
        work.phase = "Applying" if fresh else "Ready"
        # onFailure Hold: the failed version stays applied and repaired; its failure is told
        # once, and it is Ready again only if it becomes healthy after all.
        held = inv is not None and inv.failed_digest == target.digest
        try:
            await self._converge(addon, bundle, target, spec.revision, work)
        except Waiting:
            if fresh and self.clock() - started > addon.timeout_seconds:
                why = f"not healthy after {addon.timeout_seconds}s: {work.message}"
                if not held:
                    await self._failed(addon, target, why)
                work.phase, work.error = "Failed", why
                if rolled_back:  # the last good version does not come back either: hold
                    return self.resync
                return 0.0 if addon.on_failure == "Rollback" else None
            if not fresh:
                work.phase = "Degraded"
            raise
        except VersionFailed as e:
            if not held:
                await self._failed(addon, target, str(e))
            work.phase, work.error = "Failed", str(e)
            if rolled_back:
                return self.resync
            return 0.0 if addon.on_failure == "Rollback" else None
        if rolled_back:
            work.phase = "Degraded"
            work.message = (f"version {addon.version} failed; rolled back to "
                            f"{self.inventory[name].last_good_version}")
        else:
            work.phase, work.message = "Ready", f"{len(bundle.objects)} objects healthy"
        return None

    def _resumed(self, inv: Inventory | None, addon: Addon) -> float:
        """When the attempt at the inventory's digest began, on this process's clock: an agent
        that restarts (or crash-loops) mid-attempt keeps counting toward the timeout. The
        persisted time is wall-clock, so what it adds is clamped: a clock set back restarts
        the count, one set forward can at most end it now."""
        elapsed = self.wall() - inv.attempt_started if inv and inv.attempt_started else 0.0
        return self.clock() - min(max(elapsed, 0.0), float(addon.timeout_seconds))

    def _target(self, addon: Addon, inv: Inventory | None) -> tuple[BundleRef, bool]:
        """The bundle to hold the cluster to: the spec's, or the last good one after the spec's
        failed (until the spec names another)."""
        if (inv is not None and inv.failed_digest == addon.bundle.digest
                and addon.on_failure == "Rollback" and inv.last_good_digest
                and inv.last_good_digest != addon.bundle.digest):
            return BundleRef(digest=inv.last_good_digest, size=inv.last_good_size,
                             objects=inv.last_good_objects), True
        return addon.bundle, False

    def _gate_on_order(self, addon: Addon) -> None:
        waiting = sorted(a.name for a in self._addons().values() if a.order < addon.order and (
            self.status.get(a.name) is None or self.status[a.name].phase not in (
                "Ready", "Degraded")))
        if waiting:
            raise Waiting(f"waiting for add-ons of lower order: {', '.join(waiting)}")

    async def _failed(self, addon: Addon, target: BundleRef, why: str) -> None:
        inv = self.inventory.get(addon.name) or Inventory(addon=addon.name)
        version = addon.version if target.digest == addon.bundle.digest else (
            f"{inv.last_good_version} (the last good one)")
        log.error("add-on %s version %s failed: %s%s", addon.name, version, why,
                  "; rolling back to the last good version" if addon.on_failure == "Rollback"
                  and inv.last_good_digest and target.digest == addon.bundle.digest else "",
                  extra={"addon": addon.name})
        if target.digest == addon.bundle.digest:
            await self._save(inv.model_copy(update={"failed_digest": target.digest}))

    async def _converge(self, addon: Addon, bundle: Bundle, target: BundleRef, revision: int,
                        work: _Work) -> None:
        inv = self.inventory.get(addon.name) or Inventory(addon=addon.name)
        new_version = inv.digest != target.digest
        if new_version:
            # The entries of the old version stay until the new one is healthy (then pruned).
            # An upgrade is a version replacing one that was installed; its hooks are the
            # upgrade ones, decided now, not by what later passes find.
            inv = inv.model_copy(update={"digest": target.digest, "version": bundle.version,
                                         "revision": revision, "hooks_done": (),
                                         "ready": False, "attempt_started": self.wall(),
                                         "upgrade": bool(inv.last_good_digest)})
            await self._save(inv)
        if inv.prune_volumes != addon.prune_volumes:  # what removing the add-on will do
            inv = await self._save(inv.model_copy(update={"prune_volumes": addon.prune_volumes}))
        pre, post = ("pre-upgrade", "post-upgrade") if inv.upgrade else ("pre-install",
                                                                         "post-install")
        if pre not in inv.hooks_done:
            work.message = f"running {pre} hooks"
            await self._hooks(addon, bundle, pre)
            inv = await self._save(inv.model_copy(update={"hooks_done": (*inv.hooks_done,
                                                                         pre)}))
        entries = dict(inv.by_key())
        scaled = autoscaled(bundle.objects)
        wanted: set[ObjKey] = set()
        for stage, label in enumerate(STAGES):
            objs = [o for o in bundle.objects if stage_of(o) == stage]
            for obj in objs:
                key = key_of(obj)
                wanted.add(key)
                entries[key] = await self._apply(addon, obj, entries.get(key), stage,
                                                 key in scaled)
            if entries != inv.by_key():
                inv = await self._save(inv.model_copy(update={"entries": tuple(
                    entries[k] for k in sorted(entries))}))
            await self._healthy(addon, objs, label, work, entries)
        if post not in inv.hooks_done:
            work.message = f"running {post} hooks"
            await self._hooks(addon, bundle, post)
            inv = await self._save(inv.model_copy(update={"hooks_done": (*inv.hooks_done,
                                                                         post)}))
        dropped = [e for e in inv.entries if e.key not in wanted]
        if dropped:
            work.phase, work.message = "Pruning", f"pruning {len(dropped)} objects the " \
                                                  "version no longer has"
            kept = await self._prune(addon.prune_volumes, dropped)
            inv = await self._save(inv.model_copy(update={"entries": tuple(
                e for e in inv.entries if e.key in wanted or e.key in kept)}))
        if not inv.ready or inv.last_good_digest != target.digest or inv.failed_digest == (
                target.digest):
            # A held version that became healthy after all is a good one.
            inv = await self._save(inv.model_copy(update={
                "ready": True, "last_good_digest": target.digest,
                "failed_digest": "" if inv.failed_digest == target.digest else inv.failed_digest,
                "last_good_version": bundle.version, "last_good_size": target.size,
                "last_good_objects": target.objects}))
            log.info("add-on %s version %s is healthy (%d objects)", addon.name,
                     bundle.version, len(bundle.objects), extra={"addon": addon.name})

    async def _save(self, inv: Inventory) -> Inventory:
        if self.inventory.get(inv.addon) != inv:
            self.inventory[inv.addon] = inv
            await self.inventories.save(inv)
        return inv

    # -- objects -------------------------------------------------------------------------------
    async def _resource(self, obj: Mapping[str, Any]) -> Resource:
        try:
            res = await self.mapper.resource(obj)
        except NotServed as e:
            raise Waiting(str(e)) from None
        self.watches.want(res)
        return res

    async def _apply(self, addon: Addon, obj: Obj, entry: Entry | None, stage: int,
                     scaled: bool) -> Entry:
        res = await self._resource(obj)
        ignore = [p for p in _EMPTY_CA_PATHS if _empty_ca(obj, p)]
        if scaled:
            ignore.append("spec.replicas")
        body = apply_body(obj, addon, ignore)
        body_digest = _digest(body)
        live = await self.watches.get(res, body)
        live_meta = (live or {}).get("metadata") or {}
        if (entry is not None and live is not None and entry.uid == live_meta.get("uid")
                and entry.body == body_digest and entry.fields
                and (live_meta.get("annotations") or {}).get(FIELDS_DIGEST) == entry.fields):
            return entry  # exactly as the agent left it: no write
        if live is None and entry is not None and entry.body == body_digest and _run_once(obj):
            return entry  # a finished Job its TTL removed: it ran; running it again is not drift
        key = key_of(obj)
        if entry is not None and entry.fields:
            why = ("it is gone" if live is None else
                   "it was re-created by someone else" if entry.uid != live_meta.get("uid")
                   else "the add-on changed it" if entry.body != body_digest
                   else "fields the agent set were changed or taken")
            log.info("add-on %s: applying %s again: %s", addon.name, key, why,
                     extra={"addon": addon.name, "object": str(key)})
        try:
            out = await self.kube.apply(res, body, field_manager=FIELD_MANAGER)
        except Invalid as e:
            if not (live is not None and _run_once(obj)):
                raise
            # A Job's template is immutable: a new version of it is a new run.
            log.info("add-on %s: %s changed; replacing the Job (%s)", addon.name, key_of(obj), e)
            await self._delete_and_wait(res, body["metadata"]["name"],
                                        body["metadata"].get("namespace"))
            out = await self.kube.apply(res, body, field_manager=FIELD_MANAGER)
        except Conflict as e:
            if entry is None or not entry.body:
                fields = "; ".join(f"{f} ({m})" for f, m in e.causes) or str(e)
                raise Contested(f"{key}: fields other managers own: {fields}. Add an ignore "
                                "rule for them to the add-on, or stop the other writer") from e
            self._note_forced(key, e)
            out = await self.kube.apply(res, body, field_manager=FIELD_MANAGER, force=True)
            log.info("add-on %s: %s restored (fields someone else had taken)", addon.name,
                     key, extra={"addon": addon.name})
        self.writes += 1
        self.watches.store(res, out)
        meta = out.get("metadata") or {}
        return Entry(api_version=str(body["apiVersion"]), kind=str(body["kind"]),
                     namespace=str(meta.get("namespace") or ""), name=str(meta.get("name")),
                     uid=str(meta.get("uid") or ""), stage=stage,
                     created=entry.created if entry is not None else live is None,
                     body=body_digest, fields=fields_digest(out, FIELD_MANAGER))

    def _note_forced(self, key: ObjKey, e: Conflict) -> None:
        now = self.clock()
        recent = [t for t in self._forced.get(key, []) if now - t < CONTESTED_WINDOW]
        recent.append(now)
        self._forced[key] = recent
        if len(recent) > CONTESTED_LIMIT:
            fields = "; ".join(f"{f} ({m})" for f, m in e.causes) or str(e)
            raise Contested(
                f"{key}: another manager keeps changing fields this add-on sets ({fields}); "
                f"taken back {len(recent) - 1} times in {CONTESTED_WINDOW / 60:.0f} minutes, "
                "now left alone: add an ignore rule for these fields to the add-on") from e

    async def _healthy(self, addon: Addon, objs: list[Obj], stage: str, work: _Work,
                       entries: Mapping[ObjKey, Entry]) -> None:
        waiting: list[str] = []
        for obj in objs:
            res = await self._resource(obj)
            live = await self.watches.get(res, obj)  # only its name and namespace are read
            if live is None and _run_once(obj) and key_of(obj) in entries:
                continue  # finished and removed by its TTL
            if live is None:
                waiting.append(f"{key_of(obj)} is missing")
                continue
            found: Health = health(live, addon.health)
            if found.status == "Failed":
                raise VersionFailed(f"{key_of(obj)}: {found.message}")
            if found.status != "Current":
                waiting.append(f"{key_of(obj)}: {found.message}")
        if waiting:
            work.message = (f"{stage}: waiting for {len(waiting)} object(s): "
                            f"{'; '.join(waiting[:3])}")
            raise Waiting(work.message)

    # -- hooks ---------------------------------------------------------------------------------
    async def _hooks(self, addon: Addon, bundle: Bundle, phase: str) -> None:
        """Helm's order: each hook (by weight) created and waited for; `hook-succeeded` ones
        deleted only once the whole phase succeeded (a Job may need the ServiceAccount hook
        before it), `hook-failed` ones when the phase fails."""
        hooks = sorted((h for h in bundle.hooks if h.phase == phase), key=lambda h: h.weight)
        ran: list[tuple[Hook, Resource, str, str | None]] = []
        try:
            for hook in hooks:
                ran.append(await self._run_hook(addon, hook))
        except VersionFailed:
            for hook, res, name, ns in ran:
                if "hook-failed" in hook.delete_policies:
                    await self._delete_and_wait(res, name, ns)
            raise
        for hook, res, name, ns in ran:
            if "hook-succeeded" in hook.delete_policies:
                await self.kube.delete(res, name, ns)
                self.writes += 1

    async def _run_hook(self, addon: Addon, hook: Hook) -> tuple[Hook, Resource, str,
                                                                  str | None]:
        body = apply_body(hook.object, addon)
        body["metadata"]["labels"][HOOK_LABEL] = hook.phase
        res = await self._resource(body)
        meta = body["metadata"]
        ns = meta.get("namespace") if res.namespaced else None
        if "before-hook-creation" in hook.delete_policies:
            await self._delete_and_wait(res, meta["name"], ns)
        out = await self.kube.apply(res, body, field_manager=FIELD_MANAGER, force=True)
        self.writes += 1
        deadline = self.clock() + addon.timeout_seconds
        while True:
            try:
                live = await self.kube.get(res, meta["name"], ns)
            except NotFound:
                raise VersionFailed(f"{hook.phase} hook {key_of(out)} vanished") from None
            found = kstatus(live)
            if found.status == "Current":
                return hook, res, str(meta["name"]), ns
            if found.status == "Failed" or self.clock() > deadline:
                if "hook-failed" in hook.delete_policies:
                    await self._delete_and_wait(res, meta["name"], ns)
                raise VersionFailed(f"{hook.phase} hook {key_of(out)} failed: "
                                    f"{found.message or 'timed out'}")
            await asyncio.sleep(0.5)

    async def _delete_and_wait(self, res: Resource, name: str, ns: str | None) -> None:
        try:
            await self.kube.get(res, name, ns)
        except NotFound:
            return
        await self.kube.delete(res, name, ns)
        self.writes += 1
        for _ in range(120):
            try:
                await self.kube.get(res, name, ns)
            except NotFound:
                return
            await asyncio.sleep(0.5)
        raise Waiting(f"{res.kind} {name} from an earlier hook run is still being deleted")

    # -- prune ---------------------------------------------------------------------------------
    async def _prune(self, prune_volumes: bool, entries: list[Entry]) -> set[ObjKey]:
        """Delete `entries` in prune order; returns the keys left in place on purpose (objects
        the agent did not create, volumes not asked for) or not deleted yet."""
        by_key = {e.key: e for e in entries}
        kept: set[ObjKey] = set()
        for key in prune_sorted((e.key, e.stage) for e in entries):
            entry = by_key[key]
            if key.kind == "Namespace" and key.group == "" and not entry.created:
                kept.add(key)  # the agent did not create it: never deleted
                continue
            if key.kind == "PersistentVolumeClaim" and key.group == "" and not prune_volumes:
                kept.add(key)
                continue
            try:
                res = await self.mapper.resource({"apiVersion": entry.api_version,
                                                  "kind": entry.kind})
            except NotServed:
                continue  # its CRD is gone, and the object with it
            try:
                await self.kube.delete(res, entry.name, entry.namespace or None, uid=entry.uid
                                       or None)
                self.writes += 1
            except Conflict:
                log.info("not pruning %s: it was re-created by someone else (uid differs)", key)
            except NotFound:
                pass
        return kept

    async def _remove(self, inv: Inventory) -> None:
        """The add-on left the profile: its pre-delete hooks, then every object it applied."""
        bundle = self.store.load(BundleRef(digest=inv.last_good_digest, size=inv.last_good_size,
                                           objects=inv.last_good_objects)) if (
            inv.last_good_digest) else None
        stub = Addon(name=inv.addon, version=inv.version or "-",
                     bundle=BundleRef(digest=inv.digest or "sha256:" + "0" * 64, size=1,
                                      objects=0))
        if bundle is not None and "pre-delete" not in inv.hooks_done:
            await self._hooks(stub, bundle, "pre-delete")
            inv = await self._save(inv.model_copy(update={
                "hooks_done": (*inv.hooks_done, "pre-delete")}))
        await self._prune(inv.prune_volumes, list(inv.entries))
        self.inventory.pop(inv.addon, None)
        await self.inventories.remove(inv.addon)
        log.info("add-on %s removed (%d objects pruned)", inv.addon, len(inv.entries),
                 extra={"addon": inv.addon})

    # -- status --------------------------------------------------------------------------------
    def report(self) -> tuple[AddonStatus, ...]:
        return tuple(self.status[n] for n in sorted(self.status))

    def retained_digests(self) -> set[str]:
        """Bundles the store must keep: what the spec names and each last good version."""
        keep = {a.bundle.digest for a in self._addons().values()}
        keep |= {i.last_good_digest for i in self.inventory.values() if i.last_good_digest}
        return keep


def _run_once(obj: Mapping[str, Any]) -> bool:
    """A Job that removes itself once finished (ttlSecondsAfterFinished): a run, not a state."""
    return (obj.get("kind") == "Job" and str(obj.get("apiVersion", "")).startswith("batch/")
            and (obj.get("spec") or {}).get("ttlSecondsAfterFinished") is not None)


def _empty_ca(obj: Mapping[str, Any], path: str) -> bool:
    """The rendered object leaves this caBundle empty (someone injects it): never apply it."""
    if path.startswith("webhooks"):
        return any(not ((w or {}).get("clientConfig") or {}).get("caBundle")
                   for w in obj.get("webhooks") or ())
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return not node

