"""Structural-schema pruning, defaulting and validation of custom resources.

The testbed must accept and reject custom resources exactly like a real
kube-apiserver, and answer with the same error text, so that code tested here
behaves the same on a real cluster. The server's pipeline for a CR body is:

1. ``prune``: drop fields the structural schema does not specify, then drop
   ``null`` values of non-nullable fields that have no default;
2. ``apply_defaults``;
3. ``validate``: OpenAPI value validation (kube-openapi), followed by the
   ``x-kubernetes-list-type`` uniqueness checks.

Behaviour copied on purpose from the real server, even where it looks odd:

* Paths of schema errors are kube-openapi's: map keys are joined with a dot
  (``spec.labels.foo/bar``), list items indexed (``spec.items[0]``). Duplicate
  errors of list-type validation use apimachinery field paths, where map keys
  are bracketed (``spec.labels[foo/bar]``).
* Errors kube-openapi does not attach to a field (``anyOf``/``oneOf``/
  ``allOf``/``not`` failures, values out of the range of an ``int32``/``int64``
  format) are reported with the path ``<nil>`` and ``Invalid value: ""``.
* A type error ends with the Go-ish type of the value, not the value:
  ``spec.replicas: Invalid value: "string": spec.replicas in body must be of
  type integer: "string"``. Format errors are ``FieldValueTypeInvalid`` too.
* ``additionalProperties: true`` (or ``false``) keeps the key but prunes the
  value as if it had no schema: scalars survive, nested objects are emptied.
* A float with an integral value (``3.0``) is accepted for an integer field.

Not implemented:

* ``x-kubernetes-validations`` (CEL) rules are not evaluated; they are skipped
  silently, so violations are only caught by the controllers. Where the real
  server would skip them too (a schema error blocks them), it says so, and so
  does ``cel_skipped``.
* Validation ratcheting on update, validation of ``metadata`` of embedded
  resources, ``patternProperties``, ``dependencies`` and tuple ``items``.
* Formats ``uri``, ``email``, ``hostname``, ``isbn*``, ``creditcard``, ``ssn``,
  ``hexcolor``, ``rgbcolor``, ``duration`` and ``bsonobjectid`` are accepted
  unchecked; formats the server does not know are ignored, like it does.
* Patterns are Go RE2 syntax run on Python ``re``: ``$`` and ``\\z`` are
  translated to end-of-text and POSIX classes expanded; ``\\p{..}`` classes and
  other RE2-only syntax are reported as invalid patterns.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = [
    "DUPLICATE",
    "FORBIDDEN",
    "INVALID",
    "NIL_PATH",
    "NOT_SUPPORTED",
    "REQUIRED",
    "TOO_LONG",
    "TOO_MANY",
    "TYPE_INVALID",
    "FieldError",
    "apply_defaults",
    "cel_skipped",
    "has_validation_rules",
    "prune",
    "scale_errors",
    "validate",
]

Schema = dict[str, Any]

REQUIRED = "FieldValueRequired"
INVALID = "FieldValueInvalid"
NOT_SUPPORTED = "FieldValueNotSupported"
TYPE_INVALID = "FieldValueTypeInvalid"
TOO_LONG = "FieldValueTooLong"
TOO_MANY = "FieldValueTooMany"
DUPLICATE = "FieldValueDuplicate"
FORBIDDEN = "FieldValueForbidden"

# What the real server prints for an error that belongs to no field.
NIL_PATH = "<nil>"

_PRESERVE = "x-kubernetes-preserve-unknown-fields"
_EMBEDDED = "x-kubernetes-embedded-resource"
_INT_OR_STRING = "x-kubernetes-int-or-string"
_LIST_TYPE = "x-kubernetes-list-type"
_LIST_MAP_KEYS = "x-kubernetes-list-map-keys"
_META_FIELDS = frozenset({"apiVersion", "kind", "metadata"})

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_MAX_SAFE_INT = float(2**53 - 1)


@dataclass(frozen=True)
class FieldError:
    """One cause of an Invalid status, shaped like apimachinery's field.Error."""

    path: str
    type: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


# --------------------------------------------------------------------------
# Pruning
# --------------------------------------------------------------------------


def prune(obj: dict[str, Any], schema: Schema) -> list[str]:
    """Drop unspecified fields in place and return their paths, sorted.

    Like the server, non-nullable nulls without a default are dropped too
    (unreported): they would otherwise fail validation on every request.
    """
    pruned: list[str] = []
    _prune(obj, schema, "", pruned, root=True)
    _drop_nulls(obj, schema, root=True)
    return sorted(pruned)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _additional(schema: Schema) -> tuple[bool, Schema | None]:
    """Whether additionalProperties is set, and its schema (None for a bool)."""
    if "additionalProperties" not in schema:
        return False, None
    value = schema["additionalProperties"]
    return True, value if isinstance(value, dict) else None


