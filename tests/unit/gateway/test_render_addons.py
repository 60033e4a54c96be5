"""Add-on bundles at the gateway, pure: deterministic bytes, hooks split by phase, namespaces
filled in, objects over the API server's limit refused by name, a ClusterProfile rendered into
the spec's references."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.spec.addons import decode_bundle
from mgmt_gateway.profiles import profile_of
from mgmt_gateway.render.addons import MAX_OBJECT_BYTES, RenderError, build_bundle
from mgmt_gateway.render.yamldocs import parse_documents

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "addons"


def monitoring() -> list[dict[str, Any]]:
    return [d for f in ("00-setup.yaml", "01-operator.yaml", "02-custom-resources.yaml")
            for d in parse_documents((FIXTURES / "monitoring" / f).read_text(), f)]


def test_a_real_monitoring_stack_becomes_one_deterministic_bundle() -> None:
    first = build_bundle("monitoring", "0.18.0", monitoring(), namespace="monitoring",
                         source="monitoring")
    again = build_bundle("monitoring", "0.18.0", monitoring(), namespace="monitoring",
                         source="monitoring")
    assert first.data == again.data and first.ref == again.ref
    assert first.ref.size > 1_000_000 and first.ref.objects == 19
    assert decode_bundle(first.data, first.ref).objects[0]["kind"] == \
        "CustomResourceDefinition"
    kinds = {o["kind"]: o for o in first.bundle.objects}
    assert "namespace" not in kinds["CustomResourceDefinition"]["metadata"]
    assert kinds["PrometheusRule"]["metadata"]["namespace"] == "monitoring"


def test_an_object_over_the_api_limit_is_refused_by_name() -> None:
    big = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dashboards"},
           "data": {"all.json": "x" * (MAX_OBJECT_BYTES + 1)}}
    with pytest.raises(RenderError,
                       match="ConfigMap ops/dashboards is 1,572,977 bytes, over the 1,572,864"):
        build_bundle("grafana", "1", [big], namespace="ops", source="add-on grafana")


def test_helm_hooks_keep_their_phases_and_tests_are_dropped() -> None:
    def hook(name: str, phases: str, weight: str = "0", **extra: str) -> dict[str, Any]:
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {
            "name": name, "annotations": {"helm.sh/hook": phases,
                                          "helm.sh/hook-weight": weight, **extra}}}

    rendered = build_bundle("csi", "1.6.0", [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa"}},
        hook("crds", "pre-install,pre-upgrade", "10",
             **{"helm.sh/hook-delete-policy": "hook-succeeded,before-hook-creation"}),
        hook("keep", "pre-upgrade", "2"),
        hook("smoke", "test"),
    ], namespace="kube-system", source="csi")
    b = rendered.bundle
    assert [o["metadata"]["name"] for o in b.objects] == ["sa"]
    assert [(h.phase, h.object["metadata"]["name"], h.weight) for h in b.hooks] == [
        ("pre-install", "crds", 10), ("pre-upgrade", "keep", 2), ("pre-upgrade", "crds", 10)]
    assert b.hooks[0].delete_policies == ("hook-succeeded", "before-hook-creation")
    with pytest.raises(RenderError, match="unknown Helm hook"):
        build_bundle("x", "1", [hook("j", "post-everything")], namespace=None, source="x")


def test_a_cluster_profile_renders_into_references() -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}}
    profile = profile_of({"metadata": {"name": "base-1", "namespace": "fleet"}, "spec": {
        "name": "base", "version": "1", "addons": [
            {"name": "cfg", "version": "2", "order": 5, "namespace": "ops", "manifests": [cm],
             "ignore": [{"kind": "ConfigMap", "paths": ["data.x"]}]}]}})
    (a,) = profile.spec.addons
    assert (a.name, a.order, a.bundle.objects) == ("cfg", 5, 1)
    data = profile.bundles[a.bundle.digest]
    assert decode_bundle(data, a.bundle).objects[0]["metadata"]["namespace"] == "ops"
    assert len(a.model_dump_json()) < 1000  # the spec holds a reference, not the content


def test_plain_http_is_for_oci_charts_only() -> None:
    from pydantic import ValidationError

    from mgmt_gateway.profiles import HelmSource

    assert HelmSource.model_validate({"chart": "oci://registry.local/charts/x", "version": "1",
                                      "plainHttp": True}).plain_http
    with pytest.raises(ValidationError, match="plainHttp applies to oci:// charts only"):
        HelmSource.model_validate({"repo": "http://charts.local/", "chart": "x",
                                   "version": "1", "plainHttp": True})
