"""managedFields bookkeeping and server-side apply, as the apiserver's field manager does it.

Clients (kubectl ``--server-side``, controllers using apply) rely on field ownership:
re-applying a config drops the fields it no longer mentions, changing a field someone
else set is a 409 conflict unless forced, and ``metadata.managedFields`` reads like a
real cluster's. This module reproduces those semantics (structured-merge-diff's) on
plain JSON dicts; it is pure and never mutates its inputs.

Field paths use the fieldsV1 element syntax: ``f:<field>``, ``k:<json key>`` for items of
keyed lists, ``v:<json value>`` for items of sets and ``i:<n>`` for positional items.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from testbed.apiserver.errors import ApiError
from testbed.apiserver.patch import (
    ITEM,
    ListSchema,
    ListType,
    PatchError,
    SchemaPath,
)

__all__ = [
    "ApplyConflict",
    "FieldPath",
    "ManagedFieldsError",
    "fieldset",
    "from_fields_v1",
    "managed_fields_for_update",
    "record_update",
    "render_path",
    "server_side_apply",
    "to_fields_v1",
]

FieldPath = tuple[str, ...]

# Metadata the server owns: never tracked, and ignored when it appears in an apply config.
_SERVER_OWNED_METADATA: Final = frozenset(
    {
        "clusterName",
        "creationTimestamp",
        "deletionGracePeriodSeconds",
        "deletionTimestamp",
        "generation",
        "managedFields",
        "name",
        "namespace",
        "resourceVersion",
        "selfLink",
        "uid",
    }
)
_IDENTITY_METADATA: Final = frozenset({"name", "namespace"})
_UNTRACKED_TOP_LEVEL: Final = frozenset({"apiVersion", "kind"})
_MAX_UPDATE_MANAGERS: Final = 10
_ANCIENT_CHANGES: Final = "ancient-changes"
_BEFORE_FIRST_APPLY: Final = "before-first-apply"


class ManagedFieldsError(ValueError):
    """``metadata.managedFields`` that the apiserver would refuse to decode."""


class _Absent:
    """A field that does not exist (distinct from a JSON ``null``)."""


_ABSENT: Final = _Absent()
_DUPLICATE: Final = object()


# --------------------------------------------------------------------------------------
# Path elements
# --------------------------------------------------------------------------------------


def _integral(value: Any) -> Any:
    """Go encodes integral float64 values without a fraction; mirror that in keys."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def _go_json(value: Any) -> str:
    """Compact JSON the way Go's encoder writes it (sorted keys, HTML-safe escapes)."""
    text = json.dumps(_integral(value), ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return text


def _key_fields(item: Mapping[str, Any], list_type: ListType) -> dict[str, Any]:
    defaults = dict(list_type.key_defaults)
    key: dict[str, Any] = {}
    for name in list_type.keys:
        if name in item:
            key[name] = item[name]
        elif name in defaults:
            key[name] = defaults[name]
    return key


def _item_element(item: Any, list_type: ListType, index: int) -> str:
    """The fieldsV1 element naming one item of a non-atomic list."""
    if list_type.kind == "map":
        if isinstance(item, Mapping):
            key = _key_fields(item, list_type)
            if key:
                return "k:" + _go_json(key)
        return f"i:{index}"
    return "v:" + _go_json(item)


def _schema_path(path: FieldPath) -> SchemaPath:
    return tuple(element[2:] if element.startswith("f:") else ITEM for element in path)


def _canonical_element(element: str) -> str:
    """Re-encode ``k:``/``v:`` elements so that equal keys compare equal as strings."""
    if element[:2] in ("k:", "v:"):
        try:
            return element[:2] + _go_json(json.loads(element[2:]))
        except ValueError:
            return element
    return element


def _go_string(value: Any) -> str:
    """Render a key value like structured-merge-diff's ``value.ToString``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return str(_integral(value))
    if isinstance(value, list):
        return "[" + ",".join(_go_string(v) for v in value) + "]"
    if isinstance(value, dict):
        return "".join(f"{k}={_go_string(v)}" for k, v in value.items())
    return str(value)


def _render_element(element: str) -> str:
    kind, body = element[:2], element[2:]
    if kind == "f:":
        return "." + body
    if kind == "i:":
        return f"[{body}]"
    try:
        decoded = json.loads(body)
    except ValueError:
        return f"[{body}]"
    if kind == "k:" and isinstance(decoded, dict):
        return "[" + ",".join(f"{k}={_go_string(v)}" for k, v in sorted(decoded.items())) + "]"
    return f"[={_go_string(decoded)}]"


def render_path(path: FieldPath) -> str:
    """A field path as the apiserver prints it, e.g. ``.spec.containers[name="app"].image``."""
    return "".join(_render_element(element) for element in path)


_ELEMENT_RANK: Final = {"f": 0, "k": 1, "v": 2, "i": 3}


def _element_order(element: str) -> tuple[int, int, str]:
    rank = _ELEMENT_RANK.get(element[:1], 4)
    if rank == 3:
        try:
            return rank, int(element[2:]), ""
        except ValueError:
            pass
    return rank, 0, element


# --------------------------------------------------------------------------------------
# fieldsV1
# --------------------------------------------------------------------------------------


class _Trie:
    """A set of field paths as a tree: each node knows whether it is itself a member."""

    __slots__ = ("children", "member")

    def __init__(self) -> None:
        self.member = False
        self.children: dict[str, _Trie] = {}

    @classmethod
    def of(cls, paths: Iterable[FieldPath]) -> _Trie:
        root = cls()
        for path in paths:
            node = root
            for element in path:
                node = node.children.setdefault(element, cls())
            if path:
                node.member = True
        return root

    def ordered(self, prefix: FieldPath = ()) -> list[FieldPath]:
        """Members in the apiserver's iteration order: a node's members, then subtrees."""
        keys = sorted(self.children, key=_element_order)
        out = [(*prefix, k) for k in keys if self.children[k].member]
        for key in keys:
            out.extend(self.children[key].ordered((*prefix, key)))
        return out


def to_fields_v1(paths: Iterable[FieldPath]) -> dict[str, Any]:
    """Encode a set of paths as the nested ``fieldsV1`` object stored in managedFields.

    A path that is both owned itself and has owned children gets the ``".": {}`` marker.
    """

    def encode(node: _Trie) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if node.member and node.children:
            out["."] = {}
        for key in sorted(node.children, key=_element_order):
            out[key] = encode(node.children[key])
        return out

    return encode(_Trie.of(paths))


def from_fields_v1(fields: Mapping[str, Any]) -> set[FieldPath]:
    """Decode a ``fieldsV1`` object into the set of paths it owns."""
    if not isinstance(fields, Mapping):
        raise ManagedFieldsError("fieldsV1 must be an object")
    out: set[FieldPath] = set()

    def walk(node: Mapping[str, Any], prefix: FieldPath) -> None:
        for raw, child in node.items():
            if raw == ".":
                continue
            if not isinstance(child, Mapping):
                raise ManagedFieldsError(f"fieldsV1 entry {raw!r} is not an object")
            if len(raw) < 2 or raw[1] != ":" or raw[0] not in _ELEMENT_RANK:
                raise ManagedFieldsError(f"unknown path element {raw!r}")
            path = (*prefix, _canonical_element(raw))
            if not child or "." in child:
                out.add(path)
            walk(child, path)

    walk(fields, ())
    return out


# --------------------------------------------------------------------------------------
# Walking objects
# --------------------------------------------------------------------------------------

_TopLevelFilter = Callable[[str], bool]


def _top_level_filter(subresource: str | None, status_subresource: bool) -> _TopLevelFilter:
    """Which top-level fields a write may own: status belongs to the status subresource."""
    if not status_subresource:
        return lambda key: True
    if not subresource:
        return lambda key: key != "status"
    if subresource == "status":
        return lambda key: key == "status"
    return lambda key: True


def _trackable(obj: Mapping[str, Any], keep: _TopLevelFilter) -> dict[str, Any]:
    """The part of an object whose fields can be owned (no server-owned metadata)."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if key in _UNTRACKED_TOP_LEVEL or not keep(key):
            continue
        if key == "metadata" and isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k not in _SERVER_OWNED_METADATA}
            if not value:
                continue
        out[key] = value
    return out