def _prune(
    value: Any, schema: Schema | None, path: str, out: list[str], root: bool = False
) -> None:
    if schema is not None and schema.get(_PRESERVE):
        _prune_preserving(value, schema, path, out, root)
        return
    if isinstance(value, dict):
        if schema is None:
            for key in list(value):
                out.append(_join(path, key))
                del value[key]
            return
        embedded = root or bool(schema.get(_EMBEDDED))
        props: Schema = schema.get("properties") or {}
        has_additional, additional = _additional(schema)
        for key in list(value):
            if embedded and key in _META_FIELDS:
                continue
            if key in props:
                _prune(value[key], props[key], _join(path, key), out)
            elif has_additional:
                _prune(value[key], additional, _join(path, key), out)
            else:
                out.append(_join(path, key))
                del value[key]
    elif isinstance(value, list):
        items = schema.get("items") if schema is not None else None
        for i, item in enumerate(value):
            _prune(item, items if isinstance(items, dict) else None, f"{path}[{i}]", out)


def _prune_preserving(
    value: Any, schema: Schema | None, path: str, out: list[str], root: bool = False
) -> None:
    """Keep unknown fields, but still prune inside the fields the schema knows."""
    if schema is None:
        return
    if isinstance(value, dict):
        embedded = root or bool(schema.get(_EMBEDDED))
        props: Schema = schema.get("properties") or {}
        has_additional, additional = _additional(schema)
        for key, item in value.items():
            if embedded and key in _META_FIELDS:
                continue
            if key in props:
                _prune(item, props[key], _join(path, key), out)
            elif has_additional:
                _prune(item, additional, _join(path, key), out)
    elif isinstance(value, list):
        items = schema.get("items")
        for i, item in enumerate(value):
            _prune_preserving(item, items if isinstance(items, dict) else None, f"{path}[{i}]", out)


def _field_schema(schema: Schema | None, key: str) -> Schema | None:
    if schema is None:
        return None
    props: Schema = schema.get("properties") or {}
    if key in props:
        sub: Schema = props[key]
        return sub
    return _additional(schema)[1]


def _drop_nulls(value: Any, schema: Schema | None, root: bool = False) -> None:
    if isinstance(value, dict):
        for key in list(value):
            if root and key in _META_FIELDS:
                continue
            sub = _field_schema(schema, key)
            item = value[key]
            if (
                item is None
                and sub is not None
                and not sub.get("nullable")
                and sub.get("default") is None
            ):
                del value[key]
            else:
                _drop_nulls(item, sub)
    elif isinstance(value, list):
        items = schema.get("items") if schema is not None else None
        for item in value:
            _drop_nulls(item, items if isinstance(items, dict) else None)


# --------------------------------------------------------------------------
# Defaulting
# --------------------------------------------------------------------------


def apply_defaults(obj: dict[str, Any], schema: Schema) -> None:
    """Fill in schema defaults in place, as the server does after pruning.

    A null in a non-nullable field is replaced by its default as well.
    """
    _default(obj, schema, root=True)


def _non_nullable_null(value: Any, schema: Schema | None) -> bool:
    return value is None and schema is not None and not schema.get("nullable")


def _default(value: Any, schema: Schema | None, root: bool = False) -> None:
    if schema is None:
        return
    if isinstance(value, dict):
        props: Schema = schema.get("properties") or {}
        for key, prop in props.items():
            if root and key == "metadata":
                continue
            default = prop.get("default")
            if default is None:
                continue
            if key not in value or _non_nullable_null(value[key], prop):
                value[key] = copy.deepcopy(default)
        has_additional, additional = _additional(schema)
        for key in list(value):
            if root and key == "metadata":
                continue
            if key in props:
                _default(value[key], props[key])
            elif has_additional:
                if additional is not None and _non_nullable_null(value[key], additional):
                    value[key] = copy.deepcopy(additional.get("default"))
                _default(value[key], additional)
    elif isinstance(value, list):
        items = schema.get("items")
        if not isinstance(items, dict):
            return
        for i in range(len(value)):
            if _non_nullable_null(value[i], items):
                value[i] = copy.deepcopy(items.get("default"))
            _default(value[i], items)


# --------------------------------------------------------------------------
# Go-compatible value formatting (for messages identical to the server's)
# --------------------------------------------------------------------------

_GO_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    '"': '\\"',
    "\\": "\\\\",
}

_JSON_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def _go_quote(text: str) -> str:
    """Go's %q (strconv.Quote)."""
    out = ['"']
    for ch in text:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            if code < 0x80:
                out.append(f"\\x{code:02x}")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _float_digits(value: float) -> tuple[bool, str, int]:
    """Shortest round-trip digits of a finite non-zero float and the decimal point position."""
    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    point = len(text) + exponent
    return bool(sign), text.rstrip("0") or "0", point


def _fmt_e(neg: bool, digits: str, point: int) -> str:
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    exp = point - 1
    return f"{'-' if neg else ''}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"


def _fmt_f(neg: bool, digits: str, point: int) -> str:
    if point <= 0:
        text = "0." + "0" * -point + digits
    elif point >= len(digits):
        text = digits + "0" * (point - len(digits))
    else:
        text = digits[:point] + "." + digits[point:]
    return ("-" if neg else "") + text


