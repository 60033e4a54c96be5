"""Server-side printing (`meta.k8s.io/v1` Table), which `kubectl get` asks for and prints as is."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .resources import PrinterColumn, ResourceType
from .selectors import label_selector_string

_AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp",
                     "CreationTimestamp is a timestamp representing the server time when this "
                     "object was created.")

def columns_for(rt: ResourceType, version: str) -> list[PrinterColumn]:
    """Printer columns of a custom resource (its CRD's, or Age alone)."""
    return rt.columns.get(version) or [_AGE]


# -- built-in kinds: the columns kube-apiserver's printers give them -------------------------
Obj = dict[str, Any]


@dataclass(frozen=True)
class _Col:
    name: str
    type: str
    cell: Callable[[Obj], Any]
    priority: int = 0
    description: str = ""


def _at(obj: Any, *path: str, default: Any = None) -> Any:
    for part in path:
        if not isinstance(obj, dict) or part not in obj:
            return default
        obj = obj[part]
    return obj


def _age(o: Obj) -> str:
    return human_age(str(_at(o, "metadata", "creationTimestamp", default="")))


def _none(text: str) -> str:
    return text or "<none>"


def _pod_spec(o: Obj) -> Obj:
    spec = o.get("spec") or {}
    if o.get("kind") == "CronJob":
        spec = _at(spec, "jobTemplate", "spec", default={}) or {}
    return _at(spec, "template", "spec", default={}) or {}


def _containers(o: Obj) -> str:
    return ",".join(str(c.get("name", "")) for c in _pod_spec(o).get("containers") or [])


def _images(o: Obj) -> str:
    return ",".join(str(c.get("image", "")) for c in _pod_spec(o).get("containers") or [])


def _selector(o: Obj) -> str:
    return label_selector_string(_at(o, "spec", "selector")) or "<none>"


def _map_labels(o: Obj, *path: str) -> str:
    return _none(",".join(f"{k}={v}" for k, v in sorted((_at(o, *path) or {}).items())))


def _service_external(o: Obj) -> str:
    spec = o.get("spec") or {}
    kind = spec.get("type", "ClusterIP")
    ips = list(spec.get("externalIPs") or [])
    if kind == "ExternalName":
        return str(spec.get("externalName", ""))
    if kind == "LoadBalancer":
        ingress = [i.get("ip") or i.get("hostname") for i in
                   _at(o, "status", "loadBalancer", "ingress", default=[]) or []]
        ips += [i for i in ingress if i]
        return ",".join(ips) if ips else "<pending>"
    return ",".join(ips) or "<none>"


def _service_ports(o: Obj) -> str:
    out = []
    for p in _at(o, "spec", "ports", default=[]) or []:
        port = f"{p.get('port')}:{p['nodePort']}" if p.get("nodePort") else f"{p.get('port')}"
        out.append(f"{port}/{p.get('protocol', 'TCP')}")
    return ",".join(out) or "<none>"


def _pod_ready(o: Obj) -> str:
    statuses = _at(o, "status", "containerStatuses", default=[]) or []
    total = len(_at(o, "spec", "containers", default=[]) or [])
    return f"{sum(1 for c in statuses if c.get('ready'))}/{total}"


def _pod_status(o: Obj) -> str:
    if _at(o, "metadata", "deletionTimestamp"):
        return "Terminating"
    return str(_at(o, "status", "reason") or _at(o, "status", "phase") or "Pending")


def _node_status(o: Obj) -> str:
    ready = next((c.get("status") for c in _at(o, "status", "conditions", default=[]) or []
                  if c.get("type") == "Ready"), None)
    text = {"True": "Ready", "False": "NotReady"}.get(str(ready), "Unknown")
    return text + (",SchedulingDisabled" if _at(o, "spec", "unschedulable") else "")


def _node_roles(o: Obj) -> str:
    labels = _at(o, "metadata", "labels", default={}) or {}
    roles = sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/"))
    return _none(",".join(r for r in roles if r))


def _node_address(kind: str) -> Callable[[Obj], str]:
    def cell(o: Obj) -> str:
        return _none(",".join(a.get("address", "") for a in
                              _at(o, "status", "addresses", default=[]) or []
                              if a.get("type") == kind))
    return cell


def _subjects(kind: str) -> Callable[[Obj], str]:
    def cell(o: Obj) -> str:
        return ", ".join((f"{s['namespace']}/{s.get('name', '')}"
                          if kind == "ServiceAccount" and s.get("namespace")
                          else str(s.get("name", "")))
                         for s in o.get("subjects") or [] if s.get("kind") == kind)
    return cell


def _job_status(o: Obj) -> str:
    conds = {c.get("type"): c.get("status") for c in
             _at(o, "status", "conditions", default=[]) or []}
    for ctype in ("Failed", "Complete", "Suspended", "FailureTarget", "SuccessCriteriaMet"):
        if conds.get(ctype) == "True":
            return ctype
    return "Terminating" if _at(o, "metadata", "deletionTimestamp") else "Running"


def _job_duration(o: Obj) -> str:
    start, end = _at(o, "status", "startTime"), _at(o, "status", "completionTime")
    if not start:
        return ""
    try:
        until = (datetime.strptime(str(end), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
                 if end else None)
    except ValueError:
        return ""
    return human_age(str(start), until)


def _event_last_seen(o: Obj) -> str:
    """As the real printer: the series' last observation, else lastTimestamp, else when it
    was first seen (firstTimestamp, else eventTime); never the object's creation."""
    ts = str(_at(o, "series", "lastObservedTime") or o.get("lastTimestamp")
             or o.get("firstTimestamp") or o.get("eventTime") or "")
    return human_age(ts[:19] + "Z") if ts else "<unknown>"


def _event_object(o: Obj) -> str:
    ref = o.get("involvedObject") or {}
    return f"{str(ref.get('kind', '')).lower()}/{ref.get('name', '')}"


def _int(*path: str) -> Callable[[Obj], int]:
    return lambda o: int(_at(o, *path, default=0) or 0)


def _str(*path: str, default: str = "") -> Callable[[Obj], str]:
    def cell(o: Obj) -> str:
        v = _at(o, *path)
        return default if v is None or v == "" else str(v)
    return cell


def _ratio(have: tuple[str, ...], want: tuple[str, ...]) -> Callable[[Obj], str]:
    return lambda o: f"{int(_at(o, *have, default=0) or 0)}/{int(_at(o, *want, default=0) or 0)}"


def _length(*path: str) -> Callable[[Obj], int]:
    return lambda o: len(_at(o, *path, default=None) or ())


_NAME = _Col("Name", "string", lambda o: o["metadata"]["name"],
             description="Name must be unique within a namespace.")
_AGE_COL = _Col("Age", "string", _age, description=_AGE.description)
_CREATED_AT = _Col("Created At", "date",
                   lambda o: str(_at(o, "metadata", "creationTimestamp", default="")))
_CONTAINERS = _Col("Containers", "string", _containers, 1)
_IMAGES = _Col("Images", "string", _images, 1)
_WORKLOAD_WIDE = [_CONTAINERS, _IMAGES, _Col("Selector", "string", _selector, 1)]
_BINDING = [_Col("Role", "string", lambda o: f"{_at(o, 'roleRef', 'kind', default='')}/"
                                            f"{_at(o, 'roleRef', 'name', default='')}"),
            _AGE_COL,
            _Col("Users", "string", _subjects("User"), 1),
            _Col("Groups", "string", _subjects("Group"), 1),
            _Col("ServiceAccounts", "string", _subjects("ServiceAccount"), 1)]
_ACCESS_MODES = {"ReadWriteOnce": "RWO", "ReadOnlyMany": "ROX", "ReadWriteMany": "RWX",
                 "ReadWriteOncePod": "RWOP"}

_BUILTIN: dict[str, list[_Col]] = {
    "Namespace": [_NAME, _Col("Status", "string", _str("status", "phase")), _AGE_COL],
    "Secret": [_NAME, _Col("Type", "string", _str("type")),
               _Col("Data", "string", _length("data")), _AGE_COL],
    "ConfigMap": [_NAME, _Col("Data", "string", lambda o: len(o.get("data") or {})
                              + len(o.get("binaryData") or {})), _AGE_COL],
    "ServiceAccount": [_NAME, _Col("Secrets", "string", _length("secrets")), _AGE_COL],
    "Service": [_NAME, _Col("Type", "string", _str("spec", "type", default="ClusterIP")),
                _Col("Cluster-IP", "string", _str("spec", "clusterIP", default="<none>")),
                _Col("External-IP", "string", _service_external),
                _Col("Port(s)", "string", _service_ports), _AGE_COL,
                _Col("Selector", "string", lambda o: _map_labels(o, "spec", "selector"), 1)],
    "Endpoints": [_NAME, _Col("Endpoints", "string", lambda o: _none(",".join(
        f"{a.get('ip')}:{p.get('port')}" for sub in o.get("subsets") or []
        for a in sub.get("addresses") or [] for p in sub.get("ports") or []))), _AGE_COL],
    "Pod": [_NAME, _Col("Ready", "string", _pod_ready),
            _Col("Status", "string", _pod_status),
            _Col("Restarts", "string", lambda o: sum(
                int(c.get("restartCount") or 0)
                for c in _at(o, "status", "containerStatuses", default=[]) or [])),
            _AGE_COL,
            _Col("IP", "string", _str("status", "podIP", default="<none>"), 1),
            _Col("Node", "string", _str("spec", "nodeName", default="<none>"), 1),
            _Col("Nominated Node", "string",
                 _str("status", "nominatedNodeName", default="<none>"), 1),
            _Col("Readiness Gates", "string", lambda o: "<none>", 1)],
    "Node": [_NAME, _Col("Status", "string", _node_status),
             _Col("Roles", "string", _node_roles), _AGE_COL,
             _Col("Version", "string", _str("status", "nodeInfo", "kubeletVersion")),
             _Col("Internal-IP", "string", _node_address("InternalIP"), 1),
             _Col("External-IP", "string", _node_address("ExternalIP"), 1),
             _Col("OS-Image", "string", _str("status", "nodeInfo", "osImage"), 1),
             _Col("Kernel-Version", "string", _str("status", "nodeInfo", "kernelVersion"), 1),
             _Col("Container-Runtime", "string",
                  _str("status", "nodeInfo", "containerRuntimeVersion"), 1)],
    "PersistentVolumeClaim": [
        _NAME, _Col("Status", "string", _str("status", "phase")),
        _Col("Volume", "string", _str("spec", "volumeName")),
        _Col("Capacity", "string", _str("status", "capacity", "storage")),
        _Col("Access Modes", "string", lambda o: ",".join(
            _ACCESS_MODES.get(m, m) for m in _at(o, "status", "accessModes", default=[]) or [])),
        _Col("StorageClass", "string", _str("spec", "storageClassName")),
        _Col("VolumeAttributesClass", "string",
             _str("spec", "volumeAttributesClassName", default="<unset>")),
        _AGE_COL, _Col("VolumeMode", "string", _str("spec", "volumeMode"), 1)],
    "Deployment": [_NAME, _Col("Ready", "string", _ratio(("status", "readyReplicas"),
                                                          ("spec", "replicas"))),
                   _Col("Up-to-date", "string", _int("status", "updatedReplicas")),
                   _Col("Available", "string", _int("status", "availableReplicas")),
                   _AGE_COL, *_WORKLOAD_WIDE],
    "ReplicaSet": [_NAME, _Col("Desired", "string", _int("spec", "replicas")),
                   _Col("Current", "string", _int("status", "replicas")),
                   _Col("Ready", "string", _int("status", "readyReplicas")),
                   _AGE_COL, *_WORKLOAD_WIDE],
    "StatefulSet": [_NAME, _Col("Ready", "string", _ratio(("status", "readyReplicas"),
                                                           ("spec", "replicas"))),
                    _AGE_COL, _CONTAINERS, _IMAGES],
    "DaemonSet": [_NAME, _Col("Desired", "string", _int("status", "desiredNumberScheduled")),
                  _Col("Current", "string", _int("status", "currentNumberScheduled")),
                  _Col("Ready", "string", _int("status", "numberReady")),
                  _Col("Up-to-date", "string", _int("status", "updatedNumberScheduled")),
                  _Col("Available", "string", _int("status", "numberAvailable")),
                  _Col("Node Selector", "string",
                       lambda o: _map_labels(o, "spec", "template", "spec", "nodeSelector")),
                  _AGE_COL, *_WORKLOAD_WIDE],
    "Job": [_NAME, _Col("Status", "string", _job_status),
            _Col("Completions", "string", lambda o: f"{_int('status', 'succeeded')(o)}/"
                                                    f"{_at(o, 'spec', 'completions', default=1)}"),
            _Col("Duration", "string", _job_duration), _AGE_COL, *_WORKLOAD_WIDE],
    "CronJob": [_NAME, _Col("Schedule", "string", _str("spec", "schedule")),
                _Col("Timezone", "string", _str("spec", "timeZone", default="<none>")),
                _Col("Suspend", "boolean", lambda o: bool(_at(o, "spec", "suspend"))),
                _Col("Active", "integer", _length("status", "active")),
                _Col("Last Schedule", "string", lambda o: human_age(str(_at(
                    o, "status", "lastScheduleTime"))) if _at(
                    o, "status", "lastScheduleTime") else "<none>"),
                _AGE_COL, _CONTAINERS, _IMAGES,
                _Col("Selector", "string", lambda o: "<none>", 1)],
    "Lease": [_NAME, _Col("Holder", "string", _str("spec", "holderIdentity")), _AGE_COL],
    "Role": [_NAME, _CREATED_AT],
    "ClusterRole": [_NAME, _CREATED_AT],
    "RoleBinding": [_NAME, *_BINDING],
    "ClusterRoleBinding": [_NAME, *_BINDING],
    "CustomResourceDefinition": [_NAME, _CREATED_AT],
    "IngressClass": [_NAME, _Col("Controller", "string", _str("spec", "controller")),
                     _Col("Parameters", "string", lambda o: "<none>"), _AGE_COL],
    "NetworkPolicy": [_NAME, _Col("Pod-Selector", "string", lambda o: label_selector_string(
        _at(o, "spec", "podSelector")) or "<none>"), _AGE_COL],
    "PodDisruptionBudget": [
        _NAME, _Col("Min Available", "string", _str("spec", "minAvailable", default="N/A")),
        _Col("Max Unavailable", "string", _str("spec", "maxUnavailable", default="N/A")),
        _Col("Allowed Disruptions", "integer", _int("status", "disruptionsAllowed")), _AGE_COL],
    "PriorityClass": [_NAME, _Col("Value", "integer", _int("value")),
                      _Col("Global-Default", "boolean", lambda o: bool(o.get("globalDefault"))),
                      _AGE_COL, _Col("PreemptionPolicy", "string",
                                     _str("preemptionPolicy", default="PreemptLowerPriority"))],
    "StorageClass": [_NAME, _Col("Provisioner", "string", _str("provisioner")),
                     _Col("ReclaimPolicy", "string", _str("reclaimPolicy", default="Delete")),
                     _Col("VolumeBindingMode", "string",
                          _str("volumeBindingMode", default="Immediate")),
                     _Col("AllowVolumeExpansion", "string",
                          lambda o: str(bool(o.get("allowVolumeExpansion"))).lower()),
                     _AGE_COL],
    "ValidatingWebhookConfiguration": [_NAME, _Col("Webhooks", "integer",
                                                   _length("webhooks")), _AGE_COL],
    "MutatingWebhookConfiguration": [_NAME, _Col("Webhooks", "integer",
                                                 _length("webhooks")), _AGE_COL],
    # Events lead with when they were last seen; their name only shows with -o wide.
    "Event": [_Col("Last Seen", "string", _event_last_seen),
              _Col("Type", "string", _str("type")), _Col("Reason", "string", _str("reason")),
              _Col("Object", "string", _event_object),
              _Col("Subobject", "string", _str("involvedObject", "fieldPath"), 1),
              _Col("Source", "string", lambda o: str(_at(o, "source", "component", default="")
                                                     or o.get("reportingComponent") or ""), 1),
              _Col("Message", "string", lambda o: str(o.get("message", "")).strip()),
              _Col("First Seen", "string", lambda o: human_age(str(
                  o.get("firstTimestamp") or _at(o, "metadata", "creationTimestamp")
                  or "")), 1),
              _Col("Count", "string", lambda o: int(o.get("count") or 1), 1),
              _Col("Name", "string", lambda o: o["metadata"]["name"], 1)],
}


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
    builtin = None if rt.custom else _BUILTIN.get(rt.kind, [_NAME, _AGE_COL])
    cols = columns_for(rt, version)
    if builtin is not None:
        defs = [{"name": c.name, "type": c.type, "format": "name" if c.name == "Name" else "",
                 "description": c.description, "priority": c.priority} for c in builtin]
    else:
        defs = [{"name": "Name", "type": "string", "format": "name",
                 "description": "Name must be unique within a namespace.", "priority": 0}]
        defs += [{"name": c.name, "type": c.type, "format": c.format,
                  "description": c.description, "priority": c.priority} for c in cols]
    rows = []
    for o in objs:
        cells = ([c.cell(o) for c in builtin] if builtin is not None
                 else [o["metadata"]["name"], *(_cell(o, c) for c in cols)])
        row: dict[str, Any] = {"cells": cells}
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
