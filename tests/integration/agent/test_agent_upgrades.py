"""A Kubernetes upgrade over three minors, run by the whole agent against simulated Cluster API
with the link to the management plane cut once the spec has arrived: the control plane steps
through the path's exact releases, each step finished before the next; then the pools, one at a
time in the given order, straight to the control plane's version; a newer spec arriving
mid-rollout continues from what is observed, never leaving a pool on mixed versions."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest_asyncio

from agent.runtime.contact import boot_id, boottime
from testbed.apiserver.store import Event
from testbed.capi.util import rfc3339
from testbed.site import Site
from tests.fixtures.site import eventually, make_spec, site

__all__ = ["site"]

PATH = ["v1.34.7", "v1.35.3"]


@pytest_asyncio.fixture
async def old_site(tmp_path: Path) -> AsyncIterator[Site]:
    s = await Site.create(tmp_path, version="v1.33.5")
    try:
        yield s
    finally:
        await s.close()


class Timeline:
    """Every change of the control plane's running version and of each pool's template
    version, in the order the API server stored them."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []
        self.interrupted: list[str] = []  # rollouts changed before they finished
        self._last: dict[str, dict[str, Any]] = {}

    def on_event(self, ev: Event) -> None:
        if ev.type not in ("ADDED", "MODIFIED"):
            return
        if ev.rkey.startswith("kubeadmcontrolplanes."):
            self._check("cp", ev.obj, ev.obj["spec"].get("version"))
            self._add("cp", (ev.obj.get("status") or {}).get("version"))
        elif ev.rkey.startswith("machinedeployments."):
            pool = ev.obj["metadata"]["labels"].get("outpost.io/pool", "?")
            version = ev.obj["spec"]["template"]["spec"].get("version")
            self._check(pool, ev.obj, version)
            self._add(pool, version)

    def _check(self, who: str, obj: dict[str, Any], version: Any) -> None:
        """A new spec version while the last one was still rolling out is an interruption."""
        before = self._last.get(who)
        self._last[who] = obj
        if before is None or version_of(before) == version:
            return
        st, meta = before.get("status") or {}, before["metadata"]
        want = before["spec"].get("replicas", 1)
        if not (st.get("observedGeneration") == meta.get("generation")
                and st.get("upToDateReplicas") == want == st.get("readyReplicas")):
            self.interrupted.append(f"{who}: {version_of(before)} -> {version} while {st}")

    def _add(self, who: str, version: Any) -> None:
        if not isinstance(version, str):
            return
        last = next((v for w, v in reversed(self.entries) if w == who), None)
        if last != version:
            self.entries.append((who, version))

    def of(self, who: str) -> list[str]:
        return [v for w, v in self.entries if w == who]


def version_of(obj: dict[str, Any]) -> Any:
    spec = obj.get("spec") or {}
    return spec.get("version") or ((spec.get("template") or {}).get("spec") or {}).get("version")


def pools(site: Site) -> dict[str, tuple[str, int]]:
    """Each pool's template version and how many of its machines are up to date."""
    out = {}
    for name in site.names("machinedeployments"):
        md = site.obj("machinedeployments", name)
        assert md is not None
        out[md["metadata"]["labels"]["outpost.io/pool"]] = (
            md["spec"]["template"]["spec"]["version"],
            int((md.get("status") or {}).get("upToDateReplicas") or 0))
    return out


async def test_v1_33_to_v1_36_offline_along_the_path(old_site: Site) -> None:
    site = old_site
    timeline = Timeline()
    site.api.store.subscribe(timeline.on_event)
    agent = await site.start_agent()
    await site.publish(make_spec(revision=1, cp=1, version="v1.33.5",
                                 workers={"a": 1, "b": 1}))
    await eventually(lambda: agent.agent.applied_revision == 1, timeout=60,
                     what="revision 1 converged at v1.33.5")

    await site.publish(make_spec(revision=2, cp=1, version="v1.36.1", workers={"a": 1, "b": 1},
                                 upgrade={"path": PATH, "order": ["b", "a"]}))
    await eventually(lambda: agent.agent.intake.desired is not None
                     and agent.agent.intake.desired.revision == 2, what="revision 2 cached")
    await site.nats.stop()  # the site is on its own from here

    async def upgraded() -> bool:
        return pools(site) == {"a": ("v1.36.1", 1), "b": ("v1.36.1", 1)} and \
            timeline.of("cp")[-1:] == ["v1.36.1"]
    await eventually(upgraded, timeout=180, what="control plane and pools at v1.36.1")

    assert timeline.of("cp") == ["v1.33.5", "v1.34.7", "v1.35.3", "v1.36.1"]
    assert timeline.of("a") == ["v1.33.5", "v1.36.1"]  # one repave, straight there
    assert timeline.of("b") == ["v1.33.5", "v1.36.1"]
    order = [(w, v) for w, v in timeline.entries if v == "v1.36.1"]
    assert order[0] == ("cp", "v1.36.1") and [w for w, _ in order[1:]] == ["b", "a"]
    await eventually(lambda: agent.agent.applied_revision == 2, timeout=60,
                     what="revision 2 reported applied")
    notes = {n.reason for n in (agent.agent.last_pass.notes if agent.agent.last_pass else ())}
    assert not notes & {"UpgradePathGap", "WaitingForControlPlane", "WaitingForPool"}
    assert timeline.interrupted == []