def _go_float(value: float) -> str:
    """Go's %v of a float64 (shortest %g, exponent form from 1e+06 up)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    neg, digits, point = _float_digits(value)
    exp = point - 1
    if exp < -4 or exp >= 6:
        return _fmt_e(neg, digits, point)
    return _fmt_f(neg, digits, point)


def _go_json_float(value: float) -> str:
    if value == 0 or not math.isfinite(value):
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    neg, digits, point = _float_digits(value)
    if abs(value) < 1e-6 or abs(value) >= 1e21:
        text = _fmt_e(neg, digits, point)
        return re.sub(r"e-0(\d)$", r"e-\1", text)
    return _fmt_f(neg, digits, point)


def _go_json_str(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in _JSON_ESCAPES:
            out.append(_JSON_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _go_json(value: Any) -> str:
    """Go's encoding/json rendering (sorted keys, HTML-safe, compact)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_json_float(value)
    if isinstance(value, str):
        return _go_json_str(value)
    if isinstance(value, dict):
        items = ",".join(f"{_go_json_str(str(k))}:{_go_json(value[k])}" for k in sorted(value))
        return "{" + items + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_go_json(v) for v in value) + "]"
    return _go_json_str(str(value))


def _go_value(value: Any) -> str:
    """How field.Error prints a bad value: %q strings, %v numbers, JSON otherwise."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        return _go_quote(value)
    return _go_json(value)


# --------------------------------------------------------------------------
# Error constructors (kube-openapi message + apiextensions conversion)
# --------------------------------------------------------------------------


def _kube_path(name: str) -> str:
    if not name or name == ".":
        return NIL_PATH
    return name[1:] if name.startswith(".") else name


def _err_invalid(name: str, value: Any, message: str) -> FieldError:
    return FieldError(_kube_path(name), INVALID, f"Invalid value: {_go_value(value)}: {message}")


def _err_type(name: str, expected: str, actual: str) -> FieldError:
    message = f"{name} in body must be of type {expected}: {_go_quote(actual)}"
    return FieldError(
        _kube_path(name), TYPE_INVALID, f"Invalid value: {_go_quote(actual)}: {message}"
    )


def _err_unattached(message: str) -> FieldError:
    return FieldError(NIL_PATH, INVALID, f'Invalid value: "": {message}')


def _err_required(name: str) -> FieldError:
    return FieldError(_kube_path(name), REQUIRED, "Required value")


def _err_enum(name: str, value: Any, allowed: list[Any]) -> FieldError:
    quoted = ", ".join(_go_quote(v if isinstance(v, str) else _go_json(v)) for v in allowed)
    return FieldError(
        _kube_path(name),
        NOT_SUPPORTED,
        f"Unsupported value: {_go_value(value)}: supported values: {quoted}",
    )


def _err_too_long(name: str, limit: int) -> FieldError:
    unit = "byte" if limit == 1 else "bytes"
    return FieldError(_kube_path(name), TOO_LONG, f"Too long: may not be more than {limit} {unit}")


def _err_too_many(name: str, actual: int, limit: int) -> FieldError:
    unit = "item" if limit == 1 else "items"
    return FieldError(
        _kube_path(name), TOO_MANY, f"Too many: {actual}: must have at most {limit} {unit}"
    )


def _err_duplicate(path: str, value: Any) -> FieldError:
    return FieldError(path, DUPLICATE, f"Duplicate value: {_go_value(value)}")


# --------------------------------------------------------------------------
# The scale subresource's paths, and the CEL rules' gate
# --------------------------------------------------------------------------


def _go_v(value: Any) -> str:
    """Go's %v of a decoded JSON value."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go_v(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, list):
        return "[" + " ".join(_go_v(v) for v in value) + "]"
    return str(value)