def _list_elements(items: list[Any], list_type: ListType) -> list[str]:
    return [_item_element(item, list_type, index) for index, item in enumerate(items)]


def _walk_paths(
    value: Any,
    path: FieldPath,
    lists: ListSchema,
    out: set[FieldPath],
    *,
    containers: bool,
) -> None:
    """Collect the paths set in ``value``: leaves and list items, plus (when
    ``containers``) the non-empty maps and lists on the way, as a compare does for added
    subtrees. Top-level maps (spec, status) never count: typed objects always have them."""
    spath = _schema_path(path)
    if isinstance(value, dict) and value and not lists.is_atomic_map(spath):
        if containers and len(path) > 1:
            out.add(path)
        for key, child in value.items():
            _walk_paths(child, (*path, "f:" + key), lists, out, containers=containers)
        return
    if isinstance(value, list) and value:
        list_type = lists.list_type(spath)
        if list_type.kind != "atomic":
            if containers and path:
                out.add(path)
            elements = _list_elements(value, list_type)
            counts: dict[str, int] = {}
            for element in elements:
                counts[element] = counts.get(element, 0) + 1
            for element, item in zip(elements, value, strict=True):
                item_path = (*path, element)
                out.add(item_path)
                if counts[element] == 1 and isinstance(item, dict):
                    for key, child in item.items():
                        _walk_paths(
                            child, (*item_path, "f:" + key), lists, out, containers=containers
                        )
            return
    if path:
        out.add(path)


