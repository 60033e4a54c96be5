"""ClusterSpec: the desired state of one edge cluster, the contract between gateway and agent.

Frozen and strict (`extra="forbid"`): a field the agent does not understand is an error, never
silently ignored, because an agent running unattended for years must not half-apply a spec written
for a newer agent. camelCase on the wire, snake_case in Python.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from .addons import ClusterProfile
from .base import Model, Namespace, dns_label
from .maintenance import Approval, MaintenancePolicy

SEMVER = re.compile(r"^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
SSH_KEY = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|"
    r"sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\r\n]*)?$"
)


def version_problem(value: str) -> str | None:
    """What keeps `value` from being a spec version (None when it is one). The contract is
    strict on purpose: the agent applies exactly this string, so a vendor build or release
    candidate must be a deliberate change of the contract, not a lenient parse. Versions read
    from clusters are parsed tolerantly elsewhere (agent.plan.versions)."""
    if SEMVER.match(value):
        return None
    core, _, build = value.partition("+")
    core, _, pre = core.partition("-")
    numbers = core[1:].split(".") if core.startswith("v") else core.split(".")
    if not core.startswith("v"):
        why = "the leading 'v' is missing"
    elif len(numbers) != 3 or not all(n.isascii() and n.isdigit() for n in numbers):
        why = "it needs exactly three numbers, major.minor.patch"
    elif any(len(n) > 1 and n.startswith("0") for n in numbers):
        why = "numbers must not have leading zeros"
    elif build:
        why = f"build metadata '+{build}' is not allowed in a spec"
    elif pre:
        why = f"pre-release '-{pre}' is not allowed in a spec"
    else:
        why = "it is not a plain release version"
    return f"{value!r} is not a Kubernetes version like v1.35.2: {why}"


def _semver(value: str) -> str:
    problem = version_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _ssh_key(value: str) -> str:
    if not SSH_KEY.match(value.strip()):
        raise ValueError("must be an OpenSSH public key line such as 'ssh-ed25519 AAAA... "
                         "user@host' (private keys and other formats are refused)")
    return value.strip()


ClusterName = Annotated[str, dns_label(40)]
PoolName = Annotated[str, dns_label(20)]
KubeVersion = Annotated[str, AfterValidator(_semver)]
SshKey = Annotated[str, AfterValidator(_ssh_key)]


def version_tuple(version: str) -> tuple[int, int, int]:
    """The numbers of a spec version (strict; see version_problem)."""
    m = SEMVER.match(version)
    if not m:
        raise ValueError(version_problem(version) or f"not a Kubernetes version: {version!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


MAX_KUBELET_SKEW = 3  # minors a kubelet may trail its API server (Kubernetes >= 1.28)


def path_problem(path: tuple[str, ...], target: str) -> str | None:
    """What is wrong with an upgrade path on its own (None when nothing): each stop a release
    of its own minor, oldest first, all older than the target's minor, on its major."""
    tgt = version_tuple(target)
    seen: list[tuple[int, int, int]] = []
    for v in path:
        vt = version_tuple(v)
        if vt[0] != tgt[0]:
            return f"{v} is not on the target's major version {tgt[0]}"
        if vt[:2] >= tgt[:2]:
            return (f"{v} is not older than the target's minor v{tgt[0]}.{tgt[1]}: the path "
                    "names the stops before it")
        if seen and vt[:2] <= seen[-1][:2]:
            return (f"{v} follows v{'.'.join(map(str, seen[-1]))}: one release per minor, "
                    "oldest first")
        seen.append(vt)
    return None


def path_gap(current: str, target: str, path: tuple[str, ...]) -> str | None:
    """The first minor between `current` and `target` the path names no release for (None:
    the upgrade can go; also None for no upgrade or a downgrade, refused elsewhere)."""
    cur, tgt = version_tuple(current), version_tuple(target)
    if tgt[:2] <= cur[:2] or cur[0] != tgt[0]:
        return None
    stops = {version_tuple(v)[:2] for v in path}
    for minor in range(cur[1] + 1, tgt[1]):
        if (cur[0], minor) not in stops:
            return f"v{cur[0]}.{minor}"
    return None


# -- infrastructure ------------------------------------------------------------------------
class VSphereInfrastructure(Model):
    """Where vSphere machines go; credentials are referenced by identity, never inlined."""

    provider: Literal["vsphere"]
    server: Annotated[str, Field(min_length=1, max_length=253)]
    datacenter: Annotated[str, Field(min_length=1)]
    datastore: Annotated[str, Field(min_length=1)]
    network: Annotated[str, Field(min_length=1)]
    folder: str | None = None
    resource_pool: str | None = None
    thumbprint: str | None = None
    identity_name: Annotated[str, Field(min_length=1)] = Field(
        description="VSphereClusterIdentity holding the credentials")
    control_plane_endpoint: Annotated[str, Field(min_length=1)] = Field(
        description="virtual IP or DNS name of the API server")


class DevInfrastructure(Model):
    """CAPI's development provider, for local runs and the testbed."""

    provider: Literal["dev"]


Infrastructure = Annotated[VSphereInfrastructure | DevInfrastructure,
                           Field(discriminator="provider")]


class VSphereMachine(Model):
    provider: Literal["vsphere"]
    template: Annotated[str, Field(min_length=1, description="VM template to clone")]
    num_cpus: Annotated[int, Field(ge=1, le=128)] = 2
    memory_mib: Annotated[int, Field(ge=1024, le=4_194_304)] = 4096
    disk_gib: Annotated[int, Field(ge=10, le=65_536)] = 40