def _go_type(value: Any) -> str:
    """Go's %T of a decoded JSON value."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, dict):
        return "map[string]interface {}"
    if isinstance(value, list):
        return "[]interface {}"
    return "string"


def _nested(obj: dict[str, Any], path: str, expected: str,
            want: Callable[[Any], bool]) -> tuple[bool, Any, str | None]:
    """unstructured.Nested*: (found, value, accessor error) at a dotted path."""
    fields = path.removeprefix(".").split(".")
    cur: Any = obj
    for i, f in enumerate(fields):
        if cur is None:
            return False, None, None
        if not isinstance(cur, dict):
            return False, None, (f".{'.'.join(fields[:i])} accessor error: {_go_v(cur)} is of "
                                 f"the type {_go_type(cur)}, expected map[string]interface{{}}")
        if f not in cur:
            return False, None, None
        cur = cur[f]
    if not want(cur):
        return True, None, (f".{'.'.join(fields)} accessor error: {_go_v(cur)} is of the type "
                            f"{_go_type(cur)}, expected {expected}")
    return True, cur, None


def _is_int64(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def scale_errors(obj: dict[str, Any], scale: dict[str, Any]) -> list[FieldError]:
    """What the scale subresource's validation finds at its paths (the custom resource
    validator's ValidateScaleSpec and ValidateScaleStatus): replicas must be int64s in
    [0, MaxInt32], the selector a string; a missing field is no error."""
    errors: list[FieldError] = []
    for key in ("specReplicasPath", "statusReplicasPath"):
        path = scale.get(key)
        if not path:
            continue
        _found, value, err = _nested(obj, path, "int64", _is_int64)
        if err is not None:
            errors.append(FieldError(path, INVALID, f"Invalid value: 0: {err}"))
        elif value is not None and value < 0:
            errors.append(FieldError(path, INVALID,
                                     f"Invalid value: {value}: should be a non-negative integer"))
        elif value is not None and value > 2**31 - 1:
            errors.append(FieldError(path, INVALID, f"Invalid value: {value}: should be less "
                                     "than or equal to 2147483647"))
    selector = scale.get("labelSelectorPath")
    if selector:
        _found, _value, err = _nested(obj, selector, "string", lambda v: isinstance(v, str))
        if err is not None:
            errors.append(FieldError(selector, INVALID, f'Invalid value: "": {err}'))
    return errors


def has_validation_rules(schema: Any) -> bool:
    """Whether a version's schema has x-kubernetes-validations anywhere (the server then
    builds a CEL validator for it)."""
    if isinstance(schema, dict):
        if schema.get("x-kubernetes-validations"):
            return True
        return any(has_validation_rules(v) for v in schema.values())
    if isinstance(schema, list):
        return any(has_validation_rules(v) for v in schema)
    return False


_BLOCKING = frozenset({NOT_SUPPORTED, REQUIRED, TOO_LONG, TOO_MANY, TYPE_INVALID})


def cel_skipped(error_types: list[str]) -> FieldError | None:
    """The error the server adds instead of evaluating CEL rules when an earlier error of a
    blocking type (a wrong type, a missing field, an unsupported value, too long, too many)
    makes the object unfit for them."""
    if not any(t in _BLOCKING for t in error_types):
        return None
    return FieldError(NIL_PATH, INVALID, "Invalid value: null: some validation rules were not "
                      "checked because the object was invalid; correct the existing errors to "
                      "complete validation")


# --------------------------------------------------------------------------
# Value validation
# --------------------------------------------------------------------------


class _Result:
    """Errors plus kube-openapi's match count, which decides anyOf/oneOf reporting."""

    __slots__ = ("errors", "matches")

    def __init__(self) -> None:
        self.errors: list[FieldError] = []
        self.matches = 0

    @property
    def valid(self) -> bool:
        return not self.errors

    def merge(self, other: _Result) -> None:
        self.errors.extend(other.errors)
        self.matches += other.matches


def validate(obj: dict[str, Any], schema: Schema) -> list[FieldError]:
    """All validation errors of a custom resource, deterministically ordered.

    Schema errors come first, in the order of the object's fields (the server
    walks Go maps, so its order varies), then list-type duplicate errors, as the
    server appends them after the schema errors. ``metadata`` at the root is
    left to the server's ObjectMeta validation.
    """
    result = _validate(schema, obj, "", root=True)
    seen: set[FieldError] = set()
    errors: list[FieldError] = []
    for error in result.errors:
        if error not in seen:
            seen.add(error)
            errors.append(error)
    _list_type_errors(obj, schema, "", errors, root=True)
    return errors


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        # The server decodes integers beyond int64 as float64.
        return "integer" if _INT64_MIN <= value <= _INT64_MAX else "number"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    return "object"


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _types(schema: Schema) -> list[str]:
    if schema.get(_INT_OR_STRING):
        return ["integer", "string"]
    declared = schema.get("type")
    if not declared:
        return []
    return [declared] if isinstance(declared, str) else list(declared)


# Formats the server validates (names normalised without dashes).
_SUPPORTED_FORMATS = frozenset(
    {
        "bsonobjectid", "uri", "email", "hostname", "ipv4", "ipv6", "cidr", "mac",
        "uuid", "uuid3", "uuid4", "uuid5", "isbn", "isbn10", "isbn13", "creditcard",
        "ssn", "hexcolor", "rgbcolor", "byte", "password", "date", "duration",
        "datetime", "k8sshortname", "k8slongname",
    }
)  # fmt: skip


def _effective_format(schema: Schema, types: list[str]) -> str:
    """The format the server keeps after stripping the ones it does not support."""
    fmt = schema.get("format")
    if not fmt or not isinstance(fmt, str):
        return ""
    single = types[0] if len(types) == 1 else ""
    if single in ("", "string"):
        return fmt if fmt.replace("-", "") in _SUPPORTED_FORMATS else ""
    if single == "integer":
        return fmt if fmt in ("int32", "int64") else ""
    if single == "number":
        return fmt if fmt in ("float", "double") else ""
    return ""


def _validate(schema: Schema, data: Any, path: str, root: bool = False) -> _Result:
    """One kube-openapi SchemaValidator pass: its validators in their order."""
    result = _Result()
    types = _types(schema)
    fmt = _effective_format(schema, types)
    if data is None:
        result.merge(_check_type(types, bool(schema.get("nullable")), fmt, None, path))
        result.merge(_check_enum(schema, None, path))
        return result
    kind = _kind(data)
    steps: list[Callable[[], _Result]] = []
    if types or fmt:
        steps.append(lambda: _check_type(types, bool(schema.get("nullable")), fmt, data, path))
    steps.append(lambda: _check_composition(schema, data, path, root))
    if kind == "string":
        steps.append(lambda: _check_string(schema, data, path))
        if fmt.replace("-", "") in _SUPPORTED_FORMATS:
            steps.append(lambda: _check_format(fmt, data, path))
    if kind in ("integer", "number"):
        steps.append(lambda: _check_number(schema, types, fmt, data, path))
    if kind == "array":
        steps.append(lambda: _check_array(schema, data, path))
    steps.append(lambda: _check_enum(schema, data, path))
    if kind == "object":
        steps.append(lambda: _check_object(schema, data, path, root))
    for step in steps:
        result.merge(step())
        result.matches += 1
    result.matches += 1
    return result


