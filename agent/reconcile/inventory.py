"""What each add-on applied, kept on disk and in the cluster (a ConfigMap per add-on).

Pruning deletes only what is here: objects the agent applied for the add-on, matched by uid, so
it never touches an object the agent did not create, nor a successor someone made under the same
name. A Namespace is pruned only if the agent created it. The disk copy is the one the agent
trusts (it survives an API server that lost its data); the ConfigMap lets people on site see it
(`kubectl get configmap -n <agent namespace> -l outpost.io/inventory`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path

from pydantic import Field, ValidationError

from agent.intake.durable import write_atomic
from agent.kube import KubeClient, KubeError, NotFound
from agent.kube import resources as r
from agent.plan.addons import ObjKey
from agent.spec.base import Model

log = logging.getLogger(__name__)

FIELD_MANAGER = "outpost-agent"
INVENTORY_LABEL = "outpost.io/inventory"


class Entry(Model):
    api_version: str
    kind: str
    namespace: str = ""
    name: str
    uid: str = ""
    stage: int = 0
    created: bool = Field(default=False, description="the agent created it (it did not exist)")
    body: str = Field(default="", description="digest of the body the agent applied last")
    fields: str = Field(default="", description="digest of the agent's managedFields entry "
                                                "right after that apply")

    @property
    def key(self) -> ObjKey:
        return ObjKey(self.api_version.rpartition("/")[0], self.kind, self.namespace, self.name)


class Inventory(Model):
    addon: str
    version: str = ""
    digest: str = Field(default="", description="the bundle the entries belong to")
    revision: int = Field(default=0, description="the spec revision that brought it")
    entries: tuple[Entry, ...] = ()
    hooks_done: tuple[str, ...] = Field(
        default=(), description="hook phases already run for this digest")
    upgrade: bool = Field(default=False, description="this digest replaces an installed one "
                                                     "(its hooks are the upgrade ones)")
    ready: bool = Field(default=False, description="the digest became healthy")
    attempt_started: float = Field(
        default=0.0, description="wall-clock time the agent began applying this digest, so its "
                                 "timeout keeps counting across agent restarts")
    last_good_version: str = ""
    last_good_digest: str = ""
    last_good_size: int = 0
    last_good_objects: int = 0
    prune_volumes: bool = Field(default=False, description="the add-on's pruneVolumes, kept "
                                "for when it leaves the profile")
    failed_digest: str = Field(default="", description="a version that failed its health; "
                                                       "not retried until the spec changes it")

    def by_key(self) -> dict[ObjKey, Entry]:
        return {e.key: e for e in self.entries}


class InventoryStore:
    """Inventories on disk (trusted) and mirrored into ConfigMaps (for people on site)."""

    def __init__(self, directory: Path, kube: KubeClient, namespace: str) -> None:
        self.directory = Path(directory)
        self.kube = kube
        self.namespace = namespace
        self._mirrored: dict[str, str] = {}  # add-on -> the JSON last written to its ConfigMap

    def _path(self, addon: str) -> Path:
        return self.directory / f"{addon}.json"

    def load_all(self) -> dict[str, Inventory]:
        out: dict[str, Inventory] = {}
        if not self.directory.is_dir():
            return out
        for path in sorted(self.directory.glob("*.json")):
            try:
                inv = Inventory.model_validate_json(path.read_bytes())
            except (OSError, ValidationError) as e:
                log.error("add-on inventory %s is unreadable (%s); ignoring it: its objects "
                          "are re-adopted when the add-on is applied again", path, e)
                continue
            out[inv.addon] = inv
        return out

    async def save(self, inv: Inventory) -> None:
        data = inv.model_dump_json(by_alias=True).encode()
        await asyncio.to_thread(write_atomic, self._path(inv.addon), data)
        await self._mirror(inv.addon, data.decode())

    async def remove(self, addon: str) -> None:
        await asyncio.to_thread(self._path(addon).unlink, True)
        self._mirrored.pop(addon, None)
        with contextlib.suppress(KubeError):
            await self.kube.delete(r.CONFIG_MAP, _cm_name(addon), self.namespace)

    async def _mirror(self, addon: str, text: str) -> None:
        """Best effort: the disk copy is the one that counts."""
        if self._mirrored.get(addon) == text:
            return
        try:
            await self.kube.apply(r.CONFIG_MAP, {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": _cm_name(addon), "namespace": self.namespace,
                             "labels": {INVENTORY_LABEL: addon}},
                "data": {"inventory.json": json.dumps(json.loads(text), indent=1)}},
                field_manager=FIELD_MANAGER, force=True)
            self._mirrored[addon] = text
        except NotFound:
            log.debug("namespace %s missing: the inventory of %s stays on disk only",
                      self.namespace, addon)
        except KubeError as e:
            log.warning("cannot mirror the inventory of add-on %s into the cluster: %s",
                        addon, e)


def _cm_name(addon: str) -> str:
    return f"outpost-addon-{addon}"
