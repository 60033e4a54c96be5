"""Plan the cluster's shape: control-plane replicas/version/template, one MachineDeployment per
worker pool, content-addressed machine and bootstrap templates, garbage templates.

Pure: (desired spec, observed objects) -> Plan. Full intent: every Apply carries the whole
configuration the agent owns for its object, so a field the spec no longer asks for (a revoked SSH
key, a dropped rotateAfter) is removed by server-side apply. The write is skipped only when the
agent's own managedFields show it already owns exactly those fields with those values, so a
converged cluster plans nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agent.spec import ClusterSpec, capi
from agent.spec.maintenance import Operation

from . import upgrade
from .certs import earliest_expiry
from .compare import CAPI_SCHEMAS, Path, applied_fields, owned_fields, render, same, up_to_date
from .gate import Gate, check_approvals
from .ownership import claim_fields, other_owners, with_managed_fields
from .types import AGENT_FIELD_MANAGER, Action, Apply, Delete, Note, Obj, Observed, Plan, dig
from .versions import compare, try_parse

_KCP = "KubeadmControlPlane"
_MD = "MachineDeployment"
_USERS = ("kubeadmConfigSpec", "users")
_AFTER = ("rollout", "after")
# KCP fields the agent is the authority for even while the spec leaves them out.
_KCP_OPTIONAL: tuple[Path, ...] = tuple(("f:spec", *(f"f:{p}" for p in f))
                                        for f in (_USERS, _AFTER))


def _name(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


class _Builder:
    def __init__(self, manager: str, observed: Observed) -> None:
        self.manager = manager
        self.observed = observed
        self.creates: list[Action] = []
        self.updates: list[Action] = []
        self.deletes: list[Action] = []
        self.notes: list[Note] = []
        self.gate = Gate(None, observed.now)

    def may_start(self, op: Operation, what: str) -> bool:
        """Whether the disruptive operation may start now; notes why not (or why anyway)."""
        ok, note = self.gate.check(op, what)
        if note is not None:
            self.notes.append(note)
        return ok

    def plan(self) -> Plan:
        # Templates before their owners, owners before garbage: every step is safe on its own.
        return Plan(tuple(self.creates + self.updates + self.deletes), tuple(self.notes))


def plan_topology(spec: ClusterSpec, observed: Observed, *,
                  manager: str = AGENT_FIELD_MANAGER, contact_age: float | None = None) -> Plan:
    """`manager` is the field manager the agent applies as (its managedFields are read);
    `contact_age` is how many seconds ago the management plane was last heard from (for the
    maintenance policy's stale-spec guard; None: unknown, no guard)."""
    b = _Builder(manager, observed)
    approved, refused = check_approvals(spec)
    b.gate = Gate(spec.maintenance, observed.now, contact_age,
                  earliest_expiry(observed.machines), approved, refused)
    referenced: set[str] = set()
    cp_version = _plan_control_plane(spec, observed, b, referenced)
    cp_next = _next_control_plane_step(spec, cp_version)
    _plan_workers(spec, observed, b, referenced, cp_version, cp_next)
    _collect_templates(spec, observed, b, referenced)
    return b.plan()


def _ensure_template(template: Obj, existing: dict[str, Obj] | Any, b: _Builder,
                     referenced: set[str]) -> str:
    name = _name(template)
    referenced.add(name)
    if name not in existing:
        b.creates.append(Apply(template["kind"], name, template, "template for new content"))
    return name


def _plan_control_plane(spec: ClusterSpec, observed: Observed, b: _Builder,
                        referenced: set[str]) -> str | None:
    """Returns the version the whole control plane runs, which caps the workers."""
    kcp = observed.kcp
    if kcp is None:
        b.notes.append(Note("ControlPlaneMissing", "no KubeadmControlPlane found for the "
                            "cluster: it is created by the gateway before the pivot"))
        return None
    current_ref = dig(kcp, "spec", "machineTemplate", "spec", "infrastructureRef", "name")
    if current_ref:
        referenced.add(str(current_ref))
    current = str(dig(kcp, "spec", "version") or spec.kubernetes_version)
    settled = upgrade.rollout_settled(kcp)
    running = upgrade.running_version(kcp)

    template = capi.machine_template(spec, capi.ROLE_CONTROL_PLANE)
    template_name = _ensure_template(template, observed.infra_templates, b, referenced)

    version = current
    readable = try_parse(current) is not None
    if not readable:
        b.notes.append(Note("VersionUnreadable", f"the control plane's spec.version {current!r} "
                            "cannot be parsed as a version; the agent leaves it as it is and "
                            "plans no upgrade until it is corrected"))
    elif upgrade.is_downgrade(current, spec.kubernetes_version):
        b.notes.append(Note("DowngradeRefused", f"the spec asks for {spec.kubernetes_version} but "
                            f"the control plane runs {current}; Kubernetes cannot be downgraded"))
    else:
        policy = spec.upgrade_policy
        try:
            step = upgrade.next_step(current, spec.kubernetes_version, policy.path)
        except upgrade.PathGap as gap:
            step = None
            b.notes.append(Note("UpgradePathGap", f"the control plane runs {current} and the "
                                f"spec asks for {spec.kubernetes_version}, but upgrade.path "
                                f"names no release of {gap.minor}: kubeadm upgrades one minor "
                                "at a time, so the upgrade waits until the spec names the "
                                f"{gap.minor} release to stop at"))
        lagging = [f"pool {_pool_name(md)} runs {v}" for md in _cluster_pools(spec, observed)
                   if step is not None and (v := _md_version(md)) is not None
                   and upgrade.skew_too_wide(step, v)]
        if step is not None and lagging:
            b.notes.append(Note("WaitingForWorkers", f"control-plane upgrade to {step} waits: "
                                f"{', '.join(lagging)}, more than the supported kubelet skew "
                                f"behind {step}; the pools move up first"))
        elif step is not None:
            if settled and b.may_start("upgrade", f"control-plane upgrade to {step}"):
                version = step
                k, route = upgrade.progress(current, spec.kubernetes_version, policy.path)
                b.notes.append(Note("Upgrading", f"control plane: step {k} of {len(route)}, "
                                    f"{current} -> {step} (route {' -> '.join(route)}); the "
                                    "worker pools follow once it is done"))
            elif not settled:
                b.notes.append(Note("WaitingForRollout", "control-plane upgrade to "
                                    f"{step} waits for the rollout in progress to finish"))

    if (readable and not settled and running is not None and try_parse(running) is not None
            and compare(running, current) < 0):
        k, route = upgrade.progress(running, spec.kubernetes_version,
                                    spec.upgrade_policy.path)
        if compare(current, spec.kubernetes_version) <= 0:
            b.notes.append(Note("Upgrading", f"control plane: step {k} of {len(route)}, "
                                f"rolling {running} -> {current} (route "
                                f"{' -> '.join(route)})"))
    new_ref = template_name
    if current_ref and current_ref != template_name and not settled:
        new_ref = str(current_ref)
        b.notes.append(Note("WaitingForRollout", "control-plane machine template change waits "
                            "for the rollout in progress to finish"))
    elif current_ref and current_ref != template_name and not b.may_start(
            "repave", "control-plane machine template change"):
        new_ref = str(current_ref)

    wanted = capi.control_plane_fields(spec, version, new_ref)
    wanted["metadata"]["name"] = _name(kcp)
    wanted["metadata"]["namespace"] = kcp["metadata"].get("namespace", spec.namespace)
    schema = CAPI_SCHEMAS[_KCP]
    claim = claim_fields(kcp, wanted["apiVersion"],
                         {*applied_fields(wanted, schema), *_KCP_OPTIONAL}, b.manager,
                         observed.now)
    live = with_managed_fields(kcp, claim)
    owned = owned_fields(live, b.manager) or set()
    intent = applied_fields(wanted, schema)
    if not settled:
        _hold_back(kcp, wanted, owned, b)
    elif dig(wanted, "spec", *_AFTER) is not None and not same(
            dig(wanted, "spec", *_AFTER), dig(kcp, "spec", *_AFTER)) and not b.may_start(
            "rotation", "control-plane certificate rotation (rollout.after)"):
        _keep_applied(kcp.get("spec") or {}, wanted["spec"], _AFTER, owned)
    if claim is not None or not up_to_date(live, wanted, b.manager, schema):
        b.updates.append(Apply(_KCP, _name(kcp), wanted,
                               _describe_cp_change(kcp, wanted, owned), claim))
    _note_kept_fields(live, wanted, intent, _KCP_OPTIONAL, b)
    if new_ref != template_name:
        referenced.add(template_name)
    if not readable:
        return None
    if running is not None and try_parse(running) is None:
        b.notes.append(Note("VersionUnreadable", f"the control plane reports status.version "
                            f"{running!r}, which cannot be parsed as a version; worker pools "
                            "keep their versions until it can"))
        return None
    fully_upgraded = settled and running is not None and compare(running, current) == 0
    return running if fully_upgraded else _lower(running, current)


def _hold_back(kcp: Obj, wanted: Obj, owned: set[Path], b: _Builder) -> None:
    """While a rollout runs, changes that would start another wait (never stack rollouts):
    a new rollout.after and a change of SSH users. Held back means the agent keeps applying
    what it applied before (the live value where it owns the field, nothing where it does not),
    so neither full intent nor the hold removes or takes over anything. Removing rollout.after
    starts nothing, so it is not held."""
    live_spec, want_spec = kcp.get("spec") or {}, wanted["spec"]
    if dig(want_spec, *_AFTER) is not None and _keep_applied(live_spec, want_spec, _AFTER, owned):
        b.notes.append(Note("WaitingForRollout", "control-plane certificate rotation "
                            "(rollout.after) waits for the rollout in progress to finish"))
    if _keep_applied(live_spec, want_spec, _USERS, owned):
        b.notes.append(Note("WaitingForRollout", "control-plane SSH access change waits for the "
                            "rollout in progress to finish"))


def _keep_applied(live_spec: Obj, want_spec: Obj, field: tuple[str, ...],
                  owned: set[Path]) -> bool:
    """Replace the desired value at `field` with what the agent applied before; True when that
    differs from the desired value (the change is then held back)."""
    desired = dig(want_spec, *field)
    parent_path, leaf = field[:-1], field[-1]
    kept = dig(live_spec, *field)
    if same(desired, kept):
        return False  # the object already says so: applying it starts nothing
    if ("f:spec", *(f"f:{p}" for p in field)) not in owned:
        kept = None
    if same(desired, kept):
        return False
    parent = want_spec
    for p in parent_path:
        parent = parent.setdefault(p, {})
    if kept is None:
        parent.pop(leaf, None)
        if not parent:
            want_spec.pop(parent_path[0], None)  # the fields held here are one level deep
    else:
        parent[leaf] = kept
    return True


def _note_kept_fields(live: Obj, wanted: Obj, intent: Iterable[Path],
                      optional: tuple[Path, ...], b: _Builder) -> None:
    """Fields the spec leaves out (`intent` is the spec's full intent, before any hold-back)
    but another manager still owns: server-side apply cannot remove them for the agent, so say
    so rather than pretend the object matches the spec."""
    for path in optional:
        if any(p[:len(path)] == path for p in intent):
            continue
        cur: Any = live
        for element in path:
            cur = cur.get(element[2:]) if isinstance(cur, dict) else None
        owners = other_owners(live, path, b.manager) if cur is not None else []
        if owners:
            b.notes.append(Note("FieldKeptByOtherManager", f"{wanted['kind']} "
                                f"{wanted['metadata']['name']}: {render(path)} is not in the "
                                "spec but stays, because " + ", ".join(owners) + " also "
                                "manage it; remove it there"))


def _next_control_plane_step(spec: ClusterSpec, running: str | None) -> str | None:
    """Where the control plane goes next from the version it wholly runs (None: it is at the
    target, or its version is unknown)."""
    if running is None:
        return None
    try:
        return upgrade.next_step(running, spec.kubernetes_version, spec.upgrade_policy.path)
    except upgrade.PathGap:
        return None  # the control plane waits (its note says why); so may the pools


def _cluster_pools(spec: ClusterSpec, observed: Observed) -> list[Obj]:
    return [md for md in observed.machine_deployments.values()
            if (md["metadata"].get("labels") or {}).get(capi.LABEL_CLUSTER) == spec.cluster_name]


def _pool_name(md: Obj) -> str:
    return str((md["metadata"].get("labels") or {}).get(capi.LABEL_POOL) or _name(md))


def _md_version(md: Obj) -> str | None:
    v = dig(md, "spec", "template", "spec", "version")
    return v if isinstance(v, str) and try_parse(v) is not None else None


def _lower(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return None
    return a if compare(a, b) <= 0 else b


def _describe_cp_change(kcp: Obj, wanted: Obj, owned: set[Path]) -> str:
    parts = []
    spec = wanted["spec"]
    if dig(kcp, "spec", "replicas") != spec["replicas"]:
        parts.append(f"replicas {dig(kcp, 'spec', 'replicas')} -> {spec['replicas']}")
    if dig(kcp, "spec", "version") != spec["version"]:
        parts.append(f"version {dig(kcp, 'spec', 'version')} -> {spec['version']}")
    ref = spec["machineTemplate"]["spec"]["infrastructureRef"]["name"]
    if dig(kcp, "spec", "machineTemplate", "spec", "infrastructureRef", "name") != ref:
        parts.append(f"machine template -> {ref}")
    for field, what in ((_USERS, "SSH users"), (_AFTER, "rollout.after")):
        want, live = dig(spec, *field), dig(kcp, "spec", *field)
        if want is None and ("f:spec", *(f"f:{p}" for p in field)) in owned:
            parts.append(f"{what} removed")
        elif want is not None and not same(want, live):
            parts.append(f"{what} changed")
    return "control plane: " + (", ".join(parts) or "the agent's field ownership")


def _rollout_order(spec: ClusterSpec) -> list[Any]:
    """The pools in the order their upgrades go: `upgrade.order` first, then by name."""
    first = {name: i for i, name in enumerate(spec.upgrade_policy.order)}
    return sorted(spec.workers, key=lambda p: (first.get(p.name, len(first)), p.name))


def _plan_workers(spec: ClusterSpec, observed: Observed, b: _Builder, referenced: set[str],
                  cp_version: str | None, cp_next: str | None) -> None:
    wanted_mds = set()
    policy = spec.upgrade_policy
    one_at_a_time = policy.workers == "OneAtATime" or bool(policy.order)
    # A pool whose machines are being replaced: with one pool at a time, the others' template
    # and version changes wait for it.
    rolling = next((_pool_name(md) for md in _cluster_pools(spec, observed)
                    if not upgrade.rollout_settled(md)), None) if one_at_a_time else None
    for pool in _rollout_order(spec):
        name = capi.md_name(spec, pool)
        wanted_mds.add(name)
        infra = _ensure_template(capi.machine_template(spec, capi.ROLE_WORKER, pool),
                                 observed.infra_templates, b, referenced)
        boot = _ensure_template(capi.bootstrap_template(spec, pool),
                                observed.bootstrap_templates, b, referenced)
        md = observed.machine_deployments.get(name)
        target = spec.pool_version(pool)
        if md is None:
            version = upgrade.worker_version(target, None, cp_version)
            if version is None:
                b.notes.append(Note("WaitingForControlPlane", f"pool {pool.name} is created once "
                                    "the control plane reports its version"))
                continue
            b.updates.append(Apply("MachineDeployment", name, capi.machine_deployment(
                spec, pool, version, infra, boot), f"create worker pool {pool.name} "
                f"({pool.replicas} replicas, {version})"))
            continue
        if cp_next is not None and cp_version is not None:
            # The control plane is still on its way: the pool waits for it (one repave, at
            # the end), unless it would fall more than the kubelet skew behind the next step.
            current = _md_version(md)
            if current is not None and not upgrade.skew_too_wide(cp_next, current):
                target = current
                if compare(current, spec.pool_version(pool)) < 0:
                    b.notes.append(Note("WaitingForControlPlane", f"pool {pool.name} stays at "
                                        f"{current} until the control plane reaches "
                                        f"{spec.kubernetes_version}"))
            else:
                target = _lower(spec.pool_version(pool), cp_version) or cp_version
        may_roll = rolling is None or rolling == pool.name
        started = _plan_existing_pool(spec, pool, md, infra, boot, target, cp_version, b,
                                      referenced, may_roll, rolling)
        if started and one_at_a_time:
            rolling = pool.name
    for name, md in observed.machine_deployments.items():
        labels = md["metadata"].get("labels") or {}
        if name not in wanted_mds and labels.get(capi.LABEL_CLUSTER) == spec.cluster_name:
            b.deletes.append(Delete("MachineDeployment", name, md["metadata"]["namespace"],
                                    f"worker pool {labels.get(capi.LABEL_POOL, name)} was "
                                    "removed from the spec", md["metadata"].get("uid")))


def _plan_existing_pool(spec: ClusterSpec, pool: Any, md: Obj, infra: str, boot: str,
                        target: str, cp_version: str | None, b: _Builder,
                        referenced: set[str], may_roll: bool = True,
                        rolling: str | None = None) -> bool:
    """Returns whether the plan starts replacing the pool's machines."""
    tspec = dig(md, "spec", "template", "spec") or {}
    cur_infra = dig(tspec, "infrastructureRef", "name")
    cur_boot = dig(tspec, "bootstrap", "configRef", "name")
    referenced.update(str(n) for n in (cur_infra, cur_boot) if n)
    current = tspec.get("version")
    settled = upgrade.rollout_settled(md)
    readable = current is None or try_parse(current) is not None
    if not readable:
        version = str(current)
        b.notes.append(Note("VersionUnreadable", f"pool {pool.name}: the MachineDeployment's "
                            f"version {current!r} cannot be parsed as a version; the agent leaves "
                            "it as it is and plans no upgrade until it is corrected"))
    else:
        version = upgrade.worker_version(target, current, cp_version) or current or target
        if current and upgrade.is_downgrade(current, target):
            b.notes.append(Note("DowngradeRefused", f"pool {pool.name} runs {current}; the "
                                f"spec's {target} would be a downgrade"))
    changes_template = (version != current or cur_infra != infra or cur_boot != boot)
    starts = changes_template
    if changes_template and not settled:
        version, infra, boot = current or version, str(cur_infra or infra), str(cur_boot or boot)
        starts = False
        b.notes.append(Note("WaitingForRollout", f"pool {pool.name}: template or version change "
                            "waits for the rollout in progress to finish"))
    elif (version != current or cur_infra != infra) and not _pool_may_start(
            b, pool.name, version if version != current else None, cur_infra != infra):
        # Held; an SSH access change (the bootstrap template) still goes: revoking a key
        # never waits for a window or an approval.
        version, infra = current or version, str(cur_infra or infra)
        starts = cur_boot != boot
    elif changes_template and not may_roll:
        what = f"upgrade to {version}" if version != current else "machine template change"
        version, infra, boot = current or version, str(cur_infra or infra), str(cur_boot or boot)
        starts = False
        b.notes.append(Note("WaitingForPool", f"pool {pool.name}: {what} waits for pool "
                            f"{rolling} to finish (one pool at a time)"))
    elif readable and compare(version, target) != 0 and current == version:
        b.notes.append(Note("WaitingForControlPlane", f"pool {pool.name} stays at {current} until "
                            f"the control plane runs {target}"))
    # Full intent: the whole MachineDeployment the agent owns, never a fragment of it.
    wanted = capi.machine_deployment(spec, pool, version, infra, boot)
    schema = CAPI_SCHEMAS[_MD]
    claim = claim_fields(md, wanted["apiVersion"], applied_fields(wanted, schema), b.manager,
                         b.observed.now)
    if claim is not None or not up_to_date(with_managed_fields(md, claim), wanted, b.manager,
                                           schema):
        parts = []
        if dig(md, "spec", "replicas") != pool.replicas:
            parts.append(f"replicas {dig(md, 'spec', 'replicas')} -> {pool.replicas}")
        if current != version:
            parts.append(f"version {current} -> {version}")
        if cur_infra != infra:
            parts.append(f"machine template -> {infra}")
        if cur_boot != boot:
            parts.append(f"bootstrap template -> {boot}")
        b.updates.append(Apply(_MD, _name(md), wanted, f"worker pool {pool.name}: "
                               + (", ".join(parts) or "the agent's fields"), claim))
    referenced.update((infra, boot))
    return starts


def _pool_may_start(b: _Builder, pool: str, upgrade_to: str | None, repave: bool) -> bool:
    """A pool's version change is an upgrade, its machine template change a repave; with
    both, both must be allowed."""
    if upgrade_to is not None and not b.may_start("upgrade", f"pool {pool}: upgrade to "
                                                             f"{upgrade_to}"):
        return False
    return not repave or b.may_start("repave", f"pool {pool}: machine template change")


def _collect_templates(spec: ClusterSpec, observed: Observed, b: _Builder,
                       referenced: set[str]) -> None:
    """Delete Outpost's templates nothing uses any more (a MachineSet still scaling down counts
    as a user: deleting its template mid-rollout would strand it)."""
    for ms in observed.machine_sets:
        replicas = (dig(ms, "spec", "replicas") or 0) + (dig(ms, "status", "replicas") or 0)
        if replicas:
            tspec = dig(ms, "spec", "template", "spec") or {}
            for ref in (dig(tspec, "infrastructureRef", "name"),
                        dig(tspec, "bootstrap", "configRef", "name")):
                if ref:
                    referenced.add(str(ref))
    for templates in (observed.infra_templates, observed.bootstrap_templates):
        for name, t in templates.items():
            labels = t["metadata"].get("labels") or {}
            if labels.get(capi.LABEL_CLUSTER) != spec.cluster_name or name in referenced:
                continue
            if t["metadata"].get("deletionTimestamp"):
                continue
            b.deletes.append(Delete(t["kind"], name, t["metadata"]["namespace"],
                                    "template no longer referenced", t["metadata"].get("uid")))