def _is_json_integer(value: float) -> bool:
    """swag.IsFloat64AJSONInteger: an integral float within +-(2^53-1)."""
    if not math.isfinite(value) or abs(value) > _MAX_SAFE_INT:
        return False
    rounded = float(round(value))
    if value == rounded:
        return True
    if rounded == 0:
        return False
    return abs(value - rounded) < 1e-9 * abs(rounded)


def _check_type(types: list[str], nullable: bool, fmt: str, data: Any, path: str) -> _Result:
    result = _Result()
    if data is None:
        if types and "null" not in types and not nullable:
            result.errors.append(_err_type(path, ",".join(types), "null"))
        else:
            result.matches = 1
        return result
    kind = _kind(data)
    data_format = {"integer": "int64", "number": "float64"}.get(kind, "")
    float_int = kind == "number" and "integer" in types and _is_json_integer(_as_float(data))
    int_float = kind == "integer" and "number" in types
    if (
        kind not in ("string", "array")
        and fmt
        and not (kind in types or data_format == fmt or float_int or int_float)
    ):
        result.errors.append(_err_type(path, fmt, data_format))
        return result
    numeric = "number" in types or "integer" in types
    if not numeric and fmt and kind in ("string", "array"):
        result.matches = 1
        return result
    if not (kind in types or float_int or int_float):
        result.errors.append(_err_type(path, ",".join(types), kind))
        return result
    result.matches = 1
    return result


def _check_composition(schema: Schema, data: Any, path: str, root: bool) -> _Result:
    main = _Result()
    quoted = _go_quote(path)

    any_of = schema.get("anyOf")
    if any_of:
        best: _Result | None = None
        success: _Result | None = None
        for sub in any_of:
            outcome = _validate(sub, data, path, root)
            if outcome.valid:
                best, success = None, outcome
                break
            if best is None or outcome.matches > best.matches:
                best = outcome
        if success is None:
            main.errors.append(
                _err_unattached(f"{quoted} must validate at least one schema (anyOf)")
            )
        if best is not None:
            main.merge(best)
        elif success is not None:
            main.merge(success)

    one_of = schema.get("oneOf")
    if one_of:
        best = None
        success = None
        valid_count = 0
        for sub in one_of:
            outcome = _validate(sub, data, path, root)
            if outcome.valid:
                valid_count += 1
                best = None
                success = success or outcome
                continue
            if valid_count == 0 and (best is None or outcome.matches > best.matches):
                best = outcome
        if valid_count != 1:
            found = (
                "Found none valid"
                if valid_count == 0
                else f"Found {valid_count} valid alternatives"
            )
            main.errors.append(
                _err_unattached(f"{quoted} must validate one and only one schema (oneOf). {found}")
            )
            if best is not None:
                main.merge(best)
        elif success is not None:
            main.merge(success)

    all_of = schema.get("allOf")
    if all_of:
        valid_count = 0
        for sub in all_of:
            outcome = _validate(sub, data, path, root)
            valid_count += outcome.valid
            main.merge(outcome)
        if valid_count != len(all_of):
            suffix = ". None validated" if valid_count == 0 else ""
            main.errors.append(
                _err_unattached(f"{quoted} must validate all the schemas (allOf){suffix}")
            )

    not_schema = schema.get("not")
    if isinstance(not_schema, dict) and _validate(not_schema, data, path, root).valid:
        main.errors.append(_err_unattached(f"{quoted} must not validate the schema (not)"))

    main.matches += 1
    return main


def _check_string(schema: Schema, text: str, path: str) -> _Result:
    """maxLength, minLength, pattern; like the server, only the first failure counts."""
    result = _Result()
    length = len(text)
    max_length = schema.get("maxLength")
    if max_length is not None and length > max_length:
        result.errors.append(_err_too_long(path, int(max_length)))
        return result
    min_length = schema.get("minLength")
    if min_length is not None and length < min_length:
        message = f"{path} in body should be at least {int(min_length)} chars long"
        result.errors.append(_err_invalid(path, text, message))
        return result
    pattern = schema.get("pattern")
    if pattern:
        try:
            matched = _compile_pattern(pattern).search(text) is not None
        except re.error as exc:
            message = f"{path} in body should match '{pattern}, but pattern is invalid: {exc}'"
            result.errors.append(_err_invalid(path, text, message))
            return result
        if not matched:
            message = f"{path} in body should match '{pattern}'"
            result.errors.append(_err_invalid(path, text, message))
    return result


