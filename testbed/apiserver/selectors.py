"""Label and field selectors with the grammar and the error answers of a real API server."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                  r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


class SelectorError(ValueError):
    """A selector the server cannot parse: answered with 400 BadRequest."""


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        # "!=" and "notin" match objects that lack the key, as in Kubernetes.
        return not present or labels[self.key] not in self.values


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside an `in (...)` set."""
    parts: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _check_key(key: str) -> str:
    if not _KEY.match(key) or len(key.split("/")[-1]) > 63:
        raise SelectorError(
            f"unable to parse requirement: invalid label key \"{key}\": name part must consist "
            "of alphanumeric characters, '-', '_' or '.', and must start and end with an "
            "alphanumeric character"
        )
    return key


def _check_value(value: str) -> str:
    if len(value) > 63 or not _VALUE.match(value):
        raise SelectorError(
            f"unable to parse requirement: invalid label value: \"{value}\": a valid label "
            "must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character"
        )
    return value


_SET_RE = re.compile(r"^\s*(\S+?)\s+(in|notin)\s*\((.*)\)\s*$")


def parse_label_selector(text: str | None) -> LabelSelector:
    if not text or not text.strip():
        return LabelSelector()
    reqs: list[Requirement] = []
    for raw in _split_top(text):
        part = raw.strip()
        if not part:
            raise SelectorError(f"unable to parse requirement: found '', expected: identifier "
                                f"in selector {text!r}")
        m = _SET_RE.match(part)
        if m:
            values = tuple(_check_value(v.strip()) for v in m.group(3).split(",") if v.strip())
            if not values:
                raise SelectorError(f"for '{m.group(2)}' operator, values set can't be empty")
            reqs.append(Requirement(_check_key(m.group(1)), m.group(2), tuple(sorted(values))))
            continue
        for op in ("!=", "==", "="):
            if op in part:
                key, _, value = part.partition(op)
                reqs.append(Requirement(_check_key(key.strip()), "!=" if op == "!=" else "=",
                                        (_check_value(value.strip()),)))
                break
        else:
            if part.startswith("!"):
                reqs.append(Requirement(_check_key(part[1:].strip()), "!"))
            elif " " in part or "(" in part or ")" in part:
                raise SelectorError(f"unable to parse requirement: {part!r}: unknown operator")
            else:
                reqs.append(Requirement(_check_key(part), "exists"))
    return LabelSelector(tuple(reqs))


def selector_from_label_selector_object(sel: Mapping[str, Any] | None) -> LabelSelector:
    """A metav1.LabelSelector (matchLabels / matchExpressions) as a matcher."""
    if not sel:
        return LabelSelector()
    reqs = [Requirement(k, "=", (v,)) for k, v in (sel.get("matchLabels") or {}).items()]
    for expr in sel.get("matchExpressions") or []:
        op = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}[
            expr["operator"]
        ]
        reqs.append(Requirement(expr["key"], op, tuple(expr.get("values") or ())))
    return LabelSelector(tuple(reqs))


def label_selector_string(sel: Mapping[str, Any] | None) -> str:
    """The string form scale subresources report in status.selector."""
    parts = [f"{k}={v}" for k, v in sorted((sel or {}).get("matchLabels", {}).items())]
    for expr in (sel or {}).get("matchExpressions") or []:
        op = expr["operator"]
        if op in ("In", "NotIn"):
            parts.append(f"{expr['key']} {op.lower()} ({','.join(expr.get('values') or [])})")
        elif op == "Exists":
            parts.append(expr["key"])
        else:
            parts.append("!" + expr["key"])
    return ",".join(parts)


class FieldLabels(tuple[str, ...]):
    """A kind's own field labels (beyond metadata.name and metadata.namespace), and how the
    kind's field label conversion refuses any other: kinds without a conversion of their own
    use apimachinery's default one, the older core kinds (and custom resources) say "field
    label not supported", and a few name their kind."""

    refusal: str

    def __new__(cls, labels: tuple[str, ...] = (), refusal: str = "default") -> FieldLabels:
        out = super().__new__(cls, labels)
        out.refusal = refusal
        return out

    def refuse(self, label: str) -> str:
        if self.refusal == "default":
            return (f'"{label}" is not a known field selector: only "metadata.name", '
                    '"metadata.namespace"')
        if self.refusal == "legacy":
            return f"field label not supported: {label}"
        return f'field label "{label}" not supported for {self.refusal}'


def _refuse(allowed: tuple[str, ...], label: str) -> str:
    return (allowed if isinstance(allowed, FieldLabels) else FieldLabels(allowed)).refuse(label)


@dataclass(frozen=True)
class FieldSelector:
    terms: tuple[tuple[str, bool, str], ...] = ()  # (field, equal?, value)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for fld, equal, value in self.terms:
            actual = field_value(obj, fld)
            if (actual == value) != equal:
                return False
        return True


def field_value(obj: Mapping[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    if isinstance(cur, Mapping):
        # Event source is matched on its component, as the real field label does.
        return str(cur.get("component", ""))
    return str(cur)


def parse_field_selector(text: str | None, allowed: tuple[str, ...]) -> FieldSelector:
    if not text or not text.strip():
        return FieldSelector()
    terms = []
    for raw in text.split(","):
        part = raw.strip()
        for op in ("!=", "==", "="):
            if op in part:
                fld, _, value = part.partition(op)
                fld = fld.strip()
                if fld not in ("metadata.name", "metadata.namespace", *allowed):
                    raise SelectorError(_refuse(allowed, fld))
                terms.append((fld, op != "!=", value.strip()))
                break
        else:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{part}'")
    return FieldSelector(tuple(terms))