async def test_a_newer_spec_mid_rollout_continues_from_what_is_observed(
        old_site: Site) -> None:
    """Revision 2 goes to v1.35.3; revision 3 (to v1.36.1) arrives once the control plane's
    first step is done. Nothing is interrupted: each rollout finishes, the control plane never
    steps back nor skips, and everything ends at v1.36.1."""
    site = old_site
    timeline = Timeline()
    site.api.store.subscribe(timeline.on_event)
    agent = await site.start_agent()
    workers = {"a": 2, "b": 2}
    await site.publish(make_spec(revision=1, cp=3, version="v1.33.5", workers=workers))
    await eventually(lambda: agent.agent.applied_revision == 1, timeout=60,
                     what="revision 1 converged")
    await site.publish(make_spec(revision=2, cp=3, version="v1.35.3", workers=workers,
                                 upgrade={"path": PATH[:1], "workers": "OneAtATime"}))
    await eventually(lambda: "v1.34.7" in timeline.of("cp"), timeout=120,
                     what="the first step done")
    await site.publish(make_spec(revision=3, cp=3, version="v1.36.1", workers=workers,
                                 upgrade={"path": PATH, "workers": "OneAtATime"}))

    async def upgraded() -> bool:
        return pools(site) == {"a": ("v1.36.1", 2), "b": ("v1.36.1", 2)} and \
            timeline.of("cp")[-1:] == ["v1.36.1"]
    await eventually(upgraded, timeout=240, what="everything at v1.36.1")
    assert timeline.of("cp") == ["v1.33.5", "v1.34.7", "v1.35.3", "v1.36.1"]
    for pool in ("a", "b"):  # at most one intermediate repave (if revision 2 got that far)
        assert timeline.of(pool) in (["v1.33.5", "v1.36.1"], ["v1.33.5", "v1.35.3", "v1.36.1"])
    assert timeline.interrupted == []


