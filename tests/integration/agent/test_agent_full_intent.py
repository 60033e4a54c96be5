"""Full intent: what the spec no longer says leaves the cluster. A revoked SSH key leaves the
control plane and every worker bootstrap template, also when the pivot created those fields."""

from __future__ import annotations

from typing import Any

from agent.spec import capi
from tests.fixtures.site import NS, Site, eventually, make_spec

K1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOutpostTestKey ops@site"
K2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILostLaptopKey laptop@lost"


def kcp(site: Site) -> dict[str, Any]:
    found = site.obj("kubeadmcontrolplanes", "edge-1-control-plane")
    assert found is not None
    return found


def kcp_keys(site: Site) -> list[str]:
    users = ((kcp(site)["spec"].get("kubeadmConfigSpec") or {}).get("users") or [])
    return [k for u in users for k in u.get("sshAuthorizedKeys") or []]


def md_bootstrap_keys(site: Site, pool: str) -> list[str]:
    md = site.obj("machinedeployments", f"edge-1-{pool}")
    assert md is not None
    name = md["spec"]["template"]["spec"]["bootstrap"]["configRef"]["name"]
    template = site.obj("kubeadmconfigtemplates", name)
    assert template is not None, f"{name} referenced but missing"
    users = template["spec"]["template"]["spec"].get("users") or []
    return [k for u in users for k in u.get("sshAuthorizedKeys") or []]


def live_template_keys(site: Site) -> set[str]:
    """Keys in any bootstrap template of the cluster still present."""
    out: set[str] = set()
    for name in site.names("kubeadmconfigtemplates", f"{capi.LABEL_CLUSTER}=edge-1"):
        t = site.obj("kubeadmconfigtemplates", name) or {}
        for u in t.get("spec", {}).get("template", {}).get("spec", {}).get("users") or []:
            out.update(u.get("sshAuthorizedKeys") or [])
    return out


async def test_a_revoked_key_leaves_every_machine_config(site: Site) -> None:
    agent = await site.start_agent()
    await site.publish(make_spec(revision=1, workers={"a": 1, "b": 1},
                                 sshAuthorizedKeys=[K1, K2],
                                 certificates={"rotateAfter": "2026-01-01T00:00:00Z"}))
    await eventually(lambda: agent.agent.applied_revision == 1, timeout=60, what="revision 1")
    assert kcp_keys(site) == [K1, K2]
    assert md_bootstrap_keys(site, "a") == [K1, K2] == md_bootstrap_keys(site, "b")
    assert kcp(site)["spec"]["rollout"]["after"] == "2026-01-01T00:00:00Z"

    # The laptop with K2 is lost; rotation after a date is no longer wanted.
    await site.publish(make_spec(revision=2, workers={"a": 1, "b": 1}, sshAuthorizedKeys=[K1]))
    await eventually(lambda: agent.agent.applied_revision == 2, timeout=60, what="revision 2")
    assert kcp_keys(site) == [K1]
    assert "after" not in kcp(site)["spec"]["rollout"]
    assert md_bootstrap_keys(site, "a") == [K1] == md_bootstrap_keys(site, "b")
    await eventually(lambda: K2 not in live_template_keys(site), timeout=60,
                     what="old bootstrap templates collected")

    # No key at all: no cloud-init user left anywhere.
    await site.publish(make_spec(revision=3, workers={"a": 1, "b": 1}, sshAuthorizedKeys=[]))
    await eventually(lambda: agent.agent.applied_revision == 3, timeout=60, what="revision 3")
    assert kcp_keys(site) == []
    assert "users" not in (kcp(site)["spec"].get("kubeadmConfigSpec") or {})
    assert md_bootstrap_keys(site, "a") == [] == md_bootstrap_keys(site, "b")
    await eventually(lambda: not live_template_keys(site), timeout=60,
                     what="every template with a key collected")
    assert NS
    assert await agent.shutdown() == 0
