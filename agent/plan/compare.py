"""Has the agent already applied exactly what it would apply now? Zero writes when it has.

Server-side apply treats each apply as the manager's whole intent: a field the manager applied
before and omits now is removed. So "does the live object cover the desired fields" is the wrong
question (a revoked SSH key is covered by a live object that still carries it). The right one reads
the agent's own managedFields entry: skip the write only when the set of fields the agent owns is
the set it would apply, and every one of them already has the desired value.

Field paths use the fieldsV1 element syntax, as managedFields store them: `f:<name>`,
`k:<json key>` (an item of a keyed list), `v:<json value>` (an item of a set), `i:<n>`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .types import Obj

Path = tuple[str, ...]
Names = tuple[str, ...]  # a schema path: field names from the root, list items skipped

# Metadata the API server owns: never in anyone's field set, ignored in an apply body.
_SERVER_METADATA = frozenset({
    "name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
    "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink",
    "clusterName"})


@dataclass(frozen=True)
class ListType:
    kind: Literal["atomic", "map", "set"] = "atomic"
    keys: tuple[str, ...] = ()


ATOMIC = ListType()


@dataclass(frozen=True)
class Schema:
    """The merge semantics of the fields an apply body sets, as the CRD declares them.

    Lists are atomic unless listed, as the API server treats CRD lists without
    x-kubernetes-list-type; maps are granular unless named atomic (x-kubernetes-map-type)."""

    lists: Mapping[Names, ListType] = field(default_factory=dict)
    atomic_maps: frozenset[Names] = frozenset()


# What the CAPI v1beta2 CRDs say about the fields the agent applies to objects it keeps
# updating (a unit test holds these against the CRDs). The only lists are the atomic `users`
# and `sshAuthorizedKeys`, so comparing them whole is exactly the server's own granularity.
CAPI_SCHEMAS: Mapping[str, Schema] = {
    "KubeadmControlPlane": Schema(lists={
        ("spec", "kubeadmConfigSpec", "users"): ATOMIC,
        ("spec", "kubeadmConfigSpec", "users", "sshAuthorizedKeys"): ATOMIC}),
    "MachineDeployment": Schema(atomic_maps=frozenset({("spec", "selector")})),
}


def _canon(value: Any) -> str:
    """JSON with sorted keys and integral floats as integers: equal values, equal text."""
    def norm(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list):
            return [norm(x) for x in v]
        return v
    return json.dumps(norm(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def same(a: Any, b: Any) -> bool:
    """Value equality as JSON sees it (so True is not 1, and 2.0 is 2)."""
    return _canon(a) == _canon(b)


def _canonical_element(element: str) -> str:
    if element[:2] in ("k:", "v:"):
        try:
            return element[:2] + _canon(json.loads(element[2:]))
        except ValueError:
            return element
    return element


# -- managedFields --------------------------------------------------------------------------
def managed_entries(obj: Obj | None) -> list[Obj]:
    entries = ((obj or {}).get("metadata") or {}).get("managedFields") or []
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def is_entry(entry: Mapping[str, Any], manager: str, operation: str = "Apply") -> bool:
    return (entry.get("manager") == manager and entry.get("operation") == operation
            and not entry.get("subresource"))


def decode_fields(fields_v1: Any) -> set[Path]:
    """The paths a fieldsV1 object owns: its leaves, and inner nodes marked with ".".
    Malformed parts own nothing (the caller then sees a difference and applies)."""
    out: set[Path] = set()

    def walk(node: Mapping[str, Any], prefix: Path) -> None:
        for raw, child in node.items():
            if raw == "." or not isinstance(child, Mapping):
                continue
            path = (*prefix, _canonical_element(str(raw)))
            if not child or "." in child:
                out.add(path)
            walk(child, path)

    if isinstance(fields_v1, Mapping):
        walk(fields_v1, ())
    return out


def encode_fields(paths: Iterable[Path]) -> Obj:
    """The fieldsV1 object owning exactly `paths` (inner members get the "." marker)."""
    root: Obj = {}
    members = set(paths)
    for path in sorted(members):
        node = root
        for element in path:
            node = node.setdefault(element, {})
    def mark(node: Obj, prefix: Path) -> None:
        for key, child in node.items():
            path = (*prefix, key)
            if child and path in members:
                child["."] = {}
            mark(child, path)
    mark(root, ())
    return root


def owned_fields(obj: Obj | None, manager: str, operation: str = "Apply") -> set[Path] | None:
    """The fields `manager` owns through `operation`, or None when it has no entry."""
    for entry in managed_entries(obj):
        if is_entry(entry, manager, operation):
            return decode_fields(entry.get("fieldsV1"))
    return None


# -- apply bodies ---------------------------------------------------------------------------
class _Item:
    """Marks a keyed-list item: its existence is checked, its fields one by one."""


_ITEM = _Item()


def applied_fields(body: Obj, schema: Schema = Schema()) -> dict[Path, Any]:
    """Path -> value of every field a server-side apply of `body` would own, as the API server
    records them: leaves, empty maps, atomic lists and maps whole, keyed-list items and their
    fields, set items. apiVersion, kind and server-owned metadata are never owned."""
    out: dict[Path, Any] = {}

    def walk(value: Any, path: Path, names: Names) -> None:
        if value is None:
            return
        if isinstance(value, dict) and value and names not in schema.atomic_maps:
            for key, child in value.items():
                walk(child, (*path, "f:" + key), (*names, key))
            return
        if isinstance(value, list) and value:
            lt = schema.lists.get(names, ATOMIC)
            if lt.kind == "set":
                for item in value:
                    out[(*path, "v:" + _canon(item))] = item
                return
            if lt.kind == "map":
                for item in value:
                    key = {k: item[k] for k in lt.keys if isinstance(item, dict) and k in item}
                    item_path = (*path, "k:" + _canon(key))
                    out[item_path] = _ITEM
                    for k, child in (item.items() if isinstance(item, dict) else ()):
                        walk(child, (*item_path, "f:" + k), (*names, k))
                return
        out[path] = value

    for key, value in body.items():
        if key in ("apiVersion", "kind", "status"):
            continue
        if key == "metadata" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in _SERVER_METADATA}
            if not value:
                continue
        walk(value, ("f:" + key,), (key,))
    return out


_MISSING = object()


def locate(obj: Any, path: Path) -> Any:
    """The value at a fieldsV1 path in an object, or a sentinel when absent."""
    node = obj
    for element in path:
        kind, rest = element[:2], element[2:]
        if kind == "f:":
            if not isinstance(node, dict) or rest not in node:
                return _MISSING
            node = node[rest]
        elif not isinstance(node, list):
            return _MISSING
        elif kind == "i:":
            try:
                node = node[int(rest)]
            except (ValueError, IndexError):
                return _MISSING
        else:
            try:
                want = json.loads(rest)
            except ValueError:
                return _MISSING
            match = [i for i in node if (same(i, want) if kind == "v:" else isinstance(i, dict)
                     and isinstance(want, dict)
                     and all(k in i and same(i[k], v) for k, v in want.items()))]
            if len(match) != 1:
                return _MISSING
            node = match[0]
    return node


def up_to_date(live: Obj, body: Obj, manager: str, schema: Schema = Schema()) -> bool:
    """True when applying `body` as `manager` would change nothing: the manager's Apply entry
    (at the body's apiVersion) owns exactly the fields `body` sets, and each has its value."""
    entry = next((e for e in managed_entries(live) if is_entry(e, manager)), None)
    if entry is None or entry.get("apiVersion") != body.get("apiVersion"):
        return False
    want = applied_fields(body, schema)
    if decode_fields(entry.get("fieldsV1")) != set(want):
        return False
    for path, value in want.items():
        got = locate(live, path)
        if got is _MISSING or (value is not _ITEM and not same(got, value)):
            return False
    return True


def render(path: Path) -> str:
    """A field path for people: `spec.kubeadmConfigSpec.users`, items in brackets."""
    out = ""
    for element in path:
        out += ("." + element[2:]) if element[:2] == "f:" else f"[{element[2:]}]"
    return out.lstrip(".")
