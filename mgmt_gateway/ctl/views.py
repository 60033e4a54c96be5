"""What `outpostctl` shows, as pure functions of the resources: the table of `get clusters`,
the tree of `describe cluster`, the progress lines of `create --wait`, and JSON or YAML."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import yaml
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from agent.kube import Obj

from ..clusters import parse_time

Output = Literal["table", "wide", "json", "yaml"]


def age(value: Any, now: datetime) -> str:
    """An age as kubectl prints it (its HumanDuration): 45s, 5m30s, 150m, 5h10m, 3d4h, 90d."""
    t = parse_time(value)
    if t is None:
        return "<unknown>"
    s = max(0, int((now - t).total_seconds()))
    m, h, d = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s}s"
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 192:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 365 * 2:
        return f"{d}d"
    if d < 365 * 8:
        return f"{d // 365}y{d % 365}d" if d % 365 else f"{d // 365}y"
    return f"{d // 365}y"


def _condition(obj: Obj, type_: str) -> Mapping[str, Any]:
    conds = (obj.get("status") or {}).get("conditions") or ()
    return next((c for c in conds if c.get("type") == type_), {})


def _plain(value: Any, missing: str = "-") -> str:
    return missing if value is None or value == "" else str(value)


def _str(value: Any, missing: str = "-") -> str:
    """A reported value, safe inside rich markup (reports may hold any text, brackets too)."""
    return missing if value is None or value == "" else escape(str(value))


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
            meta["name"], _plain(st.get("phase"), "Pending"), _plain(spec.get("kubernetesVersion")),
            _plain(st.get("desiredRevision")), _plain(st.get("publishedRevision")),
            _plain(st.get("appliedRevision")),
            "true" if st.get("connected") else "false", _plain(ready.get("status"), "Unknown"),
            age(meta.get("creationTimestamp"), now)]
        if wide:
            row += [age(st.get("lastSeen"), now) if st.get("lastSeen") else "never",
                    _plain(st.get("agentVersion")), _plain(ready.get("reason"))]
        table.add_row(*(Text(str(cell)) for cell in row))
    return table


def dump(value: Any, fmt: Literal["json", "yaml"]) -> str:
    if fmt == "json":
        return json.dumps(value, indent=2, ensure_ascii=False) + "\n"
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False, allow_unicode=True)


def without_managed_fields(obj: Obj) -> Obj:
    """An object as `kubectl get -o yaml` shows it (managedFields hidden)."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {**obj, "metadata": meta}


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
    phase = _str(st.get("phase"), "Pending (the gateway has not reconciled it yet)")
    root = Tree(f"[bold]OutpostCluster {meta.get('namespace')}/{meta['name']}[/]  "
                f"{phase}  (age {age(meta.get('creationTimestamp'), now)})")
    if meta.get("deletionTimestamp"):
        root.add(f"[yellow]being deleted since {meta['deletionTimestamp']}[/]")
    root.add(Text.from_markup(
        f"{_mark(ready.get('status'))} Ready {_str(ready.get('status'), 'Unknown')} "
        f"{_str(ready.get('reason'), '')}: ").append(_plain(ready.get("message"), "no report yet")))
    root.add(f"Spec: Kubernetes {_str(spec.get('kubernetesVersion'))}, "
             f"{_str((spec.get('infrastructure') or {}).get('provider'))} infrastructure, "
             f"{escape(_machines(spec))}")
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
    branch = root.add(f"Profile: {_str(profile.get('name'))} {_str(profile.get('version'))}"
                      if isinstance(profile, dict) else "Profile: none")
    for a in addons:
        line = Text(f"{a.get('name')} {a.get('version') or ''} {a.get('phase') or '-'}")
        branch.add(line.append(f": {a['message']}" if a.get("message") else ""))
    steps = reached(obj)
    branch = root.add(f"Bootstrap: {len(steps)} step(s)")
    for phase, took, detail in steps:
        secs = f"  {took:.1f}s" if took is not None else ""
        line = Text.from_markup(f"[green]✓[/] {escape(phase)}{secs}")
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
        line = Text.from_markup(f"{_mark(c.get('status'))} {_str(c.get('type'))} "
                                f"{_str(c.get('status'))} {_str(c.get('reason'))}: ")
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
