"""The one seam to Kubernetes: a small async client protocol the rest of the agent depends on."""

from __future__ import annotations

import builtins
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Obj = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    """A served resource type: enough to build its URL without discovery."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


@dataclass(frozen=True)
class ObjectList:
    items: list[Obj]
    resource_version: str


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]
    object: Obj

    @property
    def resource_version(self) -> str:
        return str(self.object.get("metadata", {}).get("resourceVersion", ""))


Propagation = Literal["Background", "Foreground", "Orphan"]


class KubeClient(Protocol):
    async def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj: ...

    async def list(self, res: Resource, namespace: str | None = None, *,
                   label_selector: str | None = None) -> ObjectList: ...

    def watch(self, res: Resource, namespace: str | None = None, *,
              label_selector: str | None = None, resource_version: str | None = None,
              timeout_seconds: int = 300) -> AsyncGenerator[WatchEvent, None]:
        """Events after `resource_version`; ends when the server ends the stream; raises Gone."""
        ...

    async def resources(self, api_version: str) -> builtins.list[Resource]:
        """Discovery: the resource types `api_version` serves; NotFound when it serves none."""
        ...

    async def create(self, res: Resource, obj: Obj) -> Obj: ...

    async def apply(self, res: Resource, obj: Obj, *, field_manager: str,
                    force: bool = False) -> Obj:
        """Server-side apply of `obj` (which names itself) as `field_manager`."""
        ...

    async def patch(self, res: Resource, name: str, patch: Mapping[str, Any],
                    namespace: str | None = None, *, field_manager: str) -> Obj:
        """JSON merge patch."""
        ...

    async def patch_status(self, res: Resource, name: str, patch: Mapping[str, Any],
                           namespace: str | None = None, *, field_manager: str) -> Obj: ...

    async def replace(self, res: Resource, obj: Obj, *, field_manager: str) -> Obj: ...

    async def replace_status(self, res: Resource, obj: Obj, *, field_manager: str) -> Obj:
        """PUT of the status subresource, compare-and-set on metadata.resourceVersion."""
        ...

    async def delete(self, res: Resource, name: str, namespace: str | None = None, *,
                     propagation: Propagation = "Background",
                     uid: str | None = None) -> None:
        """Delete (NotFound is not an error: the goal is reached); `uid` is a precondition."""
        ...
