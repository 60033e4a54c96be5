"""Kubernetes Events on the resources the gateway works, so `kubectl describe` and
`kubectl get events` tell what happened and when. Best effort: an Event that cannot be
recorded is logged at debug level and never fails the work it describes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

from agent.kube import KubeClient, KubeError, Obj
from agent.kube import resources as r

log = logging.getLogger("outpost.gateway.events")


def _now() -> datetime:
    return datetime.now(UTC)


class EventRecorder:
    def __init__(self, kube: KubeClient, component: str = "outpost-gateway", *,
                 clock: Callable[[], datetime] = _now) -> None:
        self.kube = kube
        self.component = component
        self.clock = clock
        self.recorded = 0

    async def record(self, obj: Obj, reason: str, message: str,
                     type_: Literal["Normal", "Warning"] = "Normal") -> None:
        meta = obj["metadata"]
        stamp = self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1", "kind": "Event",
            # client-go names events <object>.<unix nanoseconds in hex>
            "metadata": {"name": f"{meta['name']}.{time.time_ns():x}",
                         "namespace": meta.get("namespace") or "default"},
            "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                               "name": meta["name"], "namespace": meta.get("namespace"),
                               "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": self.component}, "reportingComponent": self.component,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1}
        try:
            await self.kube.create(r.EVENT, body)
            self.recorded += 1
        except KubeError as e:
            log.debug("could not record Event %s on %s/%s: %s", reason, meta.get("namespace"),
                      meta["name"], e)
