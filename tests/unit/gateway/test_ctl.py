"""outpostctl's pure parts: the edits it refuses or makes, and what it prints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console

from mgmt_gateway.ctl import edits, views

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def obj(version: str = "v1.35.2", *, converged: bool = True, **spec: Any) -> dict[str, Any]:
    body = {"kubernetesVersion": version, "infrastructure": {"provider": "dev"},
            "controlPlane": {"replicas": 1, "machine": {"provider": "dev"}},
            "workers": [{"name": "a", "replicas": 1, "machine": {"provider": "dev"}}]}
    body.update(spec)
    status = {"observedGeneration": 3, "desiredRevision": 4,
              "appliedRevision": 4 if converged else 3}
    return {"metadata": {"name": "edge-1", "namespace": "fleet", "generation": 3,
                         "creationTimestamp": "2026-12-05T11:00:00Z"},
            "spec": body, "status": status}


@pytest.mark.parametrize(("seconds", "shown"), [
    (5, "5s"), (119, "119s"), (150, "2m30s"), (600, "10m"), (9000, "150m"),
    (5 * 3600 + 600, "5h10m"), (30 * 3600, "30h"), (3 * 86400 + 4 * 3600, "3d4h"),
    (90 * 86400, "90d"), (800 * 86400, "2y70d")])
def test_ages_read_as_kubectl_prints_them(seconds: int, shown: str) -> None:
    stamp = (NOW - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert views.age(stamp, NOW) == shown


def test_a_minor_upgrade_waits_for_the_last_change_to_converge() -> None:
    with pytest.raises(edits.EditRefused, match="applied revision 3 of 4"):
        edits.upgrade(obj(converged=False), "v1.36.0", pinned_workers=False)
    spec, changes = edits.upgrade(obj(converged=False), "v1.35.4", pinned_workers=False)
    assert spec["kubernetesVersion"] == "v1.35.4" and changes == ["Kubernetes v1.35.2 → v1.35.4"]


def test_an_upgrade_over_several_minors_names_its_stops() -> None:
    with pytest.raises(edits.EditRefused, match=r"goes through v1.37: .* \(--via v1.37.<patch>\)"):
        edits.upgrade(obj(), "v1.38.1", pinned_workers=False, via=["v1.36.4"])
    spec, changes = edits.upgrade(obj(), "v1.38.1", pinned_workers=False,
                                  via=["v1.37.2", "v1.36.4"])
    assert spec["kubernetesVersion"] == "v1.38.1"
    assert spec["upgrade"]["path"] == ["v1.36.4", "v1.37.2"]  # oldest first
    assert changes == ["Kubernetes v1.35.2 → v1.38.1 (through v1.36.4, v1.37.2)"]
    with pytest.raises(edits.EditRefused, match=r"'1\.37' is not a Kubernetes version"):
        edits.upgrade(obj(), "v1.38.1", pinned_workers=False, via=["v1.36.4", "1.37"])


def test_a_pinned_pool_left_too_far_behind_says_how_to_move_it() -> None:
    pinned = obj("v1.33.0", workers=[{"name": "a", "replicas": 1, "version": "v1.30.0",
                                      "machine": {"provider": "dev"}}])
    with pytest.raises(edits.EditRefused, match="--pinned-workers"):
        edits.upgrade(pinned, "v1.34.0", pinned_workers=False)
    spec, changes = edits.upgrade(pinned, "v1.34.0", pinned_workers=True)
    assert spec["workers"][0]["version"] == "v1.34.0"
    assert changes == ["Kubernetes v1.33.0 → v1.34.0", "workers a v1.30.0 → v1.34.0"]


def test_set_profile_keeps_the_values_unless_given() -> None:
    spec = obj(profile={"name": "base", "version": "1", "values": {"x": 1}})["spec"]
    available = [("base", "1"), ("base", "2")]
    new, changes = edits.set_profile(spec, "base", "2", None, available)
    assert new["profile"] == {"name": "base", "version": "2", "values": {"x": 1}}
    assert changes == ["profile base 1 → base 2"]
    new, changes = edits.set_profile(spec, "base", "1", {"x": 2}, available)
    assert changes == ["profile base 1: per-cluster values replaced"]
    assert edits.set_profile(spec, "base", "1", None, available)[1] == []


def test_progress_prints_each_step_once_with_the_time_it_took() -> None:
    before = obj()
    before["status"] = {"phase": "Requested"}
    after = obj()
    after["status"] = {"phase": "CapiCreated", "steps": [
        {"phase": "CapiCreated", "startedAt": "2026-12-05T11:00:03Z", "detail": "4 objects"}],
        "conditions": [{"type": "Ready", "status": "False", "reason": "Bootstrapping",
                        "message": "waiting for CAPI"}]}
    assert views.progress(before, after) == [
        "  ✓ CapiCreated (3.0s)  4 objects", "edge-1: CapiCreated",
        "  Ready=False Bootstrapping: waiting for CAPI"]
    assert views.progress(after, after) == []


def test_reported_text_is_shown_as_is_never_as_markup() -> None:
    o = obj()
    o["status"]["phase"] = "[bold]Managed"
    o["status"]["conditions"] = [{"type": "X[/]", "status": "False", "reason": "[/bad]",
                                  "message": "[red]oops[/red]"}]
    console = Console(width=200, record=True, color_system=None)
    console.print(views.describe(o, [], NOW))
    text = console.export_text()
    assert "[bold]Managed" in text and "X[/] False [/bad]: [red]oops[/red]" in text


def test_an_upgrade_keeps_only_the_stops_it_needs() -> None:
    done = obj("v1.36.1", upgrade={"path": ["v1.34.7", "v1.35.3"]})
    spec, _ = edits.upgrade(done, "v1.37.0", pinned_workers=False)
    assert spec["upgrade"]["path"] == []  # the old stops are history
    with pytest.raises(edits.EditRefused, match=r"goes through v1\.37"):
        edits.upgrade(done, "v1.38.0", pinned_workers=False)
