"""Decoder for request bodies in the Kubernetes protobuf encoding.

kubectl's typed subcommands (``kubectl create namespace``, ``create configmap``,
``create secret generic``, ``create role`` ...) POST their object as
``application/vnd.kubernetes.protobuf``: the 4-byte magic ``k8s\\0`` followed by a
``runtime.Unknown`` envelope (typeMeta, raw object bytes, contentEncoding, contentType).

The emulated API server only speaks JSON, so this module turns such a body into the
dict the JSON encoding of the same Go object would have produced.  It is a generic
protobuf wire-format reader driven by small declarative field tables (taken from the
upstream ``generated.proto`` files), covering only the kinds kubectl's typed
subcommands send for resources this testbed cares about.  Zero values of non-pointer
Go fields are dropped (``omitempty``); pointer fields keep whatever was on the wire.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["MAGIC", "MEDIA_TYPE", "SUPPORTED_KINDS", "ProtobufError", "decode"]

MAGIC: Final = b"k8s\x00"
MEDIA_TYPE: Final = "application/vnd.kubernetes.protobuf"


class ProtobufError(ValueError):
    """The body is not a decodable Kubernetes protobuf object (or its kind is not supported)."""


# --------------------------------------------------------------------------- wire format

_VARINT: Final = 0
_I64: Final = 1
_LEN: Final = 2
_I32: Final = 5

WireValue = int | bytes


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise ProtobufError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtobufError("varint too long")


def _fields(buf: bytes) -> Iterator[tuple[int, int, WireValue]]:
    """Yield ``(field number, wire type, value)`` for every field of one message."""
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if num == 0:
            raise ProtobufError("invalid field number 0")
        value: WireValue
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            if pos + size > end:
                raise ProtobufError(f"truncated fixed{size * 8} field {num}")
            value = int.from_bytes(buf[pos:pos + size], "little")
            pos += size
        elif wire == _LEN:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise ProtobufError(f"truncated length-delimited field {num}")
            value = buf[pos:pos + length]
            pos += length
        else:
            raise ProtobufError(f"unsupported wire type {wire} (field {num})")
        yield num, wire, value


# --------------------------------------------------------------------------- field tables


class T(enum.Enum):
    """Field value types, mapped to their JSON form."""

    STRING = "string"
    BYTES = "bytes"  # base64 string in JSON
    INT32 = "int32"
    INT64 = "int64"
    BOOL = "bool"
    MESSAGE = "message"
    MAP_STRING = "map<string,string>"
    MAP_BYTES = "map<string,bytes>"
    TIME = "meta.v1.Time"  # RFC3339, seconds precision
    MICRO_TIME = "meta.v1.MicroTime"  # RFC3339 with microseconds
    FIELDS_V1 = "meta.v1.FieldsV1"  # raw JSON document


_WIRE_OF: Final[Mapping[T, int]] = {
    T.STRING: _LEN, T.BYTES: _LEN, T.INT32: _VARINT, T.INT64: _VARINT, T.BOOL: _VARINT,
    T.MESSAGE: _LEN, T.MAP_STRING: _LEN, T.MAP_BYTES: _LEN, T.TIME: _LEN,
    T.MICRO_TIME: _LEN, T.FIELDS_V1: _LEN,
}


@dataclass(frozen=True)
class Field:
    name: str
    type: T
    repeated: bool = False
    # A Go pointer field: present on the wire means present in JSON, even if zero.
    pointer: bool = False
    message: Mapping[int, Field] | None = None


Table = Mapping[int, Field]


def _str(name: str, *, repeated: bool = False, pointer: bool = False) -> Field:
    return Field(name, T.STRING, repeated=repeated, pointer=pointer)


def _msg(name: str, table: Table, *, repeated: bool = False, pointer: bool = False) -> Field:
    return Field(name, T.MESSAGE, repeated=repeated, pointer=pointer, message=table)


# k8s.io/apimachinery/pkg/apis/meta/v1
_OWNER_REFERENCE: Final[Table] = {
    5: _str("apiVersion"),
    1: _str("kind"),
    3: _str("name"),
    4: _str("uid"),
    6: Field("controller", T.BOOL, pointer=True),
    7: Field("blockOwnerDeletion", T.BOOL, pointer=True),
}

_MANAGED_FIELDS_ENTRY: Final[Table] = {
    1: _str("manager"),
    2: _str("operation"),
    3: _str("apiVersion"),
    4: Field("time", T.TIME, pointer=True),
    6: _str("fieldsType"),
    7: Field("fieldsV1", T.FIELDS_V1, pointer=True),
    8: _str("subresource"),
}

_OBJECT_META: Final[Table] = {
    1: _str("name"),
    2: _str("generateName"),
    3: _str("namespace"),
    4: _str("selfLink"),
    5: _str("uid"),
    6: _str("resourceVersion"),
    7: Field("generation", T.INT64),
    8: Field("creationTimestamp", T.TIME),
    9: Field("deletionTimestamp", T.TIME, pointer=True),
    10: Field("deletionGracePeriodSeconds", T.INT64, pointer=True),
    11: Field("labels", T.MAP_STRING),
    12: Field("annotations", T.MAP_STRING),
    13: _msg("ownerReferences", _OWNER_REFERENCE, repeated=True),
    14: _str("finalizers", repeated=True),
    17: _msg("managedFields", _MANAGED_FIELDS_ENTRY, repeated=True),
}

_LABEL_SELECTOR: Final[Table] = {
    1: Field("matchLabels", T.MAP_STRING),
    2: _msg("matchExpressions", {
        1: _str("key"),
        2: _str("operator"),
        3: _str("values", repeated=True),
    }, repeated=True),
}

_METADATA: Final = _msg("metadata", _OBJECT_META)

# k8s.io/api/core/v1
_OBJECT_REFERENCE: Final[Table] = {
    1: _str("kind"),
    2: _str("namespace"),
    3: _str("name"),
    4: _str("uid"),
    5: _str("apiVersion"),
    6: _str("resourceVersion"),
    7: _str("fieldPath"),
}

_NAMESPACE: Final[Table] = {
    1: _METADATA,
    2: _msg("spec", {1: _str("finalizers", repeated=True)}),
    3: _msg("status", {
        1: _str("phase"),
        2: _msg("conditions", {
            1: _str("type"),
            2: _str("status"),
            4: Field("lastTransitionTime", T.TIME),
            5: _str("reason"),
            6: _str("message"),
        }, repeated=True),
    }),
}

_CONFIG_MAP: Final[Table] = {
    1: _METADATA,
    4: Field("immutable", T.BOOL, pointer=True),
    2: Field("data", T.MAP_STRING),
    3: Field("binaryData", T.MAP_BYTES),
}

_SECRET: Final[Table] = {
    1: _METADATA,
    5: Field("immutable", T.BOOL, pointer=True),
    2: Field("data", T.MAP_BYTES),
    4: Field("stringData", T.MAP_STRING),
    3: _str("type"),
}

_SERVICE_ACCOUNT: Final[Table] = {
    1: _METADATA,
    2: _msg("secrets", _OBJECT_REFERENCE, repeated=True),
    3: _msg("imagePullSecrets", {1: _str("name")}, repeated=True),
    4: Field("automountServiceAccountToken", T.BOOL, pointer=True),
}

# k8s.io/api/rbac/v1
_POLICY_RULE: Final[Table] = {
    1: _str("verbs", repeated=True),
    2: _str("apiGroups", repeated=True),
    3: _str("resources", repeated=True),
    4: _str("resourceNames", repeated=True),
    5: _str("nonResourceURLs", repeated=True),
}

_ROLE: Final[Table] = {
    1: _METADATA,
    2: _msg("rules", _POLICY_RULE, repeated=True),
}

_CLUSTER_ROLE: Final[Table] = {
    1: _METADATA,
    2: _msg("rules", _POLICY_RULE, repeated=True),
    3: _msg("aggregationRule", {
        1: _msg("clusterRoleSelectors", _LABEL_SELECTOR, repeated=True),
    }, pointer=True),
}

_BINDING: Final[Table] = {
    1: _METADATA,
    2: _msg("subjects", {
        1: _str("kind"),
        2: _str("apiGroup"),
        3: _str("name"),
        4: _str("namespace"),
    }, repeated=True),
    3: _msg("roleRef", {
        1: _str("apiGroup"),
        2: _str("kind"),
        3: _str("name"),
    }),
}

# k8s.io/api/coordination/v1
_LEASE: Final[Table] = {
    1: _METADATA,
    2: _msg("spec", {
        1: _str("holderIdentity", pointer=True),
        2: Field("leaseDurationSeconds", T.INT32, pointer=True),
        3: Field("acquireTime", T.MICRO_TIME, pointer=True),
        4: Field("renewTime", T.MICRO_TIME, pointer=True),
        5: Field("leaseTransitions", T.INT32, pointer=True),
        6: _str("strategy", pointer=True),
        7: _str("preferredHolder", pointer=True),
    }),
}

# k8s.io/api/authentication/v1 (the body of `kubectl create token`)
_TOKEN_REQUEST: Final[Table] = {
    1: _METADATA,
    2: _msg("spec", {
        1: _str("audiences", repeated=True),
        4: Field("expirationSeconds", T.INT64, pointer=True),
        3: _msg("boundObjectRef", {
            1: _str("kind"),
            2: _str("apiVersion"),
            3: _str("name"),
            4: _str("uid"),
        }, pointer=True),
    }),
    3: _msg("status", {
        1: _str("token"),
        2: Field("expirationTimestamp", T.TIME),
    }),
}

_KINDS: Final[Mapping[tuple[str, str], Table]] = {
    ("v1", "Namespace"): _NAMESPACE,
    ("v1", "ConfigMap"): _CONFIG_MAP,
    ("v1", "Secret"): _SECRET,
    ("v1", "ServiceAccount"): _SERVICE_ACCOUNT,
    ("rbac.authorization.k8s.io/v1", "Role"): _ROLE,
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): _CLUSTER_ROLE,
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): _BINDING,
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): _BINDING,
    ("coordination.k8s.io/v1", "Lease"): _LEASE,
    ("authentication.k8s.io/v1", "TokenRequest"): _TOKEN_REQUEST,
}

SUPPORTED_KINDS: Final[frozenset[tuple[str, str]]] = frozenset(_KINDS)

# runtime.Unknown, the envelope behind the magic prefix: typeMeta = 1, raw = 2,
# contentEncoding = 3, contentType = 4; runtime.TypeMeta: apiVersion = 1, kind = 2.
_TYPE_META: Final[Table] = {1: _str("apiVersion"), 2: _str("kind")}
_UNKNOWN_TYPE_META: Final = 1
_UNKNOWN_RAW: Final = 2
_UNKNOWN_CONTENT_ENCODING: Final = 3
_UNKNOWN_CONTENT_TYPE: Final = 4


# --------------------------------------------------------------------------- decoding


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _text(raw: bytes) -> str:
    # Go strings may hold invalid UTF-8; encoding/json replaces it with U+FFFD.
    return raw.decode("utf-8", errors="replace")


def _timestamp(raw: bytes, where: str) -> tuple[dt.datetime | None, int]:
    seconds = nanos = 0
    for num, wire, value in _fields(raw):
        if num in (1, 2):
            if wire != _VARINT or not isinstance(value, int):
                raise ProtobufError(f"{where}: malformed timestamp")
            if num == 1:
                seconds = _signed(value, 64)
            else:
                nanos = _signed(value, 32)
    if seconds == 0 and nanos == 0:
        return None, 0  # the zero time; JSON-encodes as null, so it is left out
    seconds += nanos // 1_000_000_000
    nanos %= 1_000_000_000
    try:
        moment = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    except (OverflowError, OSError, ValueError) as e:
        raise ProtobufError(f"{where}: timestamp out of range") from e
    return moment, nanos


def _map_entry(raw: bytes, value_type: T, where: str) -> tuple[str, str]:
    key = ""
    val: str = ""
    for num, wire, value in _fields(raw):
        if num not in (1, 2):
            continue
        if wire != _LEN or not isinstance(value, bytes):
            raise ProtobufError(f"{where}: malformed map entry")
        if num == 1:
            key = _text(value)
        elif value_type is T.MAP_BYTES:
            val = base64.b64encode(value).decode("ascii")
        else:
            val = _text(value)
    return key, val


def _scalar(f: Field, value: WireValue, where: str) -> Any:
    """Convert one non-message, non-map wire value to its JSON form."""
    if f.type is T.STRING:
        assert isinstance(value, bytes)
        return _text(value)
    if f.type is T.BYTES:
        assert isinstance(value, bytes)
        return base64.b64encode(value).decode("ascii")
    if f.type is T.INT32:
        assert isinstance(value, int)
        return _signed(value, 32)
    if f.type is T.INT64:
        assert isinstance(value, int)
        return _signed(value, 64)
    if f.type is T.BOOL:
        return bool(value)
    if f.type is T.FIELDS_V1:
        assert isinstance(value, bytes)
        raw = b""
        for num, wire, inner in _fields(value):
            if num == 1 and wire == _LEN and isinstance(inner, bytes):
                raw = inner
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise ProtobufError(f"{where}: fieldsV1 is not valid JSON") from e
    raise AssertionError(f"unhandled type {f.type}")  # pragma: no cover


def _is_zero(value: Any) -> bool:
    if isinstance(value, bool):
        return not value
    if isinstance(value, str | int | dict | list):
        return not value
    return value is None


def _value(f: Field, raw: WireValue, where: str) -> Any:
    if f.type is T.MESSAGE:
        assert isinstance(raw, bytes) and f.message is not None
        return _message(raw, f.message, where)
    if f.type in (T.TIME, T.MICRO_TIME):
        assert isinstance(raw, bytes)
        moment, nanos = _timestamp(raw, where)
        if moment is None:
            return None
        if f.type is T.TIME:
            return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos // 1000:06d}Z"
    return _scalar(f, raw, where)


def _message(buf: bytes, table: Table, where: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    # Singular sub-messages may be split over several occurrences, which protobuf
    # merges; concatenating their encodings and decoding once does exactly that.
    chunks: dict[int, list[bytes]] = {}
    for num, wire, value in _fields(buf):
        f = table.get(num)
        if f is None:
            continue  # unknown or deliberately unsupported field
        path = f"{where}.{f.name}" if where else f.name
        if wire != _WIRE_OF[f.type]:
            raise ProtobufError(f"{path}: unexpected wire type {wire}")
        if f.type in (T.MAP_STRING, T.MAP_BYTES):
            assert isinstance(value, bytes)
            k, v = _map_entry(value, f.type, path)
            out.setdefault(f.name, {})[k] = v
        elif f.repeated:
            out.setdefault(f.name, []).append(_value(f, value, path))
        elif f.type in (T.MESSAGE, T.TIME, T.MICRO_TIME):
            assert isinstance(value, bytes)
            chunks.setdefault(num, []).append(value)
        else:
            out[f.name] = _value(f, value, path)
    for num, parts in chunks.items():
        f = table[num]
        out[f.name] = _value(f, b"".join(parts), f"{where}.{f.name}" if where else f.name)
    ordered: dict[str, Any] = {}
    for f in table.values():  # table (Go struct) order rather than wire order
        if f.name in out:
            value = out[f.name]
            if value is None:
                continue
            if f.pointer or not _is_zero(value):
                ordered[f.name] = value
    return ordered


def _envelope(buf: bytes) -> tuple[str, str, bytes]:
    """Unwrap runtime.Unknown into (apiVersion, kind, raw object bytes)."""
    type_meta: list[bytes] = []
    raw: list[bytes] = []
    for num, wire, value in _fields(buf):
        if num not in (_UNKNOWN_TYPE_META, _UNKNOWN_RAW, _UNKNOWN_CONTENT_ENCODING,
                       _UNKNOWN_CONTENT_TYPE):
            continue
        if wire != _LEN or not isinstance(value, bytes):
            raise ProtobufError(f"malformed protobuf envelope (field {num})")
        if num == _UNKNOWN_TYPE_META:
            type_meta.append(value)
        elif num == _UNKNOWN_RAW:
            raw = [value]
        elif num == _UNKNOWN_CONTENT_ENCODING and value:
            raise ProtobufError(f"unsupported protobuf content encoding {_text(value)!r}")
        elif num == _UNKNOWN_CONTENT_TYPE and value and _text(value) != MEDIA_TYPE:
            raise ProtobufError(f"unsupported embedded content type {_text(value)!r}")
    meta = _message(b"".join(type_meta), _TYPE_META)
    return meta.get("apiVersion", ""), meta.get("kind", ""), b"".join(raw)


def decode(body: bytes) -> dict[str, Any]:
    """Decode an ``application/vnd.kubernetes.protobuf`` request body into its JSON form.

    The result always has ``apiVersion``, ``kind`` and ``metadata``; other fields
    appear only when set.  Raises ProtobufError for malformed bodies and for kinds
    outside SUPPORTED_KINDS.
    """
    if not body.startswith(MAGIC):
        raise ProtobufError("not a Kubernetes protobuf body (missing the 'k8s\\x00' prefix)")
    api_version, kind, raw = _envelope(bytes(body[len(MAGIC):]))
    if not api_version or not kind:
        raise ProtobufError("protobuf body has no apiVersion/kind in its type metadata")
    table = _KINDS.get((api_version, kind))
    if table is None:
        raise ProtobufError(
            f"this API server cannot decode {kind} ({api_version}) from protobuf; "
            "send it as JSON instead, e.g. with `kubectl apply -f` or `kubectl create -f`")
    obj = _message(raw, table)
    return {"apiVersion": api_version, "kind": kind,
            "metadata": obj.pop("metadata", {}), **obj}