def _check_format(fmt: str, text: str, path: str) -> _Result:
    result = _Result()
    checker = _FORMAT_CHECKS.get(fmt.replace("-", ""))
    if checker is not None and not checker(text):
        message = f"{path} in body must be of type {fmt}: {_go_quote(text)}"
        result.errors.append(
            FieldError(
                _kube_path(path), TYPE_INVALID, f"Invalid value: {_go_quote(text)}: {message}"
            )
        )
    return result


def _range_error(value: Any, type_name: str, fmt: str, prefix: str, path: str) -> str | None:
    """kube-openapi's check that a number fits the declared numeric format."""
    if type_name == "integer":
        bits = 32 if fmt == "int32" else 64
        if isinstance(value, int) and not isinstance(value, bool):
            number: int | None = value
        else:
            as_float = _as_float(value)
            number = int(as_float) if math.isfinite(as_float) and as_float.is_integer() else None
        ok = number is not None and -(1 << (bits - 1)) <= number < (1 << (bits - 1))
    elif fmt == "float":
        try:
            struct.pack("f", _as_float(value))
            ok = True
        except OverflowError:
            ok = False
    else:
        ok = True
    if ok:
        return None
    if fmt:
        return f"{prefix} value must be of type {type_name} with format {fmt} in {path}"
    return f"{prefix} value must be of type {type_name} (default format) in {path}"


def _check_number(schema: Schema, types: list[str], fmt: str, value: Any, path: str) -> _Result:
    type_name, num_format = "", ""
    if len(types) == 1 and types[0] == "integer":
        type_name, num_format = "integer", fmt if fmt in ("int32", "int64") else ""
    elif len(types) == 1 and types[0] == "number":
        type_name, num_format = "number", fmt if fmt in ("float", "double") else ""
    native_int = _kind(value) == "integer"
    as_float = _as_float(value)

    result = _Result()
    checked = _range_error(value, type_name, num_format, "Checked", path)
    if checked:
        result.errors.append(_err_unattached(checked))

    def bound_errors(
        key: str, prefix: str, check: Callable[[bool, Any, float], FieldError | None]
    ) -> None:
        bound = schema.get(key)
        if bound is None:
            return
        bound_f = float(bound)
        range_msg = _range_error(bound_f, type_name, num_format, prefix, path)
        if range_msg:
            result.errors.append(_err_unattached(range_msg))
        error = check(native_int and not range_msg, value if native_int else as_float, bound_f)
        if error is not None:
            result.errors.append(error)

    def multiple_of(native: bool, data: Any, factor: float) -> FieldError | None:
        if native:
            int_factor = int(factor)
            if int_factor <= 0:
                return _err_invalid(
                    path,
                    int_factor,
                    f"factor MultipleOf declared for {path} must be positive: {int_factor}",
                )
            if data % int_factor:
                return _err_invalid(
                    path, data, f"{path} in body should be a multiple of {int_factor}"
                )
            return None
        data = float(data)
        if factor <= 0:
            return _err_invalid(
                path,
                factor,
                f"factor MultipleOf declared for {path} must be positive: {_go_float(factor)}",
            )
        quotient = (1 / factor * data) if factor < 1 else data / factor
        if not _is_json_integer(quotient):
            return _err_invalid(
                path, data, f"{path} in body should be a multiple of {_go_float(factor)}"
            )
        return None

    def minimum(native: bool, data: Any, bound: float) -> FieldError | None:
        exclusive = schema.get("exclusiveMinimum") is True
        limit: Any = int(bound) if native else bound
        data = data if native else float(data)
        if (data <= limit) if exclusive else (data < limit):
            shown = str(limit) if native else _go_float(limit)
            relation = "greater than" if exclusive else "greater than or equal to"
            return _err_invalid(path, data, f"{path} in body should be {relation} {shown}")
        return None

    def maximum(native: bool, data: Any, bound: float) -> FieldError | None:
        exclusive = schema.get("exclusiveMaximum") is True
        limit: Any = int(bound) if native else bound
        data = data if native else float(data)
        if (data >= limit) if exclusive else (data > limit):
            shown = str(limit) if native else _go_float(limit)
            relation = "less than" if exclusive else "less than or equal to"
            return _err_invalid(path, data, f"{path} in body should be {relation} {shown}")
        return None

    bound_errors("multipleOf", "MultipleOf", multiple_of)
    bound_errors("minimum", "Minimum boundary", minimum)
    bound_errors("maximum", "Maximum boundary", maximum)
    result.matches = 1
    return result