def fieldset(
    obj: Mapping[str, Any], lists: ListSchema, *, include_status: bool = False
) -> set[FieldPath]:
    """The paths an object sets: leaves, atomic lists/maps, empty maps and list items.

    apiVersion/kind and server-owned metadata (name, uid, resourceVersion, ...) are
    never included; ``status`` only when ``include_status``.
    """
    return _fields_of(_trackable(obj, lambda key: include_status or key != "status"), lists)


def _fields_of(view: Mapping[str, Any], lists: ListSchema) -> set[FieldPath]:
    out: set[FieldPath] = set()
    _walk_paths(dict(view), (), lists, out, containers=False)
    return _ownable(out)


@dataclass
class _Diff:
    added: set[FieldPath]
    modified: set[FieldPath]
    removed: set[FieldPath]


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "map"
    if isinstance(value, list):
        return "list"
    return "scalar"


def _json_equal(a: Any, b: Any) -> bool:
    return _go_json(a) == _go_json(b)


def _group_items(items: list[Any], list_type: ListType) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = {}
    for element, item in zip(_list_elements(items, list_type), items, strict=True):
        groups.setdefault(element, []).append(item)
    return groups


def _compare(lhs: Any, rhs: Any, path: FieldPath, lists: ListSchema, diff: _Diff) -> None:
    """What changed between two versions, in structured-merge-diff's terms."""
    if rhs is _ABSENT:
        if lhs is not _ABSENT:
            _walk_paths(lhs, path, lists, diff.removed, containers=True)
        return
    if lhs is _ABSENT:
        _walk_paths(rhs, path, lists, diff.added, containers=True)
        return
    spath = _schema_path(path)
    if (
        isinstance(lhs, dict)
        and isinstance(rhs, dict)
        and (lhs or rhs)
        and not lists.is_atomic_map(spath)
    ):
        for key in {**lhs, **rhs}:
            _compare(lhs.get(key, _ABSENT), rhs.get(key, _ABSENT), (*path, "f:" + key), lists, diff)
        return
    if isinstance(lhs, list) and isinstance(rhs, list) and (lhs or rhs):
        list_type = lists.list_type(spath)
        if list_type.kind != "atomic":
            left, right = _group_items(lhs, list_type), _group_items(rhs, list_type)
            for element in {**left, **right}:
                lgroup, rgroup = left.get(element, []), right.get(element, [])
                item_path = (*path, element)
                if len(lgroup) <= 1 and len(rgroup) <= 1:
                    _compare(
                        lgroup[0] if lgroup else _ABSENT,
                        rgroup[0] if rgroup else _ABSENT,
                        item_path,
                        lists,
                        diff,
                    )
                elif not _json_equal(lgroup, rgroup):
                    diff.modified.add(item_path)
            return
    if _json_equal(lhs, rhs):
        return
    if path:
        diff.modified.add(path)
    if _kind(lhs) != _kind(rhs):
        gone: set[FieldPath] = set()
        _walk_paths(lhs, path, lists, gone, containers=True)
        diff.removed |= gone - {path}
        new: set[FieldPath] = set()
        _walk_paths(rhs, path, lists, new, containers=True)
        diff.added |= new - {path}


