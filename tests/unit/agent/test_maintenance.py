"""When disruptive operations may start: maintenance windows (time zones, DST, past midnight),
the stale-spec guard with its clock measured robustly (restarts, reboots, wall-clock jumps),
emergency certificate rotation; and the planner holding upgrades and repaves accordingly while
scaling goes on."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.plan.gate import Gate
from agent.plan.topology import plan_topology
from agent.runtime.contact import LastContact
from agent.spec.maintenance import MaintenancePolicy, MaintenanceWindow, window_state
from tests.unit.agent.test_plan_topology import converged, kinds, make_spec

DAY = 86400.0
SAT_NIGHT = {"days": ["Sat"], "start": "22:00", "durationMinutes": 240,
             "timeZone": "Europe/Berlin"}


def window(**kw: Any) -> MaintenanceWindow:
    return MaintenanceWindow.model_validate({**SAT_NIGHT, **kw})


@pytest.mark.parametrize(("now", "is_open", "next_open"), [
    # 2026-12-05 is a Saturday; Berlin is UTC+1 in winter.
    ("2026-12-05T20:59:00+00:00", False, "2026-12-05T21:00:00+00:00"),
    ("2026-12-05T21:00:00+00:00", True, None),
    ("2026-12-06T00:30:00+00:00", True, None),     # past midnight, still Saturday's window
    ("2026-12-06T01:00:00+00:00", False, "2026-12-12T21:00:00+00:00"),
    # Summer time: the same local 22:00 is 20:00 UTC.
    ("2026-07-04T19:59:00+00:00", False, "2026-07-04T20:00:00+00:00"),
])
def test_a_window_in_its_own_time_zone(now: str, is_open: bool, next_open: str | None) -> None:
    state = window_state((window(),), datetime.fromisoformat(now))
    assert state[0] is is_open
    assert state[1] == (datetime.fromisoformat(next_open) if next_open else None)


def test_a_window_across_a_dst_change_lasts_its_real_duration() -> None:
    # Europe/Berlin leaves summer time at 03:00 local on 2026-10-25 (a Sunday).
    w = window(days=["Sun"], start="01:00", durationMinutes=180)
    opens, closes = next((o, c) for o, c in w.openings(datetime(2026, 10, 25, tzinfo=UTC))
                         if o.date().isoformat() == "2026-10-25")
    assert closes.astimezone(UTC) - opens.astimezone(UTC) == timedelta(hours=3)


def test_bad_windows_are_refused_with_what_to_write() -> None:
    with pytest.raises(ValidationError, match="not an IANA time zone like Europe/Berlin"):
        window(timeZone="Mars/Olympus")
    with pytest.raises(ValidationError, match="not a time of day like 02:00"):
        window(start="2am")


POLICY = MaintenancePolicy.model_validate({"windows": [SAT_NIGHT], "staleAfterDays": 7,
                                           "emergencyDays": 5})
MONDAY = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def test_the_gate() -> None:
    closed = Gate(POLICY, MONDAY, contact_age=60)
    ok, note = closed.check("upgrade", "control-plane upgrade to v1.36.1")
    assert not ok and note is not None and note.reason == "WaitingForMaintenanceWindow"
    assert "the next opens 2026-12-12T22:00+01:00 (in 5d9h)" in note.message
    # Rotation waits too, unless a certificate expires within the emergency days.
    assert not closed.check("rotation", "rotation")[0]
    soon = replace(closed, cert_expiry=MONDAY + timedelta(days=3))
    ok, note = soon.check("rotation", "rotation")
    assert ok and note is not None and note.reason == "EmergencyRotation"
    # Stale: nothing disruptive starts, even in a window, but rotation goes on.
    stale = Gate(POLICY, datetime(2026, 12, 5, 22, 30, tzinfo=UTC), contact_age=8 * DAY)
    ok, note = stale.check("repave", "pool a: machine template change")
    assert not ok and note is not None and note.reason == "StaleSpec"
    assert "last heard from 8d0h ago, over the policy's 7d" in note.message
    assert stale.check("rotation", "rotation") == (True, None)
    assert Gate(None, MONDAY, contact_age=100 * DAY).check("upgrade", "x") == (True, None)


class Clocks:
    """The clocks a LastContact reads: monotonic (this process), the machine's boot id and
    boot-time clock, and the wall clock, each moved by the test."""

    def __init__(self) -> None:
        self.mono, self.boottime, self.wall, self.boot = 1000.0, 5000.0, 1.8e9, "boot-1"

    def contact(self, path: Path) -> LastContact:
        return LastContact(path, monotonic=lambda: self.mono, wall=lambda: self.wall,
                           boot=lambda: (self.boot, self.boottime))

    def run(self, seconds: float) -> None:
        self.mono += seconds
        self.boottime += seconds
        self.wall += seconds


def test_the_last_contact_survives_restarts_and_ignores_wall_clock_jumps(tmp_path: Path) -> None:
    c = Clocks()
    path = tmp_path / "last-contact.json"
    lc = c.contact(path)
    lc.load()
    lc.touch()
    c.run(3 * DAY)
    c.wall -= 30 * DAY  # someone sets the clock back a month: no effect while running
    assert lc.age() == pytest.approx(3 * DAY)
    lc.persist()

    # The agent restarts on the same boot after 2 days down, the wall clock jumping ahead a
    # year meanwhile: the boot-time clock says 2 days.
    c.run(2 * DAY)
    c.wall += 365 * DAY
    c.mono = 7.0  # a new process
    again = c.contact(path)
    again.load()
    assert again.age() == pytest.approx(5 * DAY)

    # A reboot (a new boot id, the boot-time clock from zero) with the wall clock set back:
    # the downtime cannot be measured, and adds nothing rather than unlocking the guard.
    again.persist()
    c.boot, c.boottime, c.wall, c.mono = "boot-2", 30.0, c.wall - 10 * DAY, 3.0
    rebooted = c.contact(path)
    rebooted.load()
    assert rebooted.age() == pytest.approx(5 * DAY)
    rebooted.touch()  # the management plane answers: fresh again, and persisted at once
    assert rebooted.age() == 0
    fresh = c.contact(path)
    fresh.load()
    assert fresh.age() == 0


def test_a_first_start_counts_from_then(tmp_path: Path) -> None:
    c = Clocks()
    lc = c.contact(tmp_path / "lc.json")
    lc.load()
    c.run(DAY)
    assert lc.age() == pytest.approx(DAY) and not lc.contacted


def test_the_planner_holds_upgrades_and_repaves_but_not_scaling() -> None:
    maintenance = {"windows": [SAT_NIGHT], "staleAfterDays": 7}
    spec = make_spec(maintenance=maintenance)
    obs = replace(converged(spec), now=MONDAY)
    target = make_spec(maintenance=maintenance, kubernetesVersion="v1.35.4",
                       workers=[{"name": "a", "replicas": 5, "machine": {
                           "provider": "dev", "image": "os:2"}}])
    plan = plan_topology(target, obs, contact_age=60)
    reasons = {n.reason for n in plan.notes}
    assert reasons == {"WaitingForMaintenanceWindow", "WaitingForControlPlane"}
    assert all(a.kind != "KubeadmControlPlane" for a in plan.actions)
    (md,) = [a for a in plan.actions if a.kind == "MachineDeployment"]
    assert md.body["spec"]["replicas"] == 5  # type: ignore[union-attr]
    assert md.body["spec"]["template"]["spec"]["infrastructureRef"]["name"] == \
        obs.machine_deployments["edge-a"]["spec"]["template"]["spec"]["infrastructureRef"][
            "name"]  # type: ignore[union-attr]
    # The window opens: both go.
    in_window = replace(obs, now=datetime(2026, 12, 5, 22, 0, tzinfo=UTC))
    plan = plan_topology(target, in_window, contact_age=60)
    assert ("apply", "KubeadmControlPlane", "edge-control-plane") in kinds(plan)
    assert "WaitingForMaintenanceWindow" not in {n.reason for n in plan.notes}
    # Stale, in the window: the upgrade does not start; it says why.
    plan = plan_topology(target, in_window, contact_age=8 * DAY)
    assert all(a.kind != "KubeadmControlPlane" for a in plan.actions)
    assert "StaleSpec" in {n.reason for n in plan.notes}


def approved_spec(version: str, approve_version: str | None, **extra: Any) -> Any:
    """A spec at `version` whose approvals approve the upgrade of the spec at
    `approve_version` (made as `outpostctl approve` makes them)."""
    from mgmt_gateway.ctl import edits

    base: dict[str, Any] = {
        "kubernetesVersion": version, "infrastructure": {"provider": "dev"},
        "controlPlane": {"replicas": 3, "machine": {"provider": "dev"}},
        "workers": [{"name": "a", "replicas": 2, "machine": {"provider": "dev"}}],
        "maintenance": {"requireApproval": ["upgrade"]}, **extra}
    approvals = []
    if approve_version is not None:
        cr, _ = edits.approve({"spec": {**base, "kubernetesVersion": approve_version},
                               "status": {"desiredRevision": 4}}, "upgrade", "ops@site",
                              MONDAY)
        approvals = cr["approvals"]
    return make_spec(**{**base, "approvals": approvals} if approvals else base)


def test_an_upgrade_waits_for_an_approval_of_exactly_it() -> None:
    obs = replace(converged(make_spec()), now=MONDAY)

    def cp_version(spec: Any) -> tuple[str | None, dict[str, str]]:
        plan = plan_topology(spec, obs)
        kcp = [a for a in plan.actions if a.kind == "KubeadmControlPlane"]
        return (kcp[0].body["spec"]["version"] if kcp else None,  # type: ignore[union-attr]
                {n.reason: n.message for n in plan.notes})

    version, notes = cp_version(approved_spec("v1.35.4", None))
    assert version is None
    assert "needs an approval of the upgrade (outpostctl approve <cluster> upgrade)" in notes[
        "WaitingForApproval"]
    # An approval of another upgrade (replayed from an earlier change) does not count.
    version, notes = cp_version(approved_spec("v1.35.4", "v1.35.3"))
    assert version is None
    assert "the approval of the upgrade by ops@site (2026-12-07 12:00 UTC, revision 4) " \
           "approves another one" in notes["WaitingForApproval"]
    version, notes = cp_version(approved_spec("v1.35.4", "v1.35.4"))
    assert version == "v1.35.4" and "WaitingForApproval" not in notes
    # Scaling never waits for an approval.
    scaled = approved_spec("v1.35.2", None, workers=[
        {"name": "a", "replicas": 4, "machine": {"provider": "dev"}}])
    plan = plan_topology(scaled, obs)
    assert ("apply", "MachineDeployment", "edge-a") in kinds(plan)


def test_ssh_key_changes_never_wait_but_machine_changes_do() -> None:
    """Revoking a key goes at once, also outside windows; a new machine image waits."""
    maintenance = {"windows": [SAT_NIGHT]}
    spec = make_spec(maintenance=maintenance, sshAuthorizedKeys=["ssh-ed25519 AAAAC3NzaA a@b"])
    obs = replace(converged(spec), now=MONDAY)
    revoked = make_spec(maintenance=maintenance, sshAuthorizedKeys=[])
    plan = plan_topology(revoked, obs)
    md = next(a for a in plan.actions if a.kind == "MachineDeployment")
    assert md.body["spec"]["template"]["spec"]["bootstrap"]["configRef"]["name"] != \
        obs.machine_deployments["edge-a"]["spec"]["template"]["spec"]["bootstrap"][  # type: ignore[union-attr]
            "configRef"]["name"]
    assert "WaitingForMaintenanceWindow" not in {n.reason for n in plan.notes}
    reimaged = make_spec(maintenance=maintenance, sshAuthorizedKeys=["ssh-ed25519 AAAAC3NzaA a@b"],
                         workers=[{"name": "a", "replicas": 2,
                                   "machine": {"provider": "dev", "image": "os:2"}}])
    plan = plan_topology(reimaged, obs)
    assert all(a.kind != "MachineDeployment" for a in plan.actions)
    assert "pool a: machine template change waits" in " ".join(
        n.message for n in plan.notes if n.reason == "WaitingForMaintenanceWindow")


def test_an_emergency_rotation_needs_no_approval() -> None:
    policy = MaintenancePolicy.model_validate({"requireApproval": ["rotation"]})
    gate = Gate(policy, MONDAY, cert_expiry=MONDAY + timedelta(days=2))
    ok, note = gate.check("rotation", "rotation")
    assert ok and note is not None and note.reason == "EmergencyRotation"
    assert not Gate(policy, MONDAY).check("rotation", "rotation")[0]


def test_a_repave_approval_covers_where_machines_go() -> None:
    from agent.spec.maintenance import approval_subject

    base = {"infrastructure": {"provider": "vsphere", "datastore": "ds1"},
            "controlPlane": {"machine": {"provider": "vsphere", "template": "t"}}}
    moved = {**base, "infrastructure": {"provider": "vsphere", "datastore": "ds2"}}
    assert approval_subject("repave", base) != approval_subject("repave", moved)


def test_odd_inputs_are_refused_or_read_safely(tmp_path: Path) -> None:
    from agent.plan.certs import earliest_expiry

    with pytest.raises(ValidationError, match="not an IANA time zone"):
        window(timeZone="Europe")  # a directory of zones, not a zone
    naive = [{"metadata": {"name": "m", "labels": {"cluster.x-k8s.io/control-plane": ""}},
              "status": {"certificatesExpiryDate": "2027-01-01T00:00:00"}}]
    assert earliest_expiry(naive) == datetime(2027, 1, 1, tzinfo=UTC)
    (tmp_path / "lc.json").write_text('{"age": NaN, "boot": "b", "boottime": 1, "wall": 1}')
    c = Clocks()
    lc = c.contact(tmp_path / "lc.json")
    lc.load()
    assert lc.age() == 0  # unreadable: counted from now, never NaN