class DevMachine(Model):
    provider: Literal["dev"]
    image: str | None = None


MachineTemplate = Annotated[VSphereMachine | DevMachine, Field(discriminator="provider")]


# -- topology ------------------------------------------------------------------------------
class ControlPlane(Model):
    replicas: Literal[1, 3, 5] = Field(
        description="1, 3 or 5: stacked etcd needs an odd number of members")
    machine: MachineTemplate


IntOrPercent = Annotated[int | str, Field(union_mode="left_to_right")]
_PERCENT = re.compile(r"^(100|[1-9]?[0-9])%$")


class PoolRollout(Model):
    """How a pool replaces its machines (a new version, a new template): at most `maxSurge`
    machines above the pool's size and `maxUnavailable` below it, each a number or a percentage
    of the pool (CAPI's defaults: 1 and 0)."""

    max_surge: IntOrPercent | None = None
    max_unavailable: IntOrPercent | None = None

    @model_validator(mode="after")
    def _valid(self) -> PoolRollout:
        for name, v in (("maxSurge", self.max_surge), ("maxUnavailable", self.max_unavailable)):
            if isinstance(v, int) and not 0 <= v <= 1000:
                raise ValueError(f"{name} {v} must be between 0 and 1000")
            if isinstance(v, str) and not _PERCENT.match(v):
                raise ValueError(f"{name} {v!r} must be a number or a percentage like '25%'")
        if _zero(self.max_surge) and _zero(self.max_unavailable):
            raise ValueError("maxSurge and maxUnavailable cannot both be 0: the rollout could "
                             "never replace a machine")
        return self


def _zero(v: int | str | None) -> bool:
    return v == 0 or v == "0%"


class WorkerPool(Model):
    name: PoolName
    replicas: Annotated[int, Field(ge=0, le=1000)]
    machine: MachineTemplate
    version: KubeVersion | None = Field(
        default=None, description="defaults to the cluster's Kubernetes version")
    rollout: PoolRollout | None = None


class UpgradePolicy(Model):
    """How a Kubernetes upgrade goes: the control plane one minor at a time along `path` (the
    exact, tested release to stop at for each minor between the running version and the
    target), each step to completion; then the worker pools, straight to the control plane's
    version (their machines are replaced, not upgraded in place), all together or one pool at
    a time (in `order`, then the rest by name)."""

    path: tuple[KubeVersion, ...] = Field(
        default=(), description="one release per intermediate minor, oldest first")
    workers: Literal["AllTogether", "OneAtATime"] = "AllTogether"
    order: tuple[PoolName, ...] = Field(
        default=(), description="pools first to go, one at a time (implies OneAtATime)")

    def stop_for(self, major: int, minor: int) -> str | None:
        """The path's release for that minor, if it names one."""
        return next((v for v in self.path if version_tuple(v)[:2] == (major, minor)), None)


class CertificatePolicy(Model):
    rotate_before_days: Annotated[int, Field(ge=7, le=365)] = 30
    rotate_after: datetime | None = Field(
        default=None, description="on-demand rotation: machines created before this are rolled")


class ClusterSpec(Model):
    cluster_name: ClusterName
    namespace: Namespace = "default"
    revision: Annotated[int, Field(ge=1)]
    kubernetes_version: KubeVersion
    infrastructure: Infrastructure
    control_plane: ControlPlane
    workers: tuple[WorkerPool, ...] = ()
    profile: ClusterProfile | None = None
    certificates: CertificatePolicy = CertificatePolicy()
    ssh_authorized_keys: tuple[SshKey, ...] = ()
    # None when not set, so a spec that does not use it signs (and hashes) as before, and an
    # agent that predates it keeps accepting it.
    upgrade: UpgradePolicy | None = None
    maintenance: MaintenancePolicy | None = None
    approvals: tuple[Approval, ...] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ClusterSpec:
        provider = self.infrastructure.provider
        machines = [("controlPlane.machine", self.control_plane.machine)] + [
            (f"workers[{w.name}].machine", w.machine) for w in self.workers]
        for where, m in machines:
            if m.provider != provider:
                raise ValueError(f"{where}.provider is {m.provider!r} but the infrastructure "
                                 f"provider is {provider!r}")
        names = [w.name for w in self.workers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"worker pool names must be unique; repeated: {', '.join(dupes)}")
        cp = version_tuple(self.kubernetes_version)
        for w in self.workers:
            if w.version is None:
                continue
            wv = version_tuple(w.version)
            if wv > cp:
                raise ValueError(f"workers[{w.name}].version {w.version} is newer than the "
                                 f"control plane {self.kubernetes_version}: workers may never "
                                 "run ahead of the control plane")
            if wv[0] != cp[0] or cp[1] - wv[1] > MAX_KUBELET_SKEW:
                raise ValueError(f"workers[{w.name}].version {w.version} is more than three "
                                 f"minor versions behind {self.kubernetes_version}")
        policy = self.upgrade_policy
        problem = path_problem(policy.path, self.kubernetes_version)
        if problem:
            raise ValueError(f"upgrade.path: {problem}")
        unknown = sorted(set(policy.order) - set(names))
        if unknown:
            raise ValueError(f"upgrade.order names pools the spec does not have: "
                             f"{', '.join(unknown)}")
        return self

    @property
    def upgrade_policy(self) -> UpgradePolicy:
        return self.upgrade or UpgradePolicy()

    def pool_version(self, pool: WorkerPool) -> str:
        return pool.version or self.kubernetes_version
