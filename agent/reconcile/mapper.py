"""Kind to resource, from discovery (a RESTMapper): the agent applies add-ons whose kinds it
cannot know in advance, including custom resources whose CRD the same add-on just created."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from agent.kube import KubeClient, NotFound, Resource

log = logging.getLogger(__name__)


class NotServed(Exception):
    """The API server does not serve this kind (yet: a CRD not Established, a typo)."""


class RestMapper:
    def __init__(self, kube: KubeClient, *, refresh_after: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.refresh_after = refresh_after
        self.clock = clock
        self._kinds: dict[str, dict[str, Resource]] = {}  # apiVersion -> kind -> resource
        self._read_at: dict[str, float] = {}

    async def resource(self, obj: Mapping[str, Any]) -> Resource:
        api_version, kind = str(obj.get("apiVersion", "")), str(obj.get("kind", ""))
        found = self._kinds.get(api_version, {}).get(kind)
        if found is not None:
            return found
        # Unknown: read discovery again, but not more often than refresh_after per version
        # (a pass waiting for a CRD must not hammer the API).
        if self.clock() - self._read_at.get(api_version, -1e9) >= self.refresh_after:
            self._read_at[api_version] = self.clock()
            try:
                served = await self.kube.resources(api_version)
            except NotFound:
                served = []
            self._kinds[api_version] = {res.kind: res for res in served}
            found = self._kinds[api_version].get(kind)
        if found is None:
            raise NotServed(f"the API server does not serve {kind} in {api_version} (yet)")
        return found
