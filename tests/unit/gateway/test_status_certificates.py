"""The OutpostCluster status shows the control-plane certificates' expiry the agent reports,
with its warning condition, and keeps the last known while the agent is not heard from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.report.status import compute_status
from agent.spec import ClusterSpec
from mgmt_gateway.clusters import AgentView, status_of

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


def test_the_resource_shows_certificate_expiry_and_its_condition() -> None:
    spec = ClusterSpec.model_validate({
        "clusterName": "edge", "revision": 1, "kubernetesVersion": "v1.35.2",
        "infrastructure": {"provider": "dev"},
        "controlPlane": {"replicas": 1, "machine": {"provider": "dev"}}})
    report = compute_status("edge", spec, observed_revision=1, applied_revision=1,
                            connected=True, agent_version="t", now=NOW,
                            certificates=[("edge-cp-x", NOW + timedelta(days=3))])
    obj = {"metadata": {"name": "edge", "namespace": "fleet", "generation": 1},
           "status": {"phase": "Managed", "desiredRevision": 1}}
    st = status_of(None, obj, spec_digest=None, invalid=None,
                   agent=AgentView(report, NOW, True), now=NOW)
    assert st["certificates"] == {"expiresAt": "2030-06-04T12:00:00Z", "machines": [
        {"machine": "edge-cp-x", "expiresAt": "2030-06-04T12:00:00Z"}]}
    cond = next(c for c in st["conditions"] if c["type"] == "CertificatesExpiring")
    assert cond["status"] == "True" and "in 3d" in cond["message"]
    # The agent goes quiet: the last known expiry stays shown.
    quiet = status_of(None, {**obj, "status": st}, spec_digest=None, invalid=None, agent=None,
                      now=NOW)
    assert quiet["certificates"] == st["certificates"]


def test_a_spec_without_the_new_fields_hashes_as_before() -> None:
    """An upgraded gateway must not see every cluster as changed: the digest of a spec that
    sets none of the fields added since is the one the previous release computed."""
    from mgmt_gateway.clusters import spec_hash

    s = ClusterSpec.model_validate({
        "clusterName": "edge", "namespace": "fleet", "revision": 3,
        "kubernetesVersion": "v1.35.2", "infrastructure": {"provider": "dev"},
        "controlPlane": {"replicas": 3, "machine": {"provider": "dev"}},
        "workers": [{"name": "a", "replicas": 2, "machine": {"provider": "dev"}}],
        "sshAuthorizedKeys": ["ssh-ed25519 AAAAC3NzaA ops@site"]})
    assert spec_hash(s) == "782c720d1ae1357d"  # as computed by the release before them