def _diff(before: Mapping[str, Any], after: Mapping[str, Any], lists: ListSchema) -> _Diff:
    diff = _Diff(set(), set(), set())
    _compare(dict(before), dict(after), (), lists, diff)
    return diff


def _ownable(paths: Iterable[FieldPath]) -> set[FieldPath]:
    """Drop paths nobody may own (the metadata object itself, server-owned metadata)."""
    out: set[FieldPath] = set()
    for path in paths:
        if not path or path[0] in ("f:apiVersion", "f:kind") or path == ("f:metadata",):
            continue
        if path[0] == "f:metadata" and path[1][2:] in _SERVER_OWNED_METADATA:
            continue
        out.add(path)
    return out


# --------------------------------------------------------------------------------------
# managedFields entries
# --------------------------------------------------------------------------------------


@dataclass
class _Entry:
    manager: str
    operation: str
    api_version: str
    subresource: str
    time: str | None
    fields: set[FieldPath]

    def identity(self) -> str:
        """Who an entry belongs to; appliers are one manager whatever the apiVersion."""
        ident: dict[str, str] = {"manager": self.manager, "operation": self.operation}
        if self.operation != "Apply":
            ident["apiVersion"] = self.api_version
        if self.subresource:
            ident["subresource"] = self.subresource
        return json.dumps(ident, separators=(",", ":"))

    def describe(self) -> str:
        """The manager as conflict messages name it."""
        text = json.dumps(self.manager, ensure_ascii=False)
        if self.subresource:
            text += f" with subresource {json.dumps(self.subresource, ensure_ascii=False)}"
        if self.operation == "Update":
            text += f" using {self.api_version}"
        return text

    def encode(self) -> dict[str, Any]:
        out: dict[str, Any] = {"manager": self.manager, "operation": self.operation}
        out["apiVersion"] = self.api_version
        if self.time is not None:
            out["time"] = self.time
        out["fieldsType"] = "FieldsV1"
        out["fieldsV1"] = to_fields_v1(self.fields)
        if self.subresource:
            out["subresource"] = self.subresource
        return out


def _decode(managed: Iterable[Mapping[str, Any]] | None) -> list[_Entry]:
    entries: dict[str, _Entry] = {}
    for index, raw in enumerate(managed or ()):
        if not isinstance(raw, Mapping):
            raise ManagedFieldsError(f"managed fields entry {index} is not an object")
        operation = raw.get("operation")
        if operation not in ("Apply", "Update"):
            raise ManagedFieldsError("operation must be `Apply` or `Update`")
        api_version = raw.get("apiVersion")
        if not isinstance(api_version, str) or not api_version:
            raise ManagedFieldsError("apiVersion must not be empty")
        fields_type = raw.get("fieldsType")
        if not fields_type:
            raise ManagedFieldsError(f"missing fieldsType in managed fields entry {index}")
        if fields_type != "FieldsV1":
            raise ManagedFieldsError(
                f"invalid fieldsType {fields_type!r} in managed fields entry {index}"
            )
        fields = raw.get("fieldsV1")
        time = raw.get("time")
        entry = _Entry(
            manager=str(raw.get("manager") or ""),
            operation=operation,
            api_version=api_version,
            subresource=str(raw.get("subresource") or ""),
            time=time if isinstance(time, str) else None,
            fields=from_fields_v1(fields) if fields is not None else set(),
        )
        entries[entry.identity()] = entry
    return list(entries.values())


