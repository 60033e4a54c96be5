"""What a client sends to ask for a cluster (`POST /v1/clusters`) or to change one
(`PUT /v1/clusters/{name}/spec`).

The fields reuse the ClusterSpec field types, so each invalid field is reported at its own path
in the client's terms. The checks that span several fields (machine providers matching the
infrastructure, unique pools, worker version skew) belong to ClusterSpec alone; a request runs
them by assembling a trial spec, so a body that validates always turns into a spec. The gateway
never restates a rule of the contract: the agent enforces the same ones on what it receives.
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from agent.spec.models import (
    CertificatePolicy,
    ClusterName,
    ClusterProfile,
    ClusterSpec,
    ControlPlane,
    Infrastructure,
    KubeVersion,
    Model,
    Namespace,
    SshKey,
    WorkerPool,
)

# Stands in for the cluster name while a name-less update is checked: no cross-field rule of
# ClusterSpec looks at the name, and the real one is validated where it comes from (body or URL).
_TRIAL_NAME = "trial"


class _SpecBody(Model):
    """The ClusterSpec fields a client writes: all but the name and the revision."""

    namespace: Namespace = Field(
        default="default", description="namespace of the cluster's Cluster API objects")
    kubernetes_version: KubeVersion = Field(description="e.g. v1.35.2")
    infrastructure: Infrastructure
    control_plane: ControlPlane
    workers: tuple[WorkerPool, ...] = ()
    profile: ClusterProfile | None = None
    certificates: CertificatePolicy = CertificatePolicy()
    ssh_authorized_keys: tuple[SshKey, ...] = Field(
        default=(), description="OpenSSH public keys, installed through cloud-init")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        try:
            self._build(_TRIAL_NAME, 1)
        except ValidationError as e:
            # Only ClusterSpec's own cross-field rules can fail here (every field passed): they
            # have no location of their own and name the offending field in their message.
            problems = []
            for err in e.errors(include_url=False):
                where = ".".join(str(p) for p in err["loc"])
                msg = str(err["msg"]).removeprefix("Value error, ")
                problems.append(f"{where}: {msg}" if where else msg)
            raise PydanticCustomError("inconsistent_spec", "{detail}",
                                      {"detail": "; ".join(problems)}) from None
        return self

    def _build(self, cluster_name: str, revision: int) -> ClusterSpec:
        fields = {name: getattr(self, name) for name in _SpecBody.model_fields}
        return ClusterSpec.model_validate(
            {**fields, "cluster_name": cluster_name, "revision": revision})


class ClusterRequest(_SpecBody):
    """A new cluster: its name plus its whole desired spec."""

    name: ClusterName = Field(description="DNS label of at most 40 characters; the cluster's "
                              "key in NATS and the stem of its Cluster API object names")

    def to_spec(self, revision: int) -> ClusterSpec:
        """The spec at `revision` (the gateway gives a new cluster 1).

        A validated request only fails here on the revision; errors are ClusterSpec's
        ValidationError, whose locations are the request's except `clusterName` (= `name`)."""
        return self._build(self.name, revision)


class ClusterSpecUpdate(_SpecBody):
    """The whole desired spec of an existing cluster (day 2): the name comes from the URL and
    the revision from the gateway, so neither is accepted in the body."""

    def to_spec(self, cluster_name: str, revision: int) -> ClusterSpec:
        """The spec of `cluster_name` at `revision`; errors as ClusterRequest.to_spec."""
        return self._build(cluster_name, revision)
