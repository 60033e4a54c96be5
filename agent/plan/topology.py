"""Plan the cluster's shape: control-plane replicas/version/template, one MachineDeployment per
worker pool, content-addressed machine and bootstrap templates, garbage templates.

Pure: (desired spec, observed objects) -> Plan. Each field is compared before it is written, so
a converged cluster plans nothing, and only the fields Outpost owns are ever in an Apply.
"""

from __future__ import annotations

from typing import Any

from agent.spec import ClusterSpec, capi

from . import upgrade
from .compare import covers
from .types import Action, Apply, Delete, Note, Obj, Observed, Plan, dig


def _name(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


class _Builder:
    def __init__(self) -> None:
        self.creates: list[Action] = []
        self.updates: list[Action] = []
        self.deletes: list[Action] = []
        self.notes: list[Note] = []

    def plan(self) -> Plan:
        # Templates before their owners, owners before garbage: every step is safe on its own.
        return Plan(tuple(self.creates + self.updates + self.deletes), tuple(self.notes))


def plan_topology(spec: ClusterSpec, observed: Observed) -> Plan:
    b = _Builder()
    referenced: set[str] = set()
    cp_version = _plan_control_plane(spec, observed, b, referenced)
    _plan_workers(spec, observed, b, referenced, cp_version)
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
    if upgrade.is_downgrade(current, spec.kubernetes_version):
        b.notes.append(Note("DowngradeRefused", f"the spec asks for {spec.kubernetes_version} but "
                            f"the control plane runs {current}; Kubernetes cannot be downgraded"))
    else:
        step = upgrade.next_step(current, spec.kubernetes_version)
        if step is not None:
            if settled:
                version = step
            else:
                b.notes.append(Note("WaitingForRollout", "control-plane upgrade to "
                                    f"{step} waits for the rollout in progress to finish"))

    new_ref = template_name
    if current_ref and current_ref != template_name and not settled:
        new_ref = str(current_ref)
        b.notes.append(Note("WaitingForRollout", "control-plane machine template change waits "
                            "for the rollout in progress to finish"))

    wanted = capi.control_plane_fields(spec, version, new_ref)
    wanted["metadata"]["name"] = _name(kcp)
    wanted["metadata"]["namespace"] = kcp["metadata"].get("namespace", spec.namespace)
    if not settled and spec.certificates.rotate_after is not None and dig(
            kcp, "spec", "rollout", "after") != wanted["spec"]["rollout"].get("after"):
        # rollout.after starts a rollout: never stack it on one already running.
        wanted["spec"]["rollout"].pop("after")
        if dig(kcp, "spec", "rollout", "after"):
            wanted["spec"]["rollout"]["after"] = dig(kcp, "spec", "rollout", "after")
    if not covers(kcp, {"spec": wanted["spec"]}):
        b.updates.append(Apply("KubeadmControlPlane", _name(kcp), wanted,
                               _describe_cp_change(kcp, wanted)))
    if new_ref != template_name:
        referenced.add(template_name)
    fully_upgraded = settled and running == current
    return running if fully_upgraded else _lower(running, current)


def _lower(a: str | None, b: str | None) -> str | None:
    from agent.spec import version_tuple

    if a is None or b is None:
        return None
    return a if version_tuple(a) <= version_tuple(b) else b


def _describe_cp_change(kcp: Obj, wanted: Obj) -> str:
    parts = []
    spec = wanted["spec"]
    if dig(kcp, "spec", "replicas") != spec["replicas"]:
        parts.append(f"replicas {dig(kcp, 'spec', 'replicas')} -> {spec['replicas']}")
    if dig(kcp, "spec", "version") != spec["version"]:
        parts.append(f"version {dig(kcp, 'spec', 'version')} -> {spec['version']}")
    ref = spec["machineTemplate"]["spec"]["infrastructureRef"]["name"]
    if dig(kcp, "spec", "machineTemplate", "spec", "infrastructureRef", "name") != ref:
        parts.append(f"machine template -> {ref}")
    return "control plane: " + (", ".join(parts) or "rollout and access settings")


def _plan_workers(spec: ClusterSpec, observed: Observed, b: _Builder, referenced: set[str],
                  cp_version: str | None) -> None:
    wanted_mds = set()
    for pool in spec.workers:
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
        _plan_existing_pool(spec, pool, md, infra, boot, target, cp_version, b, referenced)
    for name, md in observed.machine_deployments.items():
        labels = md["metadata"].get("labels") or {}
        if name not in wanted_mds and labels.get(capi.LABEL_CLUSTER) == spec.cluster_name:
            b.deletes.append(Delete("MachineDeployment", name, md["metadata"]["namespace"],
                                    f"worker pool {labels.get(capi.LABEL_POOL, name)} was "
                                    "removed from the spec", md["metadata"].get("uid")))


def _plan_existing_pool(spec: ClusterSpec, pool: Any, md: Obj, infra: str, boot: str,
                        target: str, cp_version: str | None, b: _Builder,
                        referenced: set[str]) -> None:
    tspec = dig(md, "spec", "template", "spec") or {}
    cur_infra = dig(tspec, "infrastructureRef", "name")
    cur_boot = dig(tspec, "bootstrap", "configRef", "name")
    referenced.update(str(n) for n in (cur_infra, cur_boot) if n)
    current = tspec.get("version")
    settled = upgrade.rollout_settled(md)
    version = upgrade.worker_version(target, current, cp_version) or current or target
    if current and upgrade.is_downgrade(current, target):
        b.notes.append(Note("DowngradeRefused", f"pool {pool.name} runs {current}; the spec's "
                            f"{target} would be a downgrade"))
    changes_template = (version != current or cur_infra != infra or cur_boot != boot)
    if changes_template and not settled:
        version, infra, boot = current or version, str(cur_infra or infra), str(cur_boot or boot)
        b.notes.append(Note("WaitingForRollout", f"pool {pool.name}: template or version change "
                            "waits for the rollout in progress to finish"))
    elif version != target and current == version:
        b.notes.append(Note("WaitingForControlPlane", f"pool {pool.name} stays at {current} until "
                            f"the control plane runs {target}"))
    # Server-side apply removes what the same manager applied before and omits now, so the
    # agent always applies the whole MachineDeployment it created, never a fragment of it.
    wanted = capi.machine_deployment(spec, pool, version, infra, boot)
    if not covers(md, {"metadata": {"labels": wanted["metadata"]["labels"]},
                       "spec": wanted["spec"]}):
        parts = []
        if dig(md, "spec", "replicas") != pool.replicas:
            parts.append(f"replicas {dig(md, 'spec', 'replicas')} -> {pool.replicas}")
        if current != version:
            parts.append(f"version {current} -> {version}")
        if cur_infra != infra or cur_boot != boot:
            parts.append("new machine template")
        b.updates.append(Apply("MachineDeployment", _name(md), wanted,
                               f"worker pool {pool.name}: " + (", ".join(parts) or "refs")))
    referenced.update((infra, boot))


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
