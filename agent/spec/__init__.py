"""The contract shared by the gateway and the agent: models, signed envelope, status. No I/O."""

from .envelope import (
    EnvelopeError,
    SignedSpec,
    canonical_bytes,
    explain,
    key_id,
    load_public_keys,
    parse_envelope,
    public_key_text,
    sign,
    verify,
)
from .models import (
    Addon,
    CertificatePolicy,
    ClusterProfile,
    ClusterSpec,
    ControlPlane,
    DevInfrastructure,
    DevMachine,
    VSphereInfrastructure,
    VSphereMachine,
    WorkerPool,
    version_tuple,
)
from .status import Condition, PoolStatus, ReplicaStatus, StatusReport

__all__ = [
    "Addon", "CertificatePolicy", "ClusterProfile", "ClusterSpec", "Condition", "ControlPlane",
    "DevInfrastructure", "DevMachine", "EnvelopeError", "PoolStatus", "ReplicaStatus",
    "SignedSpec", "StatusReport", "VSphereInfrastructure", "VSphereMachine", "WorkerPool",
    "canonical_bytes", "explain", "key_id", "load_public_keys", "parse_envelope",
    "public_key_text", "sign", "verify", "version_tuple",
]
