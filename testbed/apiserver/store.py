"""Versioned object storage with an event history, the part etcd and the watch cache play.

Every write takes the next value of one server-wide resourceVersion counter, as etcd's revision
does, and is appended to a bounded history. A watch resumes from that history; a resourceVersion
older than what the history still holds answers 410 Gone, exactly the case clients must handle.
"""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .selectors import FieldSelector, LabelSelector

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace or "", name)


@dataclass(frozen=True)
class Event:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    rkey: str  # resource type key (plural.group)
    obj: Obj
    old: Obj | None


@dataclass
class WatchFilter:
    rkey: str
    namespace: str | None
    labels: LabelSelector = field(default_factory=LabelSelector)
    fields: FieldSelector = field(default_factory=FieldSelector)

    def matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace", "") != self.namespace:
            return False
        return self.labels.matches(meta.get("labels")) and self.fields.matches(obj)


class Watcher:
    """One open watch: a filter and a queue the store feeds; `None` in the queue ends the stream."""

    def __init__(self, flt: WatchFilter, max_pending: int = 100_000, after: int = 0) -> None:
        self.filter = flt
        self.after = after  # events at or before this resourceVersion are not this watch's
        self.queue: asyncio.Queue[tuple[str, Obj] | None] = asyncio.Queue()
        self.closed = False
        self._max_pending = max_pending

    def offer(self, ev: Event) -> None:
        if self.closed or ev.rkey != self.filter.rkey or ev.rv <= self.after:
            return
        now = self.filter.matches(ev.obj)
        before = self.filter.matches(ev.old) if ev.type == "MODIFIED" else now
        # Selector transitions are reported as the watcher sees them, as a real server does.
        if ev.type == "MODIFIED" and before != now:
            etype = "ADDED" if now else "DELETED"
        elif now or before:
            etype = ev.type
        else:
            return
        if self.queue.qsize() >= self._max_pending:
            self.close()  # a consumer this far behind is cut off, and must relist
            return
        self.queue.put_nowait((etype, ev.obj))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)


class TooOld(Exception):
    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


class Store:
    def __init__(self, history: int = 20_000) -> None:
        self.rv = 0
        self._objects: dict[str, dict[Key, Obj]] = {}
        self._by_uid: dict[str, tuple[str, Key]] = {}
        self._history: deque[Event] = deque()
        self._history_max = history
        self._floor = 0  # events with rv <= floor are no longer held
        self._watchers: set[Watcher] = set()
        self._listeners: list[Callable[[Event], None]] = []

    # -- reads -----------------------------------------------------------------------------
    def get(self, rkey: str, key: Key) -> Obj | None:
        obj = self._objects.get(rkey, {}).get(key)
        return copy.deepcopy(obj) if obj is not None else None

    def peek(self, rkey: str, key: Key) -> Obj | None:
        """The stored object itself, for read-only checks on hot paths; never mutate it."""
        return self._objects.get(rkey, {}).get(key)

    def items(self, rkey: str, namespace: str | None = None) -> Iterator[Obj]:
        """Stored objects in key order (what list pagination relies on); read-only."""
        bucket = self._objects.get(rkey, {})
        for k in sorted(bucket):
            if namespace is None or k[0] == namespace:
                yield bucket[k]

    def items_at(self, rkey: str, rv: int, namespace: str | None = None) -> list[Obj]:
        """The objects as they were at resourceVersion `rv` (an etcd read at a revision), in key
        order; raises TooOld when the history no longer reaches back that far."""
        if rv >= self.rv:
            return list(self.items(rkey, namespace))
        if rv < self._floor:
            raise TooOld(rv, self._floor + 1)
        state: dict[Key, Obj] = dict(self._objects.get(rkey, {}))
        for ev in reversed(self._history):
            if ev.rv <= rv:
                break
            if ev.rkey != rkey:
                continue
            meta = ev.obj["metadata"]
            key = (meta.get("namespace", ""), meta["name"])
            if ev.type == "ADDED" or ev.old is None:
                state.pop(key, None)
            else:
                state[key] = ev.old
        return [state[k] for k in sorted(state) if namespace is None or k[0] == namespace]

    def all_items(self) -> Iterator[tuple[str, Obj]]:
        for rkey, bucket in list(self._objects.items()):
            for obj in list(bucket.values()):
                yield rkey, obj

    def by_uid(self, uid: str) -> tuple[str, Obj] | None:
        hit = self._by_uid.get(uid)
        if hit is None:
            return None
        obj = self._objects.get(hit[0], {}).get(hit[1])
        return (hit[0], obj) if obj is not None else None

    def count(self, rkey: str) -> int:
        return len(self._objects.get(rkey, {}))

    # -- writes ----------------------------------------------------------------------------
    def next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def put(self, rkey: str, obj: Obj, etype: str, old: Obj | None) -> Obj:
        """Store `obj` (its metadata.resourceVersion already set by the caller) and emit."""
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        self._objects.setdefault(rkey, {})[key] = obj
        self._by_uid[meta["uid"]] = (rkey, key)
        self._emit(Event(int(meta["resourceVersion"]), etype, rkey, obj, old))
        return obj

    def remove(self, rkey: str, obj: Obj) -> Obj:
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        old = self._objects.get(rkey, {}).pop(key, None)
        self._by_uid.pop(meta["uid"], None)
        final = copy.deepcopy(obj)
        final["metadata"]["resourceVersion"] = str(self.next_rv())
        self._emit(Event(self.rv, "DELETED", rkey, final, old))
        return final

    def drop_type(self, rkey: str) -> list[Obj]:
        """Delete every object of a type (its CRD went away), emitting DELETED for each."""
        return [self.remove(rkey, obj) for obj in list(self._objects.get(rkey, {}).values())]

    def _emit(self, ev: Event) -> None:
        self._history.append(ev)
        while len(self._history) > self._history_max:
            self._floor = self._history.popleft().rv
        for w in list(self._watchers):
            w.offer(ev)
        for listener in self._listeners:
            listener(ev)

    # -- watch -----------------------------------------------------------------------------
    def subscribe(self, listener: Callable[[Event], None]) -> None:
        self._listeners.append(listener)

    def watch(self, flt: WatchFilter, since: int | None) -> tuple[Watcher, list[Event]]:
        """Open a watch; returns the watcher and the held events after `since` to replay first."""
        if since is not None and since < self._floor:
            raise TooOld(since, self._floor + 1)
        backlog = [] if since is None else [e for e in self._history if e.rv > since]
        # A watch from a resourceVersion not reached yet waits for it: nothing up to it is sent.
        w = Watcher(flt, after=since or 0)
        self._watchers.add(w)
        return w, backlog

    def unwatch(self, w: Watcher) -> None:
        self._watchers.discard(w)
        w.close()

    def close_watches(self, rkey: str | None = None) -> int:
        """Cut open watches (fault injection, server stop). Returns how many were cut."""
        cut = [w for w in self._watchers if rkey is None or w.filter.rkey == rkey]
        for w in cut:
            self.unwatch(w)
        return len(cut)

    def compact(self) -> None:
        """Forget the whole event history: what a watch cache does once its window moved past
        (a fault knob; an etcd compaction alone does not do it, see ApiServer.compact). Watches
        from and exact lists at an older resourceVersion then answer 410."""
        if self._history:
            self._floor = self._history[-1].rv
        self._history.clear()

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)
