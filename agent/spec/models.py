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


class WorkerPool(Model):
    name: PoolName
    replicas: Annotated[int, Field(ge=0, le=1000)]
    machine: MachineTemplate
    version: KubeVersion | None = Field(
        default=None, description="defaults to the cluster's Kubernetes version")


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
            if wv[0] != cp[0] or cp[1] - wv[1] > 3:
                raise ValueError(f"workers[{w.name}].version {w.version} is more than three "
                                 f"minor versions behind {self.kubernetes_version}")
        return self

    def pool_version(self, pool: WorkerPool) -> str:
        return pool.version or self.kubernetes_version
