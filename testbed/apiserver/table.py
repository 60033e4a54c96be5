"""Server-side printing (`meta.k8s.io/v1` Table), which `kubectl get` asks for and prints as is."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from .resources import PrinterColumn, ResourceType

_AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp",
                     "CreationTimestamp is a timestamp representing the server time when this "
                     "object was created.")

_BUILTIN_COLUMNS: dict[str, list[PrinterColumn]] = {
    "Namespace": [PrinterColumn("Status", "string", ".status.phase"), _AGE],
    "Secret": [PrinterColumn("Type", "string", ".type"),
               PrinterColumn("Data", "integer", ".data", format="count"), _AGE],
    "ConfigMap": [PrinterColumn("Data", "integer", ".data", format="count"), _AGE],
    "Deployment": [PrinterColumn("Ready", "string", ".status.readyReplicas", format="ratio"),
                   PrinterColumn("Up-to-date", "integer", ".status.updatedReplicas"),
                   PrinterColumn("Available", "integer", ".status.availableReplicas"), _AGE],
    "Pod": [PrinterColumn("Status", "string", ".status.phase"), _AGE],
    "Lease": [PrinterColumn("Holder", "string", ".spec.holderIdentity"), _AGE],
    "CustomResourceDefinition": [PrinterColumn("Created At", "date",
                                               ".metadata.creationTimestamp")],
    "Event": [PrinterColumn("Type", "string", ".type"),
              PrinterColumn("Reason", "string", ".reason"),
              PrinterColumn("Object", "string", ".involvedObject.name"),
              PrinterColumn("Message", "string", ".message")],
}


def columns_for(rt: ResourceType, version: str) -> list[PrinterColumn]:
    if rt.custom:
        return rt.columns.get(version) or [_AGE]
    return _BUILTIN_COLUMNS.get(rt.kind, [_AGE])


_SEGMENT = re.compile(r"\.([A-Za-z0-9_\-]+)|\[(\d+)\]|\[\?\(@\.([A-Za-z0-9_.\-]+)\s*==\s*"
                      r"[\"']([^\"']*)[\"']\)\]|\[\*\]")


def jsonpath(obj: Any, path: str) -> list[Any]:
    """The subset of JSONPath printer columns use: fields, indexes, [*] and ==-filters."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    if not path.startswith("."):
        path = "." + path
    cur = [obj]
    pos = 0
    while pos < len(path):
        m = _SEGMENT.match(path, pos)
        if not m:
            return []
        pos = m.end()
        nxt: list[Any] = []
        for c in cur:
            if m.group(1) is not None and isinstance(c, dict) and m.group(1) in c:
                nxt.append(c[m.group(1)])
            elif m.group(2) is not None and isinstance(c, list) and int(m.group(2)) < len(c):
                nxt.append(c[int(m.group(2))])
            elif m.group(3) is not None and isinstance(c, list):
                for item in c:
                    v: Any = item
                    for part in m.group(3).split("."):
                        v = v.get(part) if isinstance(v, dict) else None
                    if v is not None and str(v) == m.group(4):
                        nxt.append(item)
            elif m.group(0) == "[*]" and isinstance(c, list):
                nxt.extend(c)
        cur = nxt
    return cur


def human_age(ts: str, now: datetime | None = None) -> str:
    try:
        then = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except (TypeError, ValueError):
        return "<unknown>"
    secs = int(((now or datetime.now(UTC)) - then).total_seconds())
    if secs < 0:
        return "0s"
    if secs < 120:
        return f"{secs}s"
    mins = secs // 60
    if mins < 10:
        return f"{mins}m{secs % 60}s" if secs % 60 else f"{mins}m"
    if mins < 180:
        return f"{mins}m"
    hours = mins // 60
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    return f"{days}d" if days < 365 * 2 else f"{days // 365}y"


def _cell(obj: dict[str, Any], col: PrinterColumn) -> Any:
    if col.format == "count":
        value = jsonpath(obj, col.json_path)
        return len(value[0]) if value and isinstance(value[0], dict) else 0
    if col.format == "ratio":
        ready = jsonpath(obj, col.json_path)
        want = (obj.get("spec") or {}).get("replicas", 0)
        return f"{ready[0] if ready else 0}/{want}"
    values = jsonpath(obj, col.json_path)
    if not values:
        return None
    if col.type == "date":
        return human_age(str(values[0]))
    if len(values) > 1:
        return ",".join(v if isinstance(v, str) else json.dumps(v) for v in values)
    v = values[0]
    if col.type in ("integer", "number", "boolean"):
        return v
    return v if isinstance(v, str) else json.dumps(v)


def to_table(rt: ResourceType, version: str, objs: list[dict[str, Any]], include: str,
             list_meta: dict[str, Any]) -> dict[str, Any]:
    cols = columns_for(rt, version)
    defs = [{"name": "Name", "type": "string", "format": "name",
             "description": "Name must be unique within a namespace.", "priority": 0}]
    defs += [{"name": c.name, "type": c.type, "format": "" if c.format in ("count", "ratio")
              else c.format, "description": c.description, "priority": c.priority}
             for c in cols]
    rows = []
    for o in objs:
        row: dict[str, Any] = {"cells": [o["metadata"]["name"], *(_cell(o, c) for c in cols)]}
        if include == "Object":
            row["object"] = o
        elif include != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": {k: v for k, v in o["metadata"].items() if k != "managedFields"},
            }
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta,
            "columnDefinitions": defs, "rows": rows}