def _seconds(time: str | None) -> int:
    if not time:
        return 0
    try:
        return int(datetime.fromisoformat(time.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def _encode(entries: Iterable[_Entry]) -> list[dict[str, Any]]:
    """Drop empty entries and order them like the apiserver (Apply first, oldest first)."""
    kept = [entry for entry in entries if entry.fields]
    kept.sort(
        key=lambda e: (e.operation, _seconds(e.time), e.manager, e.api_version, e.subresource)
    )
    return [entry.encode() for entry in kept]


def _cap_update_managers(entries: list[_Entry]) -> list[_Entry]:
    """Fold the oldest Update entries into "ancient-changes" buckets beyond ten updaters."""
    updaters = [e for e in entries if e.operation == "Update" and e.fields]
    if len(updaters) <= _MAX_UPDATE_MANAGERS:
        return entries
    updaters.sort(key=lambda e: (_seconds(e.time), e.identity()))
    result = list(entries)
    first_of_version: dict[str, _Entry] = {}
    remaining = len(updaters)
    for entry in updaters:
        if remaining <= _MAX_UPDATE_MANAGERS:
            break
        version = entry.api_version
        if version not in first_of_version:
            first_of_version[version] = entry
            continue
        bucket_id = _Entry(_ANCIENT_CHANGES, "Update", version, "", None, set()).identity()
        bucket = next((e for e in result if e.identity() == bucket_id), None)
        if bucket is None:
            first = first_of_version[version]
            result.remove(first)
            bucket = _Entry(_ANCIENT_CHANGES, "Update", version, "", first.time, set(first.fields))
            result.append(bucket)
        bucket.fields |= entry.fields
        bucket.time = entry.time
        result.remove(entry)
        remaining -= 1
    return result


def managed_fields_for_update(
    live: Mapping[str, Any] | None, new: Mapping[str, Any], *, subresource: str | None = None
) -> list[dict[str, Any]]:
    """The managedFields a non-apply write starts from, as the apiserver picks them.

    Clients may rewrite managedFields in an update or patch: a valid non-empty list in
    the new object wins, an explicit ``[]`` or ``[{}]`` resets tracking (the documented
    way to clear managedFields), anything else falls back to the live object's. Writes
    to a subresource always use the live object's.
    """
    live_meta = (live or {}).get("metadata") or {}
    live_fields = list(live_meta.get("managedFields") or [])
    try:
        _decode(live_fields)
    except ManagedFieldsError:
        live_fields = []
    if subresource:
        return live_fields
    new_meta = new.get("metadata") or {}
    proposed = new_meta.get("managedFields")
    if isinstance(proposed, list):
        if not proposed or proposed == [{}]:
            return []
        try:
            _decode(proposed)
        except ManagedFieldsError:
            return live_fields
        return [dict(entry) for entry in proposed]
    return live_fields


def record_update(
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any],
    managed: list[dict[str, Any]],
    *,
    manager: str,
    api_version: str,
    subresource: str | None,
    lists: ListSchema,
    now: str,
    status_subresource: bool = True,
) -> list[dict[str, Any]]:
    """managedFields after a create, update or (non-apply) patch by ``manager``.

    Fields that were added or changed become owned by the writer's Update entry and are
    taken from everybody else; removed fields leave every set; emptied entries vanish.
    ``managed`` is what the write starts from (see :func:`managed_fields_for_update`).
    Like the apiserver, an existing object without managedFields is not tracked by
    updates (returns ``[]``) -- only creates and applies start tracking.
    ``status_subresource``: the resource has a status subresource, so main-resource
    writes never own ``status`` and ``subresource="status"`` writes own only ``status``.
    """
    try:
        entries = _decode(managed)
    except ManagedFieldsError:
        entries = []
    if old is not None and not entries:
        return []
    keep = _top_level_filter(subresource, status_subresource)
    diff = _diff(_trackable(old or {}, keep), _trackable(new, keep), lists)
    changed = diff.added | diff.modified
    touched = changed | diff.removed
    for entry in entries:
        entry.fields -= touched
    gained = _ownable(changed)
    if gained:
        mine = _Entry(manager, "Update", api_version, subresource or "", now, set())
        previous = next((e for e in entries if e.identity() == mine.identity()), None)
        if previous is None:
            entries.append(mine)
        else:
            mine = previous
            mine.time = now
        mine.fields |= gained
    return _encode(_cap_update_managers(entries))


# --------------------------------------------------------------------------------------
# Server-side apply
# --------------------------------------------------------------------------------------


class ApplyConflict(Exception):
    """Apply would change fields other managers own; the apiserver's 409 Conflict.

    ``conflicts`` lists ``(manager, rendered path)`` pairs; ``str(exc)`` is the message.
    """

    def __init__(self, conflicts: list[tuple[_Entry, FieldPath]]) -> None:
        self.conflicts: list[tuple[str, str]] = [
            (entry.manager, render_path(path)) for entry, path in conflicts
        ]
        self.causes: list[dict[str, str]] = [
            {
                "type": "FieldManagerConflict",
                "message": f"conflict with {entry.describe()}",
                "field": render_path(path),
            }
            for entry, path in conflicts
        ]
        if len(conflicts) == 1:
            entry, path = conflicts[0]
            message = (
                f"Apply failed with 1 conflict: conflict with {entry.describe()}: "
                f"{render_path(path)}"
            )
        else:
            lines: list[str] = []
            current: str | None = None
            for entry, path in conflicts:
                if entry.identity() != current:
                    current = entry.identity()
                    lines.append(f"conflicts with {entry.describe()}:")
                lines.append(f"- {render_path(path)}")
            message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
        super().__init__(message)
        self.message = message

    def to_status(self) -> dict[str, Any]:
        """The ``metav1.Status`` body of the 409 the apiserver returns."""
        return ApiError(409, "Conflict", self.message, {"causes": list(self.causes)}).status()


def _apply_error(config: Mapping[str, Any], problem: str) -> PatchError:
    meta = config.get("metadata") or {}
    api_version = str(config.get("apiVersion") or "")
    group_version = api_version if "/" in api_version else "/" + api_version
    where = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    return PatchError(
        500,
        "InternalError",
        f"failed to create typed patch object ({where}; {group_version}, "
        f"Kind={config.get('kind', '')}): {problem}",
    )


def _validate_config(
    value: Any, path: FieldPath, lists: ListSchema, config: Mapping[str, Any]
) -> None:
    """Refuse what the apiserver refuses in an apply config: keyless or duplicate items."""
    spath = _schema_path(path)
    if isinstance(value, dict):
        if lists.is_atomic_map(spath):
            return
        for key, child in value.items():
            _validate_config(child, (*path, "f:" + key), lists, config)
        return
    if not isinstance(value, list):
        return
    list_type = lists.list_type(spath)
    if list_type.kind == "atomic":
        return
    seen: set[str] = set()
    for index, item in enumerate(value):
        if list_type.kind == "map":
            missing = (
                list_type.keys
                if not isinstance(item, dict)
                else tuple(k for k in list_type.keys if k not in _key_fields(item, list_type))
            )
            if missing:
                raise _apply_error(
                    config,
                    f"{render_path(path)}: element {index}: associative list with keys has an "
                    f'element that omits key field "{missing[0]}" (and doesn\'t have default '
                    "value)",
                )
        element = _item_element(item, list_type, index)
        if element in seen:
            raise _apply_error(
                config,
                f"{render_path(path)}: duplicate entries for key {_render_element(element)}",
            )
        seen.add(element)
        if isinstance(item, dict):
            for key, child in item.items():
                _validate_config(child, (*path, element, "f:" + key), lists, config)


def _clean_config(config: Mapping[str, Any], keep: _TopLevelFilter) -> dict[str, Any]:
    """The apply config minus what the server owns or the endpoint does not write."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key == "metadata" and isinstance(value, Mapping):
            allowed = _IDENTITY_METADATA if not keep("metadata") else None
            out[key] = {
                k: copy.deepcopy(v)
                for k, v in value.items()
                if (k not in _SERVER_OWNED_METADATA or k in _IDENTITY_METADATA)
                and (allowed is None or k in allowed)
            }
        elif key in _UNTRACKED_TOP_LEVEL or keep(key):
            out[key] = copy.deepcopy(value)
    return out


def _merge(lhs: Any, rhs: Any, path: FieldPath, lists: ListSchema) -> Any:
    """Merge an apply config (``rhs``) into the live value, structurally."""
    if rhs is _ABSENT:
        return lhs
    spath = _schema_path(path)
    if isinstance(rhs, dict):
        if isinstance(lhs, dict) and (lhs or rhs) and not lists.is_atomic_map(spath):
            out = dict(lhs)
            for key, value in rhs.items():
                out[key] = _merge(lhs.get(key, _ABSENT), value, (*path, "f:" + key), lists)
            return out
        return rhs
    if isinstance(rhs, list) and isinstance(lhs, list) and (lhs or rhs):
        list_type = lists.list_type(spath)
        if list_type.kind != "atomic":
            return _merge_items(lhs, rhs, path, list_type, lists)
    return rhs


def _merge_items(
    lhs: list[Any], rhs: list[Any], path: FieldPath, list_type: ListType, lists: ListSchema
) -> list[Any]:
    """Merge keyed/set list items; the result interleaves live-only items where they were
    and follows the config's order for the items it names."""
    left = _list_elements(lhs, list_type)
    right = _list_elements(rhs, list_type)
    live_items: dict[str, Any] = {}
    for element, item in zip(left, lhs, strict=True):
        live_items[element] = _DUPLICATE if element in live_items else item
    config_items = dict(zip(right, rhs, strict=True))
    shared = iter([element for element in right if element in live_items])
    next_shared = next(shared, None)

    def merged(element: str) -> Any:
        live = live_items.get(element, _ABSENT)
        live = _ABSENT if live is _DUPLICATE else live
        return _merge(live, config_items[element], (*path, element), lists)

    out: list[Any] = []
    emitted: set[str] = set()
    li = ri = 0
    while li < len(left) or ri < len(right):
        if li < len(left) and ri < len(right):
            element = left[li]
            if element == right[ri]:
                emitted.add(element)
                out.append(merged(element))
                li, ri = li + 1, ri + 1
                next_shared = next(shared, None)
                continue
            if element in config_items and next_shared is not None and next_shared != element:
                li += 1
                continue
        if li < len(left):
            element = left[li]
            if element not in config_items:
                out.append(lhs[li])
                li += 1
                continue
            if element in emitted:
                li += 1
        if ri < len(right):
            element = right[ri]
            emitted.add(element)
            out.append(merged(element))
            ri += 1
            if next_shared == element:
                next_shared = next(shared, None)
    return out


def _locate(obj: Any, path: FieldPath, lists: ListSchema) -> Any:
    node = obj
    for depth, element in enumerate(path):
        if element.startswith("f:"):
            if not isinstance(node, dict) or element[2:] not in node:
                return _ABSENT
            node = node[element[2:]]
            continue
        if not isinstance(node, list):
            return _ABSENT
        list_type = lists.list_type(_schema_path(path[:depth]))
        for index, item in enumerate(node):
            if _item_element(item, list_type, index) == element:
                node = item
                break
        else:
            return _ABSENT
    return node


def _remove(obj: Any, path: FieldPath, lists: ListSchema) -> bool:
    parent = _locate(obj, path[:-1], lists)
    last = path[-1]
    if last.startswith("f:"):
        if isinstance(parent, dict) and last[2:] in parent:
            del parent[last[2:]]
            return True
        return False
    if not isinstance(parent, list):
        return False
    list_type = lists.list_type(_schema_path(path[:-1]))
    kept = [
        item for index, item in enumerate(parent) if _item_element(item, list_type, index) != last
    ]
    if len(kept) == len(parent):
        return False
    parent[:] = kept
    return True


def _is_key_field(path: FieldPath) -> bool:
    """Whether ``path`` names a key field of a keyed list item (never removed alone)."""
    if len(path) < 2 or not path[-2].startswith("k:") or not path[-1].startswith("f:"):
        return False
    try:
        key = json.loads(path[-2][2:])
    except ValueError:
        return False
    return isinstance(key, dict) and path[-1][2:] in key


def _prune(
    obj: dict[str, Any],
    dropped: set[FieldPath],
    others: set[FieldPath],
    applied: set[FieldPath],
    lists: ListSchema,
) -> None:
    """Remove what the applier stopped applying, unless someone else still owns it (or
    something below it). Containers emptied by this are removed too, short of top-level."""
    owned = others | applied
    protected = {path[:n] for path in owned for n in range(1, len(path) + 1)}
    removed: list[FieldPath] = []
    for path in sorted(dropped, key=len):
        if path in protected or _is_key_field(path):
            continue
        if _remove(obj, path, lists):
            removed.append(path)
    for path in removed:
        parent = path[:-1]
        while len(parent) >= 2 and parent not in owned:
            node = _locate(obj, parent, lists)
            if not isinstance(node, dict | list) or node:
                break
            _remove(obj, parent, lists)
            parent = parent[:-1]


def _drop_nulls(value: Any) -> Any:
    """Apply configs may say ``field: null``; like the typed apiserver, store it as absent."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _without_managed_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(obj)
    meta = out.get("metadata")
    if isinstance(meta, Mapping) and "managedFields" in meta:
        out["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
    return out


def server_side_apply(
    live: Mapping[str, Any] | None,
    config: Mapping[str, Any],
    managed: list[dict[str, Any]],
    *,
    manager: str,
    force: bool,
    api_version: str,
    subresource: str | None,
    lists: ListSchema,
    now: str,
    status_subresource: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Server-side apply ``config`` by ``manager``; returns (object, managedFields).

    The config is merged into ``live`` (``None`` = create): maps recursively, keyed
    lists by key, sets by value, atomic lists/maps replaced. Changing a value that another
    manager owns raises :class:`ApplyConflict` unless ``force`` (which takes ownership).
    Fields this manager applied before but omits now are removed, unless someone else
    also owns them. The manager's Apply entry becomes exactly the config's field set.
    The returned object carries the new managedFields; its timestamp only moves when the
    object changed, so re-applying the same config returns ``live`` unchanged.
    Server-owned metadata in the config (resourceVersion, uid, managedFields, ...) is
    ignored; ``status_subresource`` as for :func:`record_update`.
    Raises :class:`~testbed.apiserver.patch.PatchError` (500, like the apiserver) for
    configs with keyless or duplicate items in keyed lists or sets.
    """
    keep = _top_level_filter(subresource, status_subresource)
    cleaned = _clean_config(config, keep)
    _validate_config(_trackable(cleaned, keep), (), lists, config)
    base: dict[str, Any] = _without_managed_fields(copy.deepcopy(dict(live or {})))
    try:
        entries = _decode(managed)
    except ManagedFieldsError as exc:
        raise PatchError(500, "InternalError", f"failed to decode managed fields: {exc}") from None

    if live is not None and not entries:
        # An object nobody tracked yet: its current content belongs to a stand-in manager.
        seeded = _diff({}, _trackable(base, keep), lists)
        fields = _ownable(seeded.added | seeded.modified)
        if fields:
            entries.append(
                _Entry(_BEFORE_FIRST_APPLY, "Update", api_version, subresource or "", now, fields)
            )

    applier = _Entry(manager, "Apply", api_version, subresource or "", now, set())
    previous = next((e for e in entries if e.identity() == applier.identity()), None)
    others = [e for e in entries if e is not previous]
    applied = _fields_of(_trackable(cleaned, keep), lists)
    last = previous.fields if previous is not None else set()

    merged = _merge(copy.deepcopy(base), cleaned, (), lists)  # pruned in place below
    assert isinstance(merged, dict)
    others_owned: set[FieldPath] = set().union(*(e.fields for e in others))
    _prune(merged, last - applied, others_owned, applied, lists)

    diff = _diff(_trackable(base, keep), _trackable(merged, keep), lists)
    changed = diff.added | diff.modified
    conflicts = [
        (entry, path)
        for entry in sorted(others, key=lambda e: e.identity())
        for path in _Trie.of(entry.fields & changed).ordered()
    ]
    if conflicts and not force:
        raise ApplyConflict(conflicts)
    for entry in others:
        entry.fields -= changed | diff.removed

    merged = _drop_nulls(merged)
    object_changed = not _json_equal(base, merged)
    applier.fields = applied
    if previous is not None and not object_changed:
        applier.time = previous.time
    result_entries = _encode([*others, applier])
    meta = merged.setdefault("metadata", {})
    if result_entries:
        meta["managedFields"] = result_entries
    else:
        meta.pop("managedFields", None)
    return merged, result_entries
