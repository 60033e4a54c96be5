"""The demo's cluster profile: three add-ons in three orders, as a platform team keeps them in Git
(one manifest file per add-on, a profile naming them) and publishes them with
`outpostctl profile push`.

- order 0, monitoring: node-exporter as a DaemonSet, and an alert rule of its own custom
  resource type (applied only once its CRD is Established);
- order 1, logging: Fluent Bit as a DaemonSet with its configuration;
- order 2, security: a ValidatingAdmissionPolicy (warn and audit only) flagging privileged pods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PROFILE = "edge-base"
VERSION = "1.0"
TOLERATE_ALL = [{"operator": "Exists"}]  # node agents run on every node, control plane too


def _daemonset(name: str, ns: str, image: str, **pod: Any) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": name}
    return {"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {
                         "serviceAccountName": name, "tolerations": TOLERATE_ALL,
                         "containers": [{"name": name, "image": image, **pod}]}}}}


def monitoring() -> list[dict[str, Any]]:
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "alertrules.monitoring.outpost.io"},
           "spec": {"group": "monitoring.outpost.io", "scope": "Namespaced",
                    "names": {"plural": "alertrules", "singular": "alertrule",
                              "kind": "AlertRule", "listKind": "AlertRuleList"},
                    "versions": [{"name": "v1", "served": True, "storage": True,
                                  "schema": {"openAPIV3Schema": {
                                      "type": "object", "properties": {"spec": {
                                          "type": "object", "required": ["expr"],
                                          "properties": {
                                              "expr": {"type": "string"},
                                              "for": {"type": "string"},
                                              "severity": {"type": "string", "enum": [
                                                  "info", "warning", "critical"]}}}}}}}]}}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "monitoring"}},
        crd,
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "node-exporter", "namespace": "monitoring"}},
        _daemonset("node-exporter", "monitoring", "quay.io/prometheus/node-exporter:v1.9.1",
                   args=["--path.rootfs=/host"],
                   ports=[{"name": "metrics", "containerPort": 9100}]),
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "node-exporter", "namespace": "monitoring"},
         "spec": {"selector": {"app.kubernetes.io/name": "node-exporter"},
                  "ports": [{"name": "metrics", "port": 9100, "targetPort": "metrics"}]}},
        {"apiVersion": "monitoring.outpost.io/v1", "kind": "AlertRule",
         "metadata": {"name": "node-down", "namespace": "monitoring"},
         "spec": {"expr": 'up{job="node-exporter"} == 0', "for": "5m",
                  "severity": "critical"}},
    ]


def logging() -> list[dict[str, Any]]:
    conf = ("[INPUT]\n    Name tail\n    Path /var/log/containers/*.log\n"
            "[OUTPUT]\n    Name forward\n    Match *\n    Host logs.factory-7.example\n")
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "logging"}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "fluent-bit", "namespace": "logging"}},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "fluent-bit", "namespace": "logging"},
         "data": {"fluent-bit.conf": conf}},
        _daemonset("fluent-bit", "logging", "cr.fluentbit.io/fluent/fluent-bit:4.0.3"),
    ]


def security() -> list[dict[str, Any]]:
    return [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": "no-privileged-pods"},
         "spec": {"failurePolicy": "Ignore",
                  "matchConstraints": {"resourceRules": [{
                      "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                      "operations": ["CREATE", "UPDATE"]}]},
                  "validations": [{
                      "expression": "object.spec.containers.all(c, !has(c.securityContext) "
                                    "|| !has(c.securityContext.privileged) "
                                    "|| !c.securityContext.privileged)",
                      "message": "privileged containers are not allowed on this site"}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1",
         "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": "no-privileged-pods"},
         "spec": {"policyName": "no-privileged-pods", "validationActions": ["Warn", "Audit"]}},
    ]


ADDONS = (("monitoring", "monitoring", "1.9.1", monitoring),
          ("logging", "logging", "4.0.3", logging),
          ("security", "default", "1.0.0", security))


def write_profile(directory: Path, namespace: str) -> Path:
    """The add-ons' manifest files and the profile naming them; returns the profile's path."""
    directory.mkdir(parents=True, exist_ok=True)
    addons = []
    for order, (name, ns, version, objects) in enumerate(ADDONS):
        path = directory / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(objects(), sort_keys=False))
        addons.append({"name": name, "version": version, "order": order, "namespace": ns,
                       "manifestsFile": path.name, "timeoutSeconds": 120})
    profile = directory / "profile.yaml"
    profile.write_text(yaml.safe_dump({
        "apiVersion": "outpost.io/v1alpha1", "kind": "ClusterProfile",
        "metadata": {"name": f"{PROFILE}-{VERSION}", "namespace": namespace},
        "spec": {"name": PROFILE, "version": VERSION, "addons": addons}}, sort_keys=False))
    return profile
