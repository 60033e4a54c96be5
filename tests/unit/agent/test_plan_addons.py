"""Add-on planning, pure: stages, the applied body, health by kstatus and by the add-on's rules,
prune order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.plan.addons import (
    ADDON_LABEL,
    CONFIG,
    CUSTOM,
    NAMESPACES_CRDS,
    WEBHOOKS,
    WORKLOADS,
    ObjKey,
    apply_body,
    autoscaled,
    check_cel,
    health,
    key_of,
    kstatus,
    prune_sorted,
    stage_of,
)
from agent.spec.addons import Addon, HealthRule
from mgmt_gateway.render.yamldocs import parse_documents

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "addons"
REF = {"digest": "sha256:" + "a" * 64, "size": 10, "objects": 1}


def addon(**kw: Any) -> Addon:
    return Addon.model_validate({"name": "a", "version": "1", "bundle": REF, **kw})


def obj(api_version: str, kind: str, name: str = "x", **rest: Any) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}, **rest}


def test_stages_of_a_real_monitoring_and_ingress_install() -> None:
    docs = [d for f in ("monitoring/00-setup.yaml", "monitoring/01-operator.yaml",
                        "monitoring/02-custom-resources.yaml", "ingress/deploy.yaml")
            for d in parse_documents((FIXTURES / f).read_text(), f)]
    stages = {(d["kind"], stage_of(d)) for d in docs}
    assert ("CustomResourceDefinition", NAMESPACES_CRDS) in stages
    assert ("Namespace", NAMESPACES_CRDS) in stages
    assert ("ClusterRole", CONFIG) in stages and ("ServiceAccount", CONFIG) in stages
    assert ("Deployment", WORKLOADS) in stages and ("Job", WORKLOADS) in stages
    assert ("ValidatingWebhookConfiguration", WEBHOOKS) in stages
    assert ("PrometheusRule", CUSTOM) in stages and ("ServiceMonitor", CUSTOM) in stages


def test_the_body_is_labelled_and_carries_no_status_nor_ignored_fields() -> None:
    dep = obj("apps/v1", "Deployment", "app", spec={"replicas": 3, "template": {}},
              status={"replicas": 3})
    dep["metadata"].update(resourceVersion="7", uid="u", managedFields=[{}])
    a = addon(ignore=[{"apiGroup": "apps", "kind": "Deployment", "paths": ["spec.replicas"]}])
    body = apply_body(dep, a)
    assert body["metadata"] == {"name": "app", "labels": {
        ADDON_LABEL: "a", "app.kubernetes.io/managed-by": "outpost-agent"}}
    assert body["spec"] == {"template": {}} and "status" not in body
    assert dep["spec"]["replicas"] == 3  # the rendered object is left as it was
    hook = obj("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration", webhooks=[
        {"name": "a", "clientConfig": {"caBundle": "", "service": {"name": "s"}}},
        {"name": "b", "clientConfig": {"caBundle": "", "service": {"name": "t"}}}])
    body = apply_body(hook, addon(), ["webhooks[*].clientConfig.caBundle"])
    assert [w["clientConfig"] for w in body["webhooks"]] == [{"service": {"name": "s"}},
                                                             {"service": {"name": "t"}}]


def test_an_hpa_owns_the_replicas_of_what_it_scales() -> None:
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": "h", "namespace": "n"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                       "name": "web"}}}
    assert autoscaled([hpa]) == {ObjKey("apps", "Deployment", "n", "web")}


@pytest.mark.parametrize(("o", "want"), [
    (obj("apps/v1", "Deployment", spec={"replicas": 2}, status={
        "observedGeneration": 1, "updatedReplicas": 2, "readyReplicas": 2,
        "availableReplicas": 2, "replicas": 2}), "Current"),
    (obj("apps/v1", "Deployment", spec={"replicas": 2}, status={
        "observedGeneration": 1, "updatedReplicas": 2, "readyReplicas": 1,
        "availableReplicas": 1}), "InProgress"),
    (obj("apps/v1", "Deployment", status={"observedGeneration": 1, "conditions": [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}),
     "Failed"),
    (obj("apps/v1", "DaemonSet", status={"observedGeneration": 1,
                                         "desiredNumberScheduled": 0}), "Current"),
    (obj("apps/v1", "StatefulSet", spec={"replicas": 1}, status={
        "observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1,
        "currentRevision": "a", "updateRevision": "b"}), "InProgress"),
    (obj("batch/v1", "Job", status={"conditions": [{"type": "Complete", "status": "True"}]}),
     "Current"),
    (obj("batch/v1", "Job", status={"conditions": [{"type": "Failed", "status": "True"}]}),
     "Failed"),
    (obj("apiextensions.k8s.io/v1", "CustomResourceDefinition", status={"conditions": [
        {"type": "Established", "status": "True"}]}), "Current"),
    (obj("apiextensions.k8s.io/v1", "CustomResourceDefinition"), "InProgress"),
    (obj("v1", "PersistentVolumeClaim", status={"phase": "Pending"}), "InProgress"),
    (obj("v1", "Service", spec={"type": "LoadBalancer"}), "InProgress"),
    (obj("v1", "ConfigMap"), "Current"),
    (obj("example.com/v1", "Widget", status={"conditions": [
        {"type": "Ready", "status": "False"}]}), "InProgress"),
    ({**obj("apps/v1", "Deployment"), "metadata": {"name": "x", "generation": 3},
      "status": {"observedGeneration": 2}}, "InProgress"),
])
def test_kstatus(o: dict[str, Any], want: str) -> None:
    assert kstatus(o).status == want


def test_the_addons_own_rules_come_on_top() -> None:
    cm = obj("v1", "ConfigMap", data={"ready": "yes"})
    by_cel = [HealthRule(kind="ConfigMap", cel="object.data.ready == 'yes'")]
    assert health(cm, by_cel).status == "Current"
    assert health(obj("v1", "ConfigMap", data={"ready": "no"}), by_cel).status == "InProgress"
    broken = [HealthRule(kind="ConfigMap", cel="object.data.missing == 'x'")]
    assert health(obj("v1", "ConfigMap", data={}), broken).status == "Failed"
    cond = [HealthRule(apiGroup="example.com", kind="Widget",
                       conditions=[{"type": "Synced"}])]
    w = obj("example.com/v1", "Widget", status={"conditions": [
        {"type": "Synced", "status": "False"}]})
    assert health(w, cond).status == "InProgress"
    assert check_cel("object.status.") is not None and check_cel("1 == 1") is None


def test_prune_goes_webhooks_first_and_namespaces_last() -> None:
    keys = [(key_of(obj("v1", "Namespace", "n")), NAMESPACES_CRDS),
            (key_of(obj("apps/v1", "Deployment", "d")), WORKLOADS),
            (key_of(obj("example.com/v1", "Widget", "w")), CUSTOM),
            (key_of(obj("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration",
                        "v")), WEBHOOKS),
            (key_of(obj("v1", "ConfigMap", "c")), CONFIG)]
    assert [k.kind for k in prune_sorted(keys)] == [
        "ValidatingWebhookConfiguration", "Widget", "Deployment", "ConfigMap", "Namespace"]
