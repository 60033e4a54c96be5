"""Bad specs over NATS: each rejected with its reason, the last good spec still enforced."""

from __future__ import annotations

import base64
import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kubernetes_asyncio import client

from agent.spec import ClusterSpec, sign
from agent.spec.envelope import DOMAIN, key_id
from tests.fixtures.site import NS, Site, eventually, make_spec, spec_dict


def resign(payload: bytes, key: Ed25519PrivateKey) -> bytes:
    return json.dumps({"algorithm": "ed25519", "keyId": key_id(key.public_key()),
                       "payload": base64.b64encode(payload).decode(),
                       "signature": base64.b64encode(key.sign(DOMAIN + payload)).decode()}
                      ).encode()


def forged(site: Site) -> bytes:
    env = json.loads(sign(make_spec(revision=9, cp=5), site.key))
    payload = json.loads(base64.b64decode(env["payload"]))
    payload["controlPlane"]["replicas"] = 5
    payload["revision"] = 10
    env["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    return json.dumps(env).encode()


async def test_each_bad_spec_is_rejected_and_the_good_one_kept(site: Site) -> None:
    agent = await site.start_agent()
    good = make_spec(revision=5, cp=3, workers={"a": 1})
    await site.publish(good)
    await eventually(lambda: agent.agent.applied_revision == 5, timeout=30,
                     what="good spec applied")
    other_cluster = ClusterSpec.model_validate({**spec_dict(revision=6), "clusterName": "edge-2"})
    bad_schema = json.dumps({**spec_dict(revision=7), "controlPlane": {
        "replicas": 2, "machine": {"provider": "dev"}}}).encode()
    cases = [
        ("bad_signature", forged(site)),
        ("unknown_key", sign(make_spec(revision=11), Ed25519PrivateKey.generate())),
        ("wrong_cluster", sign(other_cluster, site.key)),
        ("stale_revision", sign(make_spec(revision=4, cp=1), site.key)),
        ("malformed", b"{this is not json"),
        ("invalid_spec", resign(bad_schema, site.key)),
        ("oversize", b"x" * (300 * 1024)),
    ]
    def rejected(reason: str) -> float:
        value = agent.agent.metrics.registry.get_sample_value(
            "outpost_agent_spec_rejections_total", {"reason": reason})
        return value or 0.0

    for reason, raw in cases:
        before = rejected(reason)
        await site.publish(raw)
        await eventually(lambda r=reason, b=before: rejected(r) == b + 1,  # type: ignore[misc]
                         what=f"rejection {reason}")
        assert agent.agent.intake.last_rejection is not None
        assert agent.agent.intake.last_rejection.reason == reason
        assert agent.agent.intake.desired == good
    # The message says what is wrong, for a person.
    await site.publish(resign(bad_schema, site.key))
    await eventually(lambda: "controlPlane.replicas" in str(
        agent.agent.intake.last_rejection.message), what="readable reason")  # type: ignore[union-attr]

    # The last good spec is still enforced: drift is corrected.
    async with site.client() as api:
        await client.CustomObjectsApi(api).patch_namespaced_custom_object(
            "controlplane.cluster.x-k8s.io", "v1beta2", NS, "kubeadmcontrolplanes",
            "edge-1-control-plane", {"spec": {"replicas": 1}},
            _content_type="application/merge-patch+json")
    await eventually(lambda: site.obj("kubeadmcontrolplanes", "edge-1-control-plane")["spec"][
        "replicas"] == 3, what="control plane restored to the good spec")  # type: ignore[index]

    # Rejections surface as Kubernetes Events and in the status report.
    def rejection_events() -> set[str]:
        rt = site.api.registry.type_for("", "v1", "events")
        return {e["reason"] for e in site.api.store.items(rt.key, "outpost-system")}

    await eventually(lambda: "SpecRejected" in rejection_events(), what="Kubernetes event")
    await eventually(lambda: agent.agent.last_status is not None and any(
        c.type == "SpecAccepted" and c.status == "False"
        for c in agent.agent.last_status.conditions), what="status condition")
    assert agent.agent.last_status.phase == "Degraded"  # type: ignore[union-attr]
    # A newer good spec clears it.
    await site.publish(make_spec(revision=12, cp=3, workers={"a": 2}))
    await eventually(lambda: agent.agent.applied_revision == 12, timeout=30,
                     what="newer good spec applied")
    assert await agent.shutdown() == 0


async def test_corrupt_cache_falls_back_to_the_previous_copy(site: Site) -> None:
    agent = await site.start_agent()
    await site.publish(make_spec(revision=1, cp=1))
    await eventually(lambda: agent.agent.applied_revision == 1, timeout=30, what="rev 1")
    await site.publish(make_spec(revision=2, cp=3))
    await eventually(lambda: agent.agent.applied_revision == 2, timeout=30, what="rev 2")
    assert await agent.shutdown() == 0
    await site.nats.stop()
    cache = site.settings().state_dir / "spec" / "spec.json"
    data = bytearray(cache.read_bytes())
    data[len(data) // 2] ^= 0x55
    cache.write_bytes(bytes(data))
    again = await site.start_agent()
    await eventually(lambda: again.agent.intake.desired is not None, what="cache loaded")
    assert again.agent.intake.desired.revision == 1  # type: ignore[union-attr]
    assert again.agent.intake.cache.corrupt_detected >= 1
    assert again.agent.intake.cache.last_problem
    await eventually(lambda: site.obj("kubeadmcontrolplanes", "edge-1-control-plane")["spec"][
        "replicas"] == 1, what="previous good spec enforced")  # type: ignore[index]
    assert await again.shutdown() == 0