async def test_an_upgrade_needing_approval_acts_on_a_signed_one_offline(site: Site) -> None:
    """The policy holds upgrades for an approval: the approval must come inside a spec signed
    by the gateway (a forged spec carrying one is rejected and changes nothing), and a site cut
    off right after receiving it still acts on it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.spec import sign
    from mgmt_gateway.ctl import edits

    agent = await site.start_agent()
    policy = {"requireApproval": ["upgrade"]}
    await site.publish(make_spec(revision=1, maintenance=policy))
    await eventually(lambda: agent.agent.applied_revision == 1, timeout=60, what="revision 1")
    await site.publish(make_spec(revision=2, version="v1.35.4", maintenance=policy))

    def noted(reason: str) -> bool:
        return reason in agent.agent.notes
    await eventually(lambda: noted("WaitingForApproval"), what="the upgrade held")

    cr = {"kubernetesVersion": "v1.35.4", "infrastructure": {"provider": "dev"},
          "controlPlane": {"replicas": 1, "machine": {"provider": "dev"}},
          "sshAuthorizedKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOutpostTestKey ops@site"],
          "maintenance": policy}
    approved, _ = edits.approve({"spec": cr, "status": {"desiredRevision": 2}}, "upgrade",
                                "ops@site", datetime.now(UTC))
    forged = make_spec(revision=3, version="v1.35.4", maintenance=policy,
                       approvals=approved["approvals"])
    await site.publish(sign(forged, Ed25519PrivateKey.generate()))
    await eventually(lambda: agent.agent.intake.last_rejection is not None,
                     what="the forged spec rejected")
    assert agent.agent.intake.last_rejection is not None
    assert agent.agent.intake.last_rejection.reason in ("unknown_key", "bad_signature")
    assert site.obj("kubeadmcontrolplanes", "edge-1-control-plane")["spec"][  # type: ignore[index]
        "version"] == "v1.35.2"
    assert noted("WaitingForApproval")

    await site.publish(make_spec(revision=4, version="v1.35.4", maintenance=policy,
                                 approvals=approved["approvals"]))
    await eventually(lambda: agent.agent.intake.desired is not None
                     and agent.agent.intake.desired.revision == 4, what="revision 4 cached")
    await site.nats.stop()

    def upgraded() -> bool:
        kcp = site.obj("kubeadmcontrolplanes", "edge-1-control-plane") or {}
        return (kcp.get("status") or {}).get("version") == "v1.35.4"
    await eventually(upgraded, timeout=60, what="the approved upgrade done offline")
    assert not noted("WaitingForApproval")


async def test_expiring_certificates_roll_even_when_stale_and_outside_windows(
        site: Site) -> None:
    """A site cut off for longer than staleAfterDays, outside its window: a control-plane
    machine whose certificates come within rotateBeforeDays is still replaced (Cluster API's
    rollout.before, which the agent keeps in force)."""
    # The only window: an hour, three days from now, so closed throughout the test.
    start = (datetime.now(UTC) + timedelta(hours=3)).strftime("%H:%M")
    day = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[
        (datetime.now(UTC) + timedelta(days=3)).weekday()]
    policy = {"windows": [{"days": [day], "start": start, "durationMinutes": 60}],
              "staleAfterDays": 1}
    first = await site.start_agent()
    await site.publish(make_spec(revision=1, maintenance=policy,
                                 certificates={"rotateBeforeDays": 30}))
    await eventually(lambda: first.agent.intake.desired is not None, what="the spec cached")
    assert await first.shutdown() == 0
    await site.nats.stop()
    # Three days later, as the agent's persisted record tells it (same boot).
    (site.root / "state-agent-a" / "last-contact.json").write_text(json.dumps(
        {"age": 3 * 86400.0, "boot": boot_id(), "boottime": boottime(), "wall": 0}))
    agent = await site.start_agent()
    await eventually(lambda: agent.agent.applied_revision == 1 or agent.agent.last_pass
                     is not None, timeout=60, what="a first pass")
    assert agent.agent.contact.age() > 86400

    def machines() -> list[dict[str, Any]]:
        rt = site.api.registry.type_by_kind("cluster.x-k8s.io/v1beta2", "Machine")
        assert rt is not None
        return [m for m in site.api.store.items(rt.key, "fleet")
                if not m["metadata"].get("deletionTimestamp")]

    await eventually(lambda: len(machines()) == 1 and "certificatesExpiryDate" in (
        machines()[0].get("status") or {}), timeout=60, what="the control-plane machine up")
    old = machines()[0]
    rt = site.api.registry.type_by_kind("cluster.x-k8s.io/v1beta2", "Machine")
    assert rt is not None
    soon = dict(old)
    soon["status"] = {**old["status"], "certificatesExpiryDate": rfc3339(
        datetime.now(UTC) + timedelta(days=10))}
    site.api.registry.update(rt, "fleet", old["metadata"]["name"], soon, manager="kubeadm",
                             subresource="status")

    async def replaced() -> bool:
        names = [m["metadata"]["name"] for m in machines()]
        return old["metadata"]["name"] not in names and len(names) == 1
    await eventually(replaced, timeout=60, what="the machine with expiring certificates replaced")
    kcp = site.obj("kubeadmcontrolplanes", "edge-1-control-plane")
    assert kcp is not None
    assert kcp["spec"]["rollout"]["before"] == {"certificatesExpiryDays": 30}
    assert agent.agent.contact.age() > 86400  # still stale throughout


async def test_an_upgrade_waits_offline_for_its_window_then_proceeds(site: Site) -> None:
    """The agent's clock says Monday; the window is Saturday night in Berlin. Cut off, the
    site holds the upgrade (and says until when), scales at once, and upgrades when the
    window opens."""
    now = [datetime(2026, 12, 7, 12, 0, tzinfo=UTC)]  # a Monday
    agent = await site.start_agent()
    agent.agent.controller.clock = lambda: now[0]
    policy = {"windows": [{"days": ["Sat"], "start": "22:00", "durationMinutes": 240,
                           "timeZone": "Europe/Berlin"}]}
    await site.publish(make_spec(revision=1, maintenance=policy, workers={"a": 1}))
    await eventually(lambda: agent.agent.applied_revision == 1, timeout=60, what="revision 1")
    await site.publish(make_spec(revision=2, version="v1.35.4", maintenance=policy,
                                 workers={"a": 2}))
    await eventually(lambda: agent.agent.intake.desired is not None
                     and agent.agent.intake.desired.revision == 2, what="revision 2 cached")
    await site.nats.stop()

    def pool_scaled() -> bool:
        md = site.obj("machinedeployments", "edge-1-a") or {}
        return (md.get("spec") or {}).get("replicas") == 2
    await eventually(pool_scaled, timeout=60, what="the pool scaled outside the window")
    await eventually(lambda: "WaitingForMaintenanceWindow" in agent.agent.notes,
                     what="the upgrade held")
    assert "the next opens 2026-12-12T22:00+01:00" in agent.agent.notes[
        "WaitingForMaintenanceWindow"]
    kcp = site.obj("kubeadmcontrolplanes", "edge-1-control-plane")
    assert kcp is not None and kcp["spec"]["version"] == "v1.35.2"

    now[0] = datetime(2026, 12, 12, 21, 30, tzinfo=UTC)  # Saturday 22:30 in Berlin
    agent.agent.controller.trigger("the window opened")

    def upgraded() -> bool:
        kcp = site.obj("kubeadmcontrolplanes", "edge-1-control-plane") or {}
        return (kcp.get("status") or {}).get("version") == "v1.35.4"
    await eventually(upgraded, timeout=60, what="the upgrade done in the window")
    assert "WaitingForMaintenanceWindow" not in agent.agent.notes
