"""Discovery documents (`/api`, `/apis`, `/apis/G/V`, `/version`) built from the live registry."""

from __future__ import annotations

import re
from typing import Any

from ..controlplane import build
from .resources import ResourceType, version_priority


def _kube_version() -> dict[str, str]:
    """`/version` of the real kube-apiserver the testbed pins (testbed/controlplane/go/
    kubernetes), so both backends report the same release."""
    git_version = build.pinned(build.KUBERNETES)
    m = re.match(r"v(\d+)\.(\d+)\.", git_version)
    assert m is not None, git_version
    major, minor = m.groups()
    return {"major": major, "minor": minor, "emulationMajor": major, "emulationMinor": minor,
            "minCompatibilityMajor": major, "minCompatibilityMinor": str(int(minor) - 1),
            "gitVersion": git_version,
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean", "buildDate": "2026-11-01T00:00:00Z",
            "goVersion": "go1.26.0", "compiler": "gc", "platform": "linux/amd64"}


KUBE_VERSION = _kube_version()


def _resource_entries(rt: ResourceType) -> list[dict[str, Any]]:
    main: dict[str, Any] = {
        "name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced,
        "kind": rt.kind, "verbs": rt.verbs(),
    }
    if rt.short_names:
        main["shortNames"] = rt.short_names
    if rt.categories:
        main["categories"] = rt.categories
    out = [main]
    if rt.status:
        out.append({"name": f"{rt.plural}/status", "singularName": "", "namespaced": rt.namespaced,
                    "kind": rt.kind, "verbs": ["get", "patch", "update"]})
    if rt.scale:
        out.append({"name": f"{rt.plural}/scale", "singularName": "", "namespaced": rt.namespaced,
                    "group": "autoscaling", "version": "v1", "kind": "Scale",
                    "verbs": ["get", "patch", "update"]})
    if rt.kind == "Namespace":
        out.append({"name": "namespaces/finalize", "singularName": "", "namespaced": False,
                    "kind": "Namespace", "verbs": ["update"]})
    return out


def resource_list(types: list[ResourceType], group: str, version: str) -> dict[str, Any]:
    gv = f"{group}/{version}" if group else version
    resources: list[dict[str, Any]] = []
    for rt in sorted(types, key=lambda t: t.plural):
        if rt.group == group and version in rt.versions:
            resources.extend(_resource_entries(rt))
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": resources}


def group_versions(types: list[ResourceType]) -> dict[str, list[str]]:
    groups: dict[str, set[str]] = {}
    for rt in types:
        if rt.group:
            groups.setdefault(rt.group, set()).update(rt.versions)
    return {g: sorted(vs, key=version_priority) for g, vs in groups.items()}


def _group(name: str, versions: list[str]) -> dict[str, Any]:
    vs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": vs, "preferredVersion": vs[0]}


def api_group_list(types: list[ResourceType]) -> dict[str, Any]:
    groups = group_versions(types)
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [_group(g, vs) for g, vs in sorted(groups.items())]}


def api_group(types: list[ResourceType], name: str) -> dict[str, Any] | None:
    versions = group_versions(types).get(name)
    if not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name, versions)}


def api_versions(address: str) -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                            "serverAddress": address}]}