def _strict_equal(a: Any, b: Any) -> bool:
    """reflect.DeepEqual on decoded JSON: 1, 1.0 and True all differ."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_strict_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_strict_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _check_array(schema: Schema, data: list[Any], path: str) -> _Result:
    result = _Result()
    items = schema.get("items")
    if isinstance(items, dict):
        for i, item in enumerate(data):
            result.merge(_validate(items, item, f"{path}[{i}]"))
    size = len(data)
    min_items = schema.get("minItems")
    if min_items is not None and size < min_items:
        message = f"{path} in body should have at least {int(min_items)} items"
        result.errors.append(_err_invalid(path, size, message))
    max_items = schema.get("maxItems")
    if max_items is not None and size > max_items:
        result.errors.append(_err_too_many(path, size, int(max_items)))
    if schema.get("uniqueItems") and any(
        _strict_equal(data[i], data[j]) for i in range(size) for j in range(i)
    ):
        result.errors.append(_err_invalid(path, "", f"{path} in body shouldn't contain duplicates"))
    result.matches += 1
    return result


def _enum_match(data: Any, allowed: Any) -> bool:
    """Go's enum check: convert the value to the enum member's type, then compare."""
    if isinstance(allowed, bool) or isinstance(data, bool):
        return isinstance(allowed, bool) and isinstance(data, bool) and data == allowed
    if isinstance(allowed, int) and isinstance(data, int | float):
        return (isinstance(data, int) or math.isfinite(data)) and int(data) == allowed
    if isinstance(allowed, float) and isinstance(data, int | float):
        return _as_float(data) == allowed
    return _strict_equal(data, allowed)


def _check_enum(schema: Schema, data: Any, path: str) -> _Result:
    result = _Result()
    allowed = schema.get("enum")
    if not allowed:
        return result
    if data is not None and any(a is not None and _enum_match(data, a) for a in allowed):
        return result
    result.errors.append(_err_enum(path, data, list(allowed)))
    return result


def _check_object(schema: Schema, data: dict[str, Any], path: str, root: bool) -> _Result:
    result = _Result()
    size = len(data)
    min_props = schema.get("minProperties")
    if min_props is not None and size < min_props:
        message = f"{path} in body should have at least {int(min_props)} properties"
        result.errors.append(_err_invalid(path, size, message))
    max_props = schema.get("maxProperties")
    if max_props is not None and size > max_props:
        result.errors.append(_err_too_many(path, size, int(max_props)))

    props: Schema = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    for key, value in data.items():
        if root and key == "metadata":
            continue
        if key in props:
            result.merge(_validate(props[key], value, _join(path, key)))
        elif additional is False:
            message = f"{path}.{key} in body is a forbidden property"
            result.errors.append(_err_invalid(path, key, message))
        elif isinstance(additional, dict):
            result.merge(_validate(additional, value, f"{path}.{key}"))

    for key in schema.get("required") or []:
        if key not in data:
            result.errors.append(_err_required(f"{path}.{key}"))
    return result


# --------------------------------------------------------------------------
# x-kubernetes-list-type
# --------------------------------------------------------------------------


class _Unspecified:
    """Stands for a list-map entry without its key field."""


_UNSPECIFIED = _Unspecified()


def _list_type_errors(
    data: Any, schema: Schema | None, path: str, out: list[FieldError], root: bool = False
) -> None:
    if schema is None:
        return
    if isinstance(data, dict):
        props: Schema = schema.get("properties") or {}
        additional = _additional(schema)[1]
        for key, value in data.items():
            if root and key == "metadata":
                continue
            if key in props:
                _list_type_errors(value, props[key], _join(path, key), out)
            elif additional is not None:
                _list_type_errors(value, additional, f"{path}[{key}]", out)
    elif isinstance(data, list):
        list_type = schema.get(_LIST_TYPE)
        if list_type == "set":
            out.extend(_err_duplicate(f"{path}[{i}]", data[i]) for i in _non_unique(data))
        elif list_type == "map":
            out.extend(_list_map_errors(schema, data, path))
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(data):
                _list_type_errors(item, items, f"{path}[{i}]", out)


def _identity(value: Any) -> tuple[str, Any]:
    """Set-member identity as Go sees it: compounds by JSON, scalars by type and value."""
    if isinstance(value, dict | list | tuple):
        return ("json", _go_json(value))
    if isinstance(value, _Unspecified):
        return ("unspecified", None)
    return (type(value).__name__, value)


def _non_unique(values: list[Any]) -> list[int]:
    """Index of the second occurrence of every repeated value."""
    seen: dict[tuple[str, Any], int] = {}
    repeated: list[int] = []
    for i, value in enumerate(values):
        key = _identity(value)
        count = seen.get(key, 0)
        if count == 1:
            repeated.append(i)
        seen[key] = count + 1
    return repeated


def _list_map_errors(schema: Schema, data: list[Any], path: str) -> list[FieldError]:
    for i, entry in enumerate(data):
        if entry is not None and not isinstance(entry, dict):
            message = "must be an object for an array of list-type map"
            return [
                FieldError(f"{path}[{i}]", INVALID, f"Invalid value: {_go_value(entry)}: {message}")
            ]
    if len(data) <= 1:
        return []
    key_fields: list[str] = list(schema.get(_LIST_MAP_KEYS) or [])
    if len(key_fields) == 1:
        field = key_fields[0]
        keys = [
            _UNSPECIFIED if entry is None or field not in entry else entry[field] for entry in data
        ]
        return [
            _err_duplicate(f"{path}[{i}]", {} if keys[i] is _UNSPECIFIED else {field: keys[i]})
            for i in _non_unique(keys)
        ]
    tuples = [
        {} if entry is None else {k: entry[k] for k in key_fields if k in entry} for entry in data
    ]
    return [_err_duplicate(f"{path}[{i}]", tuples[i]) for i in _non_unique(tuples)]


# --------------------------------------------------------------------------
# Go regular expressions and string formats
# --------------------------------------------------------------------------

_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7f",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}

_MULTILINE_FLAG = re.compile(r"\(\?[a-zA-Z]*m[a-zA-Z]*[:)]")


def _translate_go_regex(pattern: str) -> str:
    """Rewrite the RE2 constructs whose meaning differs in Python's re."""
    multiline = _MULTILINE_FLAG.search(pattern) is not None
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        ch = pattern[i]
        if ch == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            out.append("\\Z" if nxt == "z" and not in_class else ch + nxt)
            i += 2
            continue
        if in_class:
            if pattern.startswith("[:", i):
                end = pattern.find(":]", i + 2)
                name = pattern[i + 2 : end] if end != -1 else ""
                if name in _POSIX_CLASSES:
                    out.append(_POSIX_CLASSES[name])
                    i = end + 2
                    continue
            if ch == "]":
                in_class = False
            elif ch in "[&~|":
                ch = "\\" + ch
            out.append(ch)
            i += 1
            continue
        if ch == "[":
            in_class = True
            out.append(ch)
            i += 1
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            if i < n and pattern[i] == "]":
                out.append("\\]")
                i += 1
            continue
        out.append("\\Z" if ch == "$" and not multiline else ch)
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def _compile_pattern(pattern: str) -> re.Pattern[str]:
    # RE2's \d, \w, \s and \b are ASCII-only.
    return re.compile(_translate_go_regex(pattern), re.ASCII)


