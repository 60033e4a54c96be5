"""What `outpostctl` shows, as pure functions of the resources: the table of `get clusters`,
the tree of `describe cluster`, the progress lines of `create --wait`, and JSON or YAML."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import yaml
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from agent.kube import Obj

Output = Literal["table", "wide", "json", "yaml"]


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def age(value: Any, now: datetime) -> str:
    """kubectl's short age: 45s, 12m, 3h, 9d."""
    t = parse_time(value)
    if t is None:
        return "<unknown>"
    s = max(0, int((now - t).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size * (2 if unit != "m" else 1):
            return f"{s // size}{unit}"
    return f"{s}s"


def _condition(obj: Obj, type_: str) -> Mapping[str, Any]:
    conds = (obj.get("status") or {}).get("conditions") or ()
    return next((c for c in conds if c.get("type") == type_), {})


def _str(value: Any, missing: str = "-") -> str:
    return missing if value is None or value == "" else str(value)


def cluster_table(objs: Sequence[Obj], now: datetime, *, namespaces: bool,
                  wide: bool = False) -> Table:
    """`outpostctl get clusters`: one row per OutpostCluster, as `kubectl get` lays it out."""
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    cols = (["NAMESPACE"] if namespaces else []) + [
        "NAME", "PHASE", "VERSION", "DESIRED", "PUBLISHED", "APPLIED", "CONNECTED", "READY",
        "AGE"] + (["LAST-SEEN", "AGENT", "REASON"] if wide else [])
    for c in cols:
        table.add_column(c, no_wrap=True, overflow="ignore")
    for o in objs:
        meta, spec, st = o["metadata"], o.get("spec") or {}, o.get("status") or {}
        ready = _condition(o, "Ready")
        row = ([meta.get("namespace", "")] if namespaces else []) + [
            meta["name"], _str(st.get("phase"), "Pending"), _str(spec.get("kubernetesVersion")),
            _str(st.get("desiredRevision")), _str(st.get("publishedRevision")),
            _str(st.get("appliedRevision")),
            "yes" if st.get("connected") else "no", _str(ready.get("status"), "Unknown"),
            age(meta.get("creationTimestamp"), now)]
        if wide:
            row += [age(st.get("lastSeen"), now) if st.get("lastSeen") else "never",
                    _str(st.get("agentVersion")), _str(ready.get("reason"))]
        table.add_row(*row)
    return table


def dump(value: Any, fmt: Literal["json", "yaml"]) -> str:
    if fmt == "json":
        return json.dumps(value, indent=2, sort_keys=False) + "\n"
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False)


def as_list(objs: Iterable[Obj]) -> Obj:
    """Several objects as `kubectl get -o json` prints them."""
    return {"apiVersion": "v1", "kind": "List", "items": list(objs),
            "metadata": {"resourceVersion": ""}}


def _mark(status: Any) -> str:
    return {"True": "[green]✓[/]", "False": "[red]✗[/]"}.get(str(status), "[yellow]?[/]")


def _machines(spec: Mapping[str, Any]) -> str:
    cp = spec.get("controlPlane") or {}
    parts = [f"control plane {cp.get('replicas', '?')}"]
    for w in spec.get("workers") or ():
        pinned = f" @ {w['version']}" if w.get("version") else ""
        parts.append(f"workers {w.get('name')} {w.get('replicas')}{pinned}")
    return ", ".join(parts)


def reached(obj: Obj) -> list[tuple[str, float | None, str]]:
    """The bootstrap phases reached, each with how long it took to reach (from the previous
    one, the first from the resource's creation) and what was done."""
    st = obj.get("status") or {}
    since = parse_time((obj.get("metadata") or {}).get("creationTimestamp"))
    found: list[tuple[str, float | None, str]] = []
    for s in st.get("steps") or ():
        at = parse_time(s.get("startedAt"))
        took = (at - since).total_seconds() if at and since and at >= since else None
        found.append((str(s.get("phase")), took, str(s.get("detail") or "")))
        since = at
    return found


def describe(obj: Obj, events: Sequence[Obj], now: datetime) -> Tree:
    """`outpostctl describe cluster`: where the cluster stands, as a tree (after
    `clusterctl describe cluster`): readiness, revisions, the agent, the bootstrap steps with
    their timings, the pivot, add-ons, every condition, the last error and recent Events."""
    meta, spec, st = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    ready = _condition(obj, "Ready")
    phase = st.get("phase") or "Pending (the gateway has not reconciled it yet)"
    root = Tree(f"[bold]OutpostCluster {meta.get('namespace')}/{meta['name']}[/]  "
                f"{phase}  (age {age(meta.get('creationTimestamp'), now)})")
    if meta.get("deletionTimestamp"):
        root.add(f"[yellow]being deleted since {meta['deletionTimestamp']}[/]")
    root.add(Text.from_markup(
        f"{_mark(ready.get('status'))} Ready {_str(ready.get('status'), 'Unknown')} "
        f"{_str(ready.get('reason'), '')}: ").append(_str(ready.get("message"), "no report yet")))
    root.add(f"Spec: Kubernetes {spec.get('kubernetesVersion')}, "
             f"{(spec.get('infrastructure') or {}).get('provider')} infrastructure, "
             f"{_machines(spec)}")
    root.add(f"Revisions: desired {_str(st.get('desiredRevision'))} · published "
             f"{_str(st.get('publishedRevision'))} · applied {_str(st.get('appliedRevision'))}"
             f" · observed {_str(st.get('observedRevision'))}")
    if st.get("lastSeen"):
        agent = (f"Agent: {'connected' if st.get('connected') else 'disconnected'}, last seen "
                 f"{age(st['lastSeen'], now)} ago, version {_str(st.get('agentVersion'))}, "
                 f"phase {_str(st.get('agentPhase'))}")
    else:
        agent = "Agent: not heard from yet"
    root.add(agent)
    profile = spec.get("profile")
    addons = st.get("addons") or ()
    branch = root.add(f"Profile: {profile['name']} {profile['version']}" if profile
                      else "Profile: none")
    for a in addons:
        branch.add(f"{a.get('name')} {_str(a.get('version'), '')} {_str(a.get('phase'))}"
                   f"{': ' + a['message'] if a.get('message') else ''}")
    steps = reached(obj)
    branch = root.add(f"Bootstrap: {len(steps)} step(s)")
    for phase, took, detail in steps:
        secs = f"  {took:.1f}s" if took is not None else ""
        line = Text.from_markup(f"[green]✓[/] {phase}{secs}")
        if detail:
            line.append(f"  {detail}")
        branch.add(line)
    pivot = st.get("pivot") or {}
    if pivot:
        branch = root.add(f"Pivot: {_str(pivot.get('moved'), '?')} object(s) moved, journal "
                          f"{_str(pivot.get('journal'))}")
        for skipped in pivot.get("skipped") or ():
            branch.add(Text(f"skipped {skipped}"))
    branch = root.add("Conditions")
    for c in st.get("conditions") or ():
        line = Text.from_markup(f"{_mark(c.get('status'))} {c.get('type')} {c.get('status')} "
                                f"{c.get('reason')}: ")
        branch.add(line.append(str(c.get("message", ""))))
    if st.get("failedReason"):
        root.add(Text("Failed: ", style="red").append(str(st["failedReason"])))
    if st.get("lastError"):
        root.add(Text("Last error: ", style="red").append(str(st["lastError"])))
    if events:
        branch = root.add(f"Events (last {len(events)})")
        for e in events:
            when = e.get("lastTimestamp") or e.get("eventTime") or (
                e.get("metadata") or {}).get("creationTimestamp")
            style = "red" if e.get("type") == "Warning" else ""
            branch.add(Text(f"{age(when, now):>5} {e.get('type')} {e.get('reason')}: ",
                            style=style).append(str(e.get("message", ""))))
    return root


def events_of(obj: Obj, events: Iterable[Obj], last: int = 10) -> list[Obj]:
    """The newest `last` Events about `obj` (by uid when the Event names one), oldest first."""
    meta = obj["metadata"]

    def about(e: Obj) -> bool:
        ref = e.get("involvedObject") or e.get("regarding") or {}
        if ref.get("kind") != "OutpostCluster" or ref.get("name") != meta["name"]:
            return False
        return not ref.get("uid") or ref.get("uid") == meta.get("uid")

    def when(e: Obj) -> datetime:
        t = e.get("lastTimestamp") or e.get("eventTime") or (
            e.get("metadata") or {}).get("creationTimestamp")
        return parse_time(t) or datetime.min.replace(tzinfo=UTC)

    return sorted((e for e in events if about(e)), key=when)[-last:]


def progress(old: Obj | None, new: Obj) -> list[str]:
    """The lines `create cluster --wait` prints when `old` becomes `new`: steps finished,
    phase changes, and the Ready condition's message when it changes."""
    before, after = (old or {}).get("status") or {}, new.get("status") or {}
    lines: list[str] = []
    done_before = {phase for phase, _, _ in reached(old or {})}
    for phase, took, detail in reached(new):
        if phase not in done_before:
            secs = f" ({took:.1f}s)" if took is not None else ""
            lines.append(f"  ✓ {phase}{secs}{f'  {detail}' if detail else ''}")
    if after.get("phase") != before.get("phase") and after.get("phase"):
        lines.append(f"{new['metadata']['name']}: {after['phase']}")
    was, now_ = _condition(old or {}, "Ready"), _condition(new, "Ready")
    if now_ and (now_.get("reason"), now_.get("message")) != (was.get("reason"),
                                                                was.get("message")):
        lines.append(f"  Ready={now_.get('status')} {now_.get('reason')}: {now_.get('message')}")
    return lines
