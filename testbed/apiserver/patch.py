"""PATCH semantics of the emulated kube-apiserver: JSON patch, merge patch, strategic merge patch.

Clients are tested against the testbed so that they behave on real clusters, so the
observable results (including error codes and the odd upstream quirk that clients may
depend on) follow the real apiserver rather than the RFCs where the two disagree. Every
function is pure: inputs are never mutated and a fresh document is returned.

The module also owns the description of list semantics (:class:`ListSchema`), because
strategic merge patch and server-side apply (``fieldmanager``) both need it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from .errors import ApiError

__all__ = [
    "BUILTIN_LISTS",
    "ITEM",
    "ListKind",
    "ListSchema",
    "ListType",
    "PatchError",
    "SchemaPath",
    "apply_json_patch",
    "apply_merge_patch",
    "apply_strategic_merge_patch",
    "go_type_name",
    "schema_lists",
    "unsupported_patch_type",
]

# The apiserver replaces the detail of 422 patch failures by this generic text; clients
# (e.g. kubectl's "The request is invalid: ...") only ever see this.
GENERIC_INVALID_MESSAGE: Final = "the server rejected our request due to an error in our request"
MAX_JSON_PATCH_OPERATIONS: Final = 10000


class PatchError(Exception):
    """A patch the apiserver refuses; carries what goes into the returned ``Status``.

    ``message`` is what the real apiserver puts in the Status. ``detail`` holds the
    underlying cause when the real server hides it (422s), for logs and test failures.
    """

    def __init__(self, code: int, reason: str, message: str, detail: str | None = None) -> None:
        super().__init__(message if detail is None else f"{message} ({detail})")
        self.code = code
        self.reason = reason
        self.message = message
        self.detail = detail

    def to_status(self) -> dict[str, Any]:
        """The ``metav1.Status`` body the apiserver would send for this error."""
        return ApiError(self.code, self.reason, self.message).status()


def _bad_request(message: str) -> PatchError:
    return PatchError(400, "BadRequest", message)


def _invalid(detail: str) -> PatchError:
    return PatchError(422, "Invalid", GENERIC_INVALID_MESSAGE, detail)


def unsupported_patch_type(accepted: Sequence[str]) -> PatchError:
    """The 415 for a patch content type the resource does not take (SMP on custom resources)."""
    return PatchError(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: "
        + ", ".join(accepted),
    )


def go_type_name(value: Any) -> str:
    """How Go's encoding/json names a JSON value's kind in "cannot unmarshal X" errors."""
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "null"


def _json_equal(a: Any, b: Any) -> bool:
    """Structural JSON equality (unlike ``==``, keeps ``true`` distinct from ``1``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(_json_equal(v, b[k]) for k, v in a.items())
        )
    if isinstance(a, list):
        return (
            isinstance(b, list)
            and len(a) == len(b)
            and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and bool(a == b)


def _canonical(value: Any) -> str:
    """A hashable identity for a JSON value, used to compare list items and merge keys."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------------------
# List semantics
# --------------------------------------------------------------------------------------

SchemaPath = tuple[str, ...]
"""Field names from the object root; list items are the token :data:`ITEM`."""

ITEM: Final = "[]"

ListKind = Literal["atomic", "set", "map"]


@dataclass(frozen=True)
class ListType:
    """How a list is merged and tracked: replaced whole, a set of scalars, or keyed maps."""

    kind: ListKind
    keys: tuple[str, ...] = ()
    key_defaults: tuple[tuple[str, Any], ...] = ()
    """Values assumed for key fields an item omits (schema defaults, e.g. protocol TCP)."""


ATOMIC: Final = ListType("atomic")
SET: Final = ListType("set")


def _keyed(*keys: str) -> ListType:
    return ListType("map", keys)


class ListSchema(Protocol):
    """Answers, for a position in an object, how lists and maps there are merged."""

    def list_type(self, path: SchemaPath) -> ListType:
        """The list semantics at ``path`` (atomic when unknown)."""
        ...

    def is_atomic_map(self, path: SchemaPath) -> bool:
        """Whether the map at ``path`` is replaced and owned as a whole by apply."""
        ...


def _metadata_list(path: SchemaPath) -> ListType | None:
    """List rules of ObjectMeta, which hold for every kind (CRD schemas do not describe it)."""
    if len(path) >= 2 and path[-2] == "metadata":
        if path[-1] == "ownerReferences":
            return _keyed("uid")
        if path[-1] == "finalizers":
            return SET
    return None


_CONTAINER_LISTS: Final = frozenset({"containers", "initContainers", "ephemeralContainers"})
_BY_NAME_SUFFIX: Final = frozenset({*_CONTAINER_LISTS, "env", "volumes", "imagePullSecrets"})
# Selectors that core/apps types declare atomic (structType/mapType=atomic).
_ATOMIC_SELECTORS: Final = frozenset(
    {"nodeSelector", "labelSelector", "namespaceSelector", "podSelector"}
)


class _BuiltinLists:
    """Merge keys of the core/apps types, matched by path suffix so every kind benefits."""

    def list_type(self, path: SchemaPath) -> ListType:
        if not path:
            return ATOMIC
        meta = _metadata_list(path)
        if meta is not None:
            return meta
        last = path[-1]
        in_container = len(path) >= 3 and path[-2] == ITEM and path[-3] in _CONTAINER_LISTS
        if last in _BY_NAME_SUFFIX:
            return _keyed("name")
        if last == "ports":
            if in_container:
                return _keyed("containerPort")
            if path == ("spec", "ports"):
                return _keyed("port")
            return ATOMIC
        if last == "volumeMounts":
            return _keyed("mountPath")
        if last == "volumeDevices":
            return _keyed("devicePath")
        if last == "hostAliases":
            return _keyed("ip")
        if last == "topologySpreadConstraints":
            return _keyed("topologyKey")
        if path[-2:] == ("status", "conditions"):
            return _keyed("type")
        if path == ("webhooks",):  # Validating/MutatingWebhookConfiguration
            return _keyed("name")
        return ATOMIC

    def is_atomic_map(self, path: SchemaPath) -> bool:
        if not path:
            return False
        return path[-1] in _ATOMIC_SELECTORS or path[-2:] == ("spec", "selector")


BUILTIN_LISTS: Final[ListSchema] = _BuiltinLists()


class _OpenAPILists:
    """List semantics read from a CRD's structural ``openAPIV3Schema``."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self._root = schema
        self._cache: dict[SchemaPath, Mapping[str, Any] | None] = {}

    def _node(self, path: SchemaPath) -> Mapping[str, Any] | None:
        if path in self._cache:
            return self._cache[path]
        node: Mapping[str, Any] | None
        if not path:
            node = self._root
        else:
            parent = self._node(path[:-1])
            node = None
            if parent is not None:
                token = path[-1]
                if token == ITEM:
                    items = parent.get("items")
                    node = items if isinstance(items, Mapping) else None
                else:
                    props = parent.get("properties")
                    extra = parent.get("additionalProperties")
                    if isinstance(props, Mapping) and isinstance(props.get(token), Mapping):
                        node = props[token]
                    elif isinstance(extra, Mapping):
                        node = extra
        self._cache[path] = node
        return node

    def list_type(self, path: SchemaPath) -> ListType:
        node = self._node(path)
        declared = None if node is None else node.get("x-kubernetes-list-type")
        if declared is None:
            return _metadata_list(path) or ATOMIC
        if declared == "set":
            return SET
        if declared == "map" and node is not None:
            keys = tuple(str(k) for k in node.get("x-kubernetes-list-map-keys") or ())
            if not keys:
                return ATOMIC
            defaults: list[tuple[str, Any]] = []
            items = node.get("items")
            props = items.get("properties") if isinstance(items, Mapping) else None
            if isinstance(props, Mapping):
                for key in keys:
                    prop = props.get(key)
                    if isinstance(prop, Mapping) and "default" in prop:
                        defaults.append((key, prop["default"]))
            return ListType("map", keys, tuple(defaults))
        return ATOMIC

    def is_atomic_map(self, path: SchemaPath) -> bool:
        node = self._node(path)
        return node is not None and node.get("x-kubernetes-map-type") == "atomic"


def schema_lists(openapi_v3_schema: Mapping[str, Any]) -> ListSchema:
    """List semantics of a custom resource, from its CRD version's ``openAPIV3Schema``.

    Lists without ``x-kubernetes-list-type`` are atomic, as for the real apiserver;
    ``metadata.ownerReferences`` (by uid) and ``metadata.finalizers`` (set) keep their
    ObjectMeta semantics because CRD schemas do not spell them out.
    """
    return _OpenAPILists(openapi_v3_schema)


# --------------------------------------------------------------------------------------
# RFC 6902 JSON patch (as implemented by evanphx/json-patch v4 inside the apiserver)
# --------------------------------------------------------------------------------------

_MISSING_VALUE: Final = "missing value"
_INVALID_INDEX: Final = "invalid index referenced"


class _OpFailed(Exception):
    """An operation that does not apply; becomes the apiserver's 422."""


def _decode_pointer(pointer: str) -> list[str] | None:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        return None
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/")]


def _parse_index(token: str) -> int | None:
    body = token[1:] if token.startswith(("-", "+")) else token
    if not body.isdigit() or not body.isascii():
        return None
    return int(token)


def _find_container(doc: Any, pointer: str) -> tuple[dict[str, Any] | list[Any], str] | None:
    """The container holding the pointer's last token, like the upstream findObject."""
    parts = _decode_pointer(pointer)
    if not parts:
        return None
    current: Any = doc
    for part in parts[:-1]:
        if isinstance(current, dict):
            current = current.get(part)
        elif isinstance(current, list):
            idx = _parse_index(part)
            if idx is None:
                return None
            if idx < 0:
                idx += len(current)
            if not 0 <= idx < len(current):
                return None
            current = current[idx]
        else:
            return None
        if not isinstance(current, dict | list):
            return None
    return current, parts[-1]


def _list_index(container: list[Any], key: str, *, inserting: bool) -> int:
    idx = _parse_index(key)
    if idx is None:
        raise _OpFailed(f"value was not a proper array index: '{key}'")
    size = len(container) + (1 if inserting else 0)
    if idx >= size or idx < -size:
        raise _OpFailed(f"Unable to access invalid index: {idx}: {_INVALID_INDEX}")
    return idx + size if idx < 0 else idx


def _container_add(container: dict[str, Any] | list[Any], key: str, value: Any) -> None:
    if isinstance(container, dict):
        container[key] = value
    elif key == "-":
        container.append(value)
    else:
        container.insert(_list_index(container, key, inserting=True), value)


def _container_get(container: dict[str, Any] | list[Any], key: str) -> Any:
    if isinstance(container, dict):
        return container.get(key)
    return container[_list_index(container, key, inserting=False)]


def _container_remove(container: dict[str, Any] | list[Any], key: str) -> Any:
    if isinstance(container, dict):
        if key not in container:
            raise _OpFailed(f"Unable to remove nonexistent key: {key}: {_MISSING_VALUE}")
        return container.pop(key)
    return container.pop(_list_index(container, key, inserting=False))


def _op_string(op: dict[str, Any], field: str, kind: str) -> str:
    value = op.get(field)
    if value is None:
        what = "path" if field == "path" else "from"
        raise _OpFailed(f"{kind} operation failed to decode {what}: {_MISSING_VALUE}")
    return str(value)


def _apply_op(doc: Any, op: dict[str, Any]) -> Any:
    kind = op.get("op")
    kind = "unknown" if kind is None else kind
    value = copy.deepcopy(op.get("value"))
    if kind in ("add", "remove", "replace", "test"):
        path = _op_string(op, "path", kind)
        if kind == "replace" and path == "":
            if not isinstance(value, dict | list):
                raise _OpFailed("replace operation value must be object or array")
            return value
        if kind == "test" and path == "":
            if not _json_equal(doc, value):
                raise _OpFailed(f"testing value {path} failed: test failed")
            return doc
        found = _find_container(doc, path)
        if found is None:
            quoted = f'"{path}"' if kind in ("add", "remove") else path
            what = "is missing path" if kind == "test" else "doc is missing path"
            raise _OpFailed(f"{kind} operation does not apply: {what}: {quoted}: {_MISSING_VALUE}")
        container, key = found
        try:
            if kind == "add":
                _container_add(container, key, value)
            elif kind == "remove":
                _container_remove(container, key)
            elif kind == "replace":
                # Upstream v4 quirk kept on purpose: replacing a missing object key adds it.
                if isinstance(container, dict):
                    container[key] = value
                else:
                    container[_list_index(container, key, inserting=False)] = value
            elif not _json_equal(_container_get(container, key), value):
                raise _OpFailed(f"testing value {path} failed: test failed")
        except _OpFailed as exc:
            if str(exc).startswith("testing value"):
                raise
            verb = "remove" if kind == "replace" else kind  # upstream wording, sic
            raise _OpFailed(f"error in {verb} for path: '{path}': {exc}") from None
        return doc
    if kind in ("move", "copy"):
        source = _op_string(op, "from", kind)
        found = _find_container(doc, source)
        if found is None:
            raise _OpFailed(
                f"{kind} operation does not apply: doc is missing from path: {source}: "
                f"{_MISSING_VALUE}"
            )
        container, key = found
        try:
            if kind == "move":
                moved = _container_remove(container, key)
            else:
                moved = copy.deepcopy(_container_get(container, key))
        except _OpFailed as exc:
            raise _OpFailed(f"error in {kind} for path: '{key}': {exc}") from None
        path = _op_string(op, "path", kind)
        found = _find_container(doc, path)
        if found is None:
            raise _OpFailed(
                f"{kind} operation does not apply: doc is missing destination path: {path}: "
                f"{_MISSING_VALUE}"
            )
        try:
            _container_add(found[0], found[1], moved)
        except _OpFailed as exc:
            raise _OpFailed(f"error in {kind} for path: '{path}': {exc}") from None
        return doc
    raise _OpFailed(f"Unexpected kind: {kind}")


def apply_json_patch(doc: dict[str, Any], patch: Any) -> dict[str, Any]:
    """Apply an RFC 6902 patch (``application/json-patch+json``) to ``doc``.

    Decoding problems are 400s worded like the apiserver's strict decoder; operations
    that do not apply (failed ``test``, missing path, ...) are 422 "Invalid". Negative
    array indices are accepted and ``replace`` of a missing object key adds it, as the
    json-patch library inside the apiserver does.
    """
    if patch is None:
        return copy.deepcopy(doc)
    if not isinstance(patch, list):
        raise _bad_request(
            f"error decoding patch: json: cannot unmarshal {go_type_name(patch)} "
            "into Go value of type []handlers.jsonPatchOp"
        )
    for op in patch:
        if op is None:
            continue
        if not isinstance(op, dict):
            raise _bad_request(
                f"error decoding patch: json: cannot unmarshal {go_type_name(op)} "
                "into Go value of type handlers.jsonPatchOp"
            )
        for field in ("op", "path", "from"):
            value = op.get(field)
            if value is not None and not isinstance(value, str):
                raise _bad_request(
                    f"error decoding patch: json: cannot unmarshal {go_type_name(value)} "
                    f"into Go struct field jsonPatchOp.{field} of type string"
                )
    if len(patch) > MAX_JSON_PATCH_OPERATIONS:
        raise PatchError(
            413,
            "RequestEntityTooLarge",
            f"The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, "
            f"got {len(patch)}",
        )
    result: Any = copy.deepcopy(doc)
    for op in patch:
        try:
            result = _apply_op(result, op or {})
        except _OpFailed as exc:
            raise _invalid(str(exc)) from None
    if not isinstance(result, dict):
        raise _invalid("json: cannot unmarshal array into Go value of type map[string]interface {}")
    return result


# --------------------------------------------------------------------------------------
# RFC 7386 JSON merge patch
# --------------------------------------------------------------------------------------


def _prune_nulls(value: Any) -> Any:
    """Drop null members of objects, also inside arrays (what the apiserver's library does)."""
    if isinstance(value, dict):
        return {k: _prune_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_prune_nulls(v) for v in value]
    return value


def _merge_patch(target: Any, patch: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merge_patch(result[key], value)
        else:
            result[key] = _prune_nulls(copy.deepcopy(value))
    return result


def apply_merge_patch(doc: dict[str, Any], patch: Any) -> dict[str, Any]:
    """Apply an RFC 7386 merge patch (``application/merge-patch+json``): lists are replaced."""
    if patch is None:
        raise _bad_request("Invalid JSON Patch")
    if not isinstance(patch, dict):
        raise _bad_request(
            f"error decoding patch: json: cannot unmarshal {go_type_name(patch)} "
            "into Go value of type map[string]interface {}"
        )
    return _merge_patch(doc, patch)


# --------------------------------------------------------------------------------------
# Strategic merge patch
# --------------------------------------------------------------------------------------

_DIRECTIVE: Final = "$patch"
_RETAIN_KEYS: Final = "$retainKeys"
_DELETE_PRIMITIVE: Final = "$deleteFromPrimitiveList/"
_SET_ORDER: Final = "$setElementOrder/"

_ERR_RETAIN_KEYS: Final = "invalid patch format of retainKeys"
_ERR_SET_ORDER: Final = "invalid patch format of setElementOrder list"
_ERR_PRIMITIVE_LIST: Final = "invalid patch format of primitive list"


class _Omit:
    """Marks a patch value that must not appear in the result (e.g. ``$patch: delete``)."""


_OMIT: Final = _Omit()


def _is_directive_key(key: str) -> bool:
    return key in (_DIRECTIVE, _RETAIN_KEYS) or key.startswith((_DELETE_PRIMITIVE, _SET_ORDER))


def _strip(value: Any, *, drop_nulls: bool) -> Any:
    """A patch value taken verbatim, minus directives (and, for new values, nulls)."""
    if isinstance(value, dict):
        if value.get(_DIRECTIVE) == "delete":
            return _OMIT
        out: dict[str, Any] = {}
        for key, item in value.items():
            if _is_directive_key(key) or (drop_nulls and item is None):
                continue
            stripped = _strip(item, drop_nulls=drop_nulls)
            if stripped is not _OMIT:
                out[key] = stripped
        return out
    if isinstance(value, list):
        items = []
        for item in value:
            if isinstance(item, dict) and _DIRECTIVE in item:
                continue
            stripped = _strip(item, drop_nulls=drop_nulls)
            if stripped is not _OMIT:
                items.append(stripped)
        return items
    return value


class _SMP:
    """One strategic merge: walks original and patch together, consulting the schema."""

    def __init__(self, schema: ListSchema) -> None:
        self.schema = schema

    # -- maps ---------------------------------------------------------------------------

    def merge_map(
        self, original: dict[str, Any], patch: dict[str, Any], path: SchemaPath
    ) -> dict[str, Any]:
        patch = dict(patch)
        if _DIRECTIVE in patch:
            directive = patch.pop(_DIRECTIVE)
            if directive == "replace":
                stripped = _strip(patch, drop_nulls=True)
                assert isinstance(stripped, dict)
                return stripped
            if directive == "delete":
                return {}
            if directive != "merge":
                raise _invalid(f"unknown patch type: {directive} in map: {patch}")
        self._retain_keys(original, patch)
        self._set_element_orders(original, patch, path)

        deletions: list[tuple[str, Any]] = []
        for key, value in patch.items():
            if key.startswith(_DELETE_PRIMITIVE):
                field = key[len(_DELETE_PRIMITIVE) :]
                if not field:
                    raise _bad_request(_ERR_PRIMITIVE_LIST)
                deletions.append((field, value))
                continue
            if value is None:
                original.pop(key, None)
                continue
            child = (*path, key)
            current = original.get(key, _OMIT)
            merged: Any
            if isinstance(current, dict) and isinstance(value, dict):
                merged = self.merge_map(current, value, child)
            elif isinstance(current, list) and isinstance(value, list):
                merged = self.merge_list(current, value, child, existing=True)
            elif isinstance(value, dict):
                merged = (
                    _OMIT if value.get(_DIRECTIVE) == "delete" else self.merge_map({}, value, child)
                )
            elif isinstance(value, list):
                merged = self.merge_list([], value, child, existing=False)
            else:
                merged = value
            if merged is _OMIT:
                original.pop(key, None)
            else:
                original[key] = merged

        for field, values in deletions:
            if not isinstance(values, list):
                raise _bad_request(_ERR_PRIMITIVE_LIST)
            current = original.get(field)
            if isinstance(current, list):
                doomed = {_canonical(v) for v in values}
                original[field] = [v for v in current if _canonical(v) not in doomed]
        return original

    def _retain_keys(self, original: dict[str, Any], patch: dict[str, Any]) -> None:
        if _RETAIN_KEYS not in patch:
            return
        retain = patch.pop(_RETAIN_KEYS)
        if not isinstance(retain, list):
            raise _bad_request(_ERR_RETAIN_KEYS)
        allowed = {k for k in retain if isinstance(k, str)}
        for key, value in patch.items():
            if value is None or key.startswith((_DELETE_PRIMITIVE, _SET_ORDER)):
                continue
            if key not in allowed:
                raise _bad_request(_ERR_RETAIN_KEYS)
        for key in list(original):
            if key not in allowed:
                del original[key]

    def _set_element_orders(
        self, original: dict[str, Any], patch: dict[str, Any], path: SchemaPath
    ) -> None:
        for directive_key in [k for k in patch if k.startswith(_SET_ORDER)]:
            order = patch.pop(directive_key)
            field = directive_key[len(_SET_ORDER) :]
            if not field or not isinstance(order, list):
                raise _bad_request(_ERR_SET_ORDER)
            child = (*path, field)
            list_type = self.schema.list_type(child)
            identity = self._identity(list_type)
            raw_current = original.get(field)
            current: list[Any] | None = raw_current if isinstance(raw_current, list) else None
            raw_patch = patch.pop(field, _OMIT)
            patch_list: list[Any] | None = None
            if not isinstance(raw_patch, _Omit):
                if not isinstance(raw_patch, list):
                    raise _bad_request(_ERR_SET_ORDER)
                patch_list = raw_patch
            if list_type.kind == "atomic":
                if patch_list is not None:
                    original[field] = self.merge_list(
                        current or [], patch_list, child, existing=current is not None
                    )
                continue
            if patch_list is not None:
                self._check_order(patch_list, order, identity)
                merged = self.merge_list(
                    current or [], patch_list, child, existing=current is not None
                )
            elif current is not None:
                merged = list(current)
            else:
                continue
            wanted = {identity(item) for item in order}
            in_order = [item for item in merged if identity(item) in wanted]
            server_only = [item for item in merged if identity(item) not in wanted]
            original[field] = _normalize_order(
                in_order, server_only, order, current or [], identity
            )

    @staticmethod
    def _check_order(patch_list: list[Any], order: list[Any], identity: _Identity) -> None:
        """Patch items must appear in ``$setElementOrder`` in the same relative order."""
        items = [item for item in patch_list if not (isinstance(item, dict) and _DIRECTIVE in item)]
        i = j = 0
        while i < len(items) and j < len(order):
            if identity(items[i]) == identity(order[j]):
                i += 1
            j += 1
        if i < len(items):
            raise _bad_request(
                f"The order in patch list:\n{patch_list}\n doesn't match {_SET_ORDER} list:\n"
                f"{order}\n"
            )

    # -- lists --------------------------------------------------------------------------

    @staticmethod
    def _identity(list_type: ListType) -> _Identity:
        if list_type.kind == "map":
            keys = list_type.keys

            def by_key(item: Any) -> str:
                if isinstance(item, dict):
                    return _canonical([item.get(k) for k in keys])
                return _canonical(item)

            return by_key
        return _canonical

    def merge_list(
        self, original: list[Any], patch: list[Any], path: SchemaPath, *, existing: bool
    ) -> Any:
        list_type = self.schema.list_type(path)
        if list_type.kind == "atomic":
            return _strip(patch, drop_nulls=not existing)
        if not original and not patch:
            return [] if existing else patch
        elements = [*original, *patch]
        if any(isinstance(item, list) for item in elements):
            raise _invalid("lists of lists are not supported")
        maps = [isinstance(item, dict) for item in elements]
        if all(maps) and list_type.kind == "map":
            return self._merge_keyed(original, patch, path, list_type)
        if any(maps) and not all(maps):
            raise _invalid(f"list element types are not identical: {[original, patch]}")
        # Lists of scalars with a merge strategy are unions.
        merged: list[Any] = []
        seen: set[str] = set()
        for item in elements:
            ident = _canonical(item)
            if ident not in seen:
                seen.add(ident)
                merged.append(item)
        in_patch = {_canonical(item) for item in patch}
        from_patch = [item for item in merged if _canonical(item) in in_patch]
        server_only = [item for item in merged if _canonical(item) not in in_patch]
        return _normalize_order(from_patch, server_only, patch, original, _canonical)

    def _merge_keyed(
        self, original: list[Any], patch: list[Any], path: SchemaPath, list_type: ListType
    ) -> list[Any]:
        identity = self._identity(list_type)
        key_name = ",".join(list_type.keys)
        item_path = (*path, ITEM)

        def require_key(item: dict[str, Any]) -> None:
            if not any(k in item for k in list_type.keys):
                raise _invalid(f"map: {item} does not contain declared merge key: {key_name}")

        plain: list[dict[str, Any]] = []
        replace = False
        merged = list(original)
        for item in patch:
            directive = item.get(_DIRECTIVE)
            if directive is None or directive == "merge":
                body = {k: v for k, v in item.items() if k != _DIRECTIVE}
                require_key(body)
                plain.append(body)
            elif directive == "delete":
                require_key(item)
                doomed = identity(item)
                merged = [m for m in merged if identity(m) != doomed]
            elif directive == "replace":
                replace = True
            else:
                raise _invalid(f"unknown patch type: {directive} in map: {item}")
        if replace:
            result = []
            for item in plain:
                stripped = _strip(item, drop_nulls=True)
                if stripped is not _OMIT:
                    result.append(stripped)
            return result
        server_order = list(merged)
        for item in plain:
            ident = identity(item)
            for index, candidate in enumerate(merged):
                if identity(candidate) == ident:
                    merged[index] = self.merge_map(copy.copy(candidate), item, item_path)
                    break
            else:
                merged.append(self.merge_map({}, item, item_path))
        in_patch = {identity(item) for item in plain}
        from_patch = [item for item in merged if identity(item) in in_patch]
        server_only = [item for item in merged if identity(item) not in in_patch]
        return _normalize_order(from_patch, server_only, plain, server_order, identity)


_Identity = Callable[[Any], str]


def _normalize_order(
    from_patch: list[Any],
    server_only: list[Any],
    patch_order: Sequence[Any],
    server_order: Sequence[Any],
    identity: _Identity,
) -> list[Any]:
    """Order a merged list like the apiserver: patch order wins, server-only items keep
    their live position relative to the patched items where that position is known."""

    def position(order: Sequence[Any]) -> dict[str, int]:
        index: dict[str, int] = {}
        for i, item in enumerate(order):
            index.setdefault(identity(item), i)
        return index

    patch_pos = position(patch_order)
    server_pos = position(server_order)
    right = sorted(from_patch, key=lambda item: patch_pos.get(identity(item), len(patch_pos)))
    left = sorted(server_only, key=lambda item: server_pos.get(identity(item), len(server_pos)))
    out: list[Any] = []
    i = j = 0
    while i < len(left) or j < len(right):
        if i < len(left) and j < len(right):
            li = server_pos.get(identity(left[i]))
            ri = server_pos.get(identity(right[j]))
            if li is not None and ri is not None and li < ri:
                out.append(left[i])
                i += 1
            else:
                out.append(right[j])
                j += 1
        elif i < len(left):
            out.append(left[i])
            i += 1
        else:
            out.append(right[j])
            j += 1
    return out


def apply_strategic_merge_patch(
    doc: dict[str, Any], patch: Any, schema: ListSchema
) -> dict[str, Any]:
    """Apply a Kubernetes strategic merge patch (``application/strategic-merge-patch+json``).

    Maps merge recursively and ``null`` deletes; lists with a merge key (per ``schema``)
    merge item by item, scalar sets are unioned, other lists are replaced. Supports the
    ``$patch`` (replace/delete/merge), ``$retainKeys``, ``$deleteFromPrimitiveList/<f>``
    and ``$setElementOrder/<f>`` directives, none of which survive into the result. Like
    the apiserver, ``{"$patch": "delete"}`` on an existing map leaves it empty (``{}``).
    """
    if patch is None:
        return copy.deepcopy(doc)
    if not isinstance(patch, dict):
        raise _bad_request(
            f"json: cannot unmarshal {go_type_name(patch)} into Go value of type "
            "map[string]interface {}"
        )
    return _SMP(schema).merge_map(copy.deepcopy(doc), copy.deepcopy(patch), ())