_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})\Z")
_TIME = re.compile(r"([0-9]{2}):([0-9]{2}):([0-9]{2})(.[0-9]+)?(z|([+-][0-9]{2}:[0-9]{2}))\Z")
_BASE64 = re.compile(
    r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})\Z"
)
_UUID = {
    "uuid": re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\Z", re.I),
    "uuid3": re.compile(
        r"[0-9a-f]{8}-?[0-9a-f]{4}-?3[0-9a-f]{3}-?[0-9a-f]{4}-?[0-9a-f]{12}\Z", re.I
    ),
    "uuid4": re.compile(
        r"[0-9a-f]{8}-?[0-9a-f]{4}-?4[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}\Z", re.I
    ),
    "uuid5": re.compile(
        r"[0-9a-f]{8}-?[0-9a-f]{4}-?5[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}\Z", re.I
    ),
}
_SHORT_NAME = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SHORT_NAME_RE = re.compile(_SHORT_NAME + r"\Z")
_LONG_NAME_RE = re.compile(_SHORT_NAME + r"(\." + _SHORT_NAME + r")*\Z")
_HEX = frozenset("0123456789abcdefABCDEF")


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _is_date(text: str) -> bool:
    match = _DATE.match(text)
    if not match:
        return False
    year, month, day = (int(g) for g in match.groups())
    return 1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)


def _is_date_time(text: str) -> bool:
    """strfmt.IsDateTime, quirks included (split on every 't', lexical range checks)."""
    if len(text) < 4:
        return False
    parts = text.lower().split("t")
    if len(parts) < 2 or not _is_date(parts[0]):
        return False
    match = _TIME.match(parts[1])
    if not match:
        return False
    return match[1] <= "23" and match[2] <= "59" and match[3] <= "59"


def _is_ipv4_sloppy(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(
        p and p.isascii() and p.isdigit() and int(p) <= 255 for p in parts
    )


def _is_ipv6(text: str) -> bool:
    if ":" not in text or "%" in text:
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _is_ipv4_format(text: str) -> bool:
    return "." in text and (_is_ipv6(text) if ":" in text else _is_ipv4_sloppy(text))


def _is_cidr(text: str) -> bool:
    address, sep, prefix = text.partition("/")
    if not sep or not prefix.isascii() or not prefix.isdigit():
        return False
    if ":" in address:
        return _is_ipv6(address) and int(prefix) <= 128
    return _is_ipv4_sloppy(address) and int(prefix) <= 32


def _is_mac(text: str) -> bool:
    for sep in ":-":
        groups = text.split(sep)
        if len(groups) in (6, 8, 20) and all(len(g) == 2 and set(g) <= _HEX for g in groups):
            return True
    groups = text.split(".")
    return len(groups) in (3, 4, 10) and all(len(g) == 4 and set(g) <= _HEX for g in groups)


def _matches(regex: re.Pattern[str], max_len: int | None = None) -> Callable[[str], bool]:
    def check(text: str) -> bool:
        return (max_len is None or len(text) <= max_len) and regex.match(text) is not None

    return check


_FORMAT_CHECKS: dict[str, Callable[[str], bool]] = {
    "datetime": _is_date_time,
    "date": _is_date,
    "byte": _matches(_BASE64),
    "password": lambda text: True,
    **{name: _matches(regex) for name, regex in _UUID.items()},
    "ipv4": _is_ipv4_format,
    "ipv6": _is_ipv6,
    "cidr": _is_cidr,
    "mac": _is_mac,
    "k8sshortname": _matches(_SHORT_NAME_RE, 63),
    "k8slongname": _matches(_LONG_NAME_RE, 253),
}
