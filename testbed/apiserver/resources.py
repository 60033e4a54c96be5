"""The resource types an emulated API server serves: built-ins from a table, custom ones from CRDs.

A real server learns custom kinds from CustomResourceDefinitions at run time; so does this one, and
discovery, routing and validation all read from the same registry so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .selectors import FieldLabels


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: str
    json_path: str
    description: str = ""
    priority: int = 0
    format: str = ""


@dataclass
class ResourceType:
    group: str
    versions: list[str]
    kind: str
    plural: str
    namespaced: bool
    singular: str = ""
    short_names: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    status: bool = False
    scale: dict[str, str] | None = None  # specReplicasPath, statusReplicasPath, labelSelectorPath
    generation: bool = True
    custom: bool = False
    storage_version: str = ""
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)  # version -> openAPIV3Schema
    columns: dict[str, list[PrinterColumn]] = field(default_factory=dict)
    field_labels: tuple[str, ...] = ()  # a FieldLabels where the kind refuses others its way
    crd_name: str = ""
    create_only: bool = False  # a review: answered on create, never stored

    @property
    def key(self) -> str:
        """Storage identity: the group and plural, independent of the served version."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def preferred_version(self) -> str:
        return self.storage_version or self.versions[0]

    def api_version(self, version: str | None = None) -> str:
        v = version or self.preferred_version
        return f"{self.group}/{v}" if self.group else v

    @property
    def qualified_kind(self) -> str:
        """Kind as error messages name it: `Deployment.apps`, `Secret`."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def qualified_resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def etcd_prefix(self) -> str:
        """Where kube-apiserver keeps this kind in etcd (storage errors name the key): the
        plural, but the group too for custom and aggregated kinds, and a few legacy names."""
        if self.custom or self.group in ("apiextensions.k8s.io", "apiregistration.k8s.io"):
            return f"/registry/{self.group}/{self.plural}"
        return "/registry/" + _ETCD_PREFIXES.get(self.plural, self.plural)

    def etcd_key(self, ns: str | None, name: str) -> str:
        return f"{self.etcd_prefix}/{ns}/{name}" if self.namespaced and ns else \
            f"{self.etcd_prefix}/{name}"

    def verbs(self) -> list[str]:
        if self.create_only:
            return ["create"]
        return ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


# Built-in kinds whose etcd prefix is not their plural (kept from older releases).
_ETCD_PREFIXES = {
    "services": "services/specs",
    "endpoints": "services/endpoints",
    "nodes": "minions",
    "replicationcontrollers": "controllers",
    "ingresses": "ingress",
}

def _legacy(*labels: str) -> FieldLabels:
    """Field labels of a kind with its own conversion, which refuses others as "not
    supported"."""
    return FieldLabels(labels, "legacy")


_EVENT_FIELDS = _legacy(
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
)

_REPLICAS_SCALE = {
    "specReplicasPath": ".spec.replicas",
    "statusReplicasPath": ".status.replicas",
    "labelSelectorPath": ".status.selector",
}


def _rt(
    group: str,
    version: str,
    kind: str,
    plural: str,
    namespaced: bool = True,
    **kw: Any,
) -> ResourceType:
    return ResourceType(
        group=group,
        versions=[version],
        kind=kind,
        plural=plural,
        namespaced=namespaced,
        singular=kind.lower(),
        storage_version=version,
        **kw,
    )


def builtin_types() -> list[ResourceType]:
    """The built-in kinds the project needs, with the flags real strategies give them."""
    return [
        _rt("", "v1", "Namespace", "namespaces", False, short_names=["ns"], status=True,
            generation=False, field_labels=_legacy("status.phase")),
        _rt("", "v1", "Secret", "secrets", generation=False, field_labels=_legacy("type")),
        _rt("", "v1", "ConfigMap", "configmaps", short_names=["cm"], generation=False),
        _rt("", "v1", "ServiceAccount", "serviceaccounts", short_names=["sa"], generation=False),
        _rt("", "v1", "Service", "services", short_names=["svc"], status=True,
            categories=["all"], generation=False,
            field_labels=_legacy("spec.clusterIP", "spec.type")),
        _rt("", "v1", "Endpoints", "endpoints", short_names=["ep"], generation=False),
        _rt("", "v1", "Event", "events", short_names=["ev"], generation=False,
            field_labels=_EVENT_FIELDS),
        _rt("", "v1", "Pod", "pods", short_names=["po"], status=True, categories=["all"],
            generation=False, field_labels=_legacy(
                "spec.nodeName", "status.phase", "spec.serviceAccountName",
                "spec.schedulerName", "spec.restartPolicy", "status.podIP",
                "status.nominatedNodeName")),
        _rt("", "v1", "Node", "nodes", False, short_names=["no"], status=True,
            generation=False, field_labels=_legacy("spec.unschedulable")),
        _rt("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", short_names=["pvc"],
            status=True, generation=False),
        _rt("", "v1", "PersistentVolume", "persistentvolumes", False, short_names=["pv"],
            status=True, generation=False),
        _rt("apps", "v1", "Deployment", "deployments", short_names=["deploy"], status=True,
            scale=_REPLICAS_SCALE, categories=["all"]),
        _rt("apps", "v1", "DaemonSet", "daemonsets", short_names=["ds"], status=True,
            categories=["all"]),
        _rt("apps", "v1", "StatefulSet", "statefulsets", short_names=["sts"], status=True,
            scale=_REPLICAS_SCALE, categories=["all"]),
        _rt("apps", "v1", "ReplicaSet", "replicasets", short_names=["rs"], status=True,
            scale=_REPLICAS_SCALE, categories=["all"]),
        _rt("batch", "v1", "Job", "jobs", status=True, categories=["all"],
            field_labels=FieldLabels((), "Job")),
        _rt("batch", "v1", "CronJob", "cronjobs", short_names=["cj"], status=True,
            categories=["all"]),
        _rt("coordination.k8s.io", "v1", "Lease", "leases", generation=False),
        _rt("rbac.authorization.k8s.io", "v1", "Role", "roles", generation=False),
        _rt("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", generation=False),
        _rt("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", False,
            generation=False),
        _rt("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings",
            False, generation=False),
        _rt("apiextensions.k8s.io", "v1", "CustomResourceDefinition",
            "customresourcedefinitions", False, short_names=["crd", "crds"], status=True,
            categories=["api-extensions"]),
        _rt("networking.k8s.io", "v1", "IngressClass", "ingressclasses", False),
        _rt("networking.k8s.io", "v1", "Ingress", "ingresses", short_names=["ing"],
            status=True),
        _rt("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies",
            short_names=["netpol"]),
        _rt("admissionregistration.k8s.io", "v1", "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations", False, categories=["api-extensions"]),
        _rt("admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations", False, categories=["api-extensions"]),
        _rt("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets",
            short_names=["pdb"], status=True),
        _rt("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", False,
            short_names=["pc"], generation=False),
        _rt("storage.k8s.io", "v1", "StorageClass", "storageclasses", False,
            short_names=["sc"], generation=False),
        # Further kinds every real server serves, so manifests and kubectl find them too.
        _rt("", "v1", "ResourceQuota", "resourcequotas", short_names=["quota"], status=True,
            generation=False),
        _rt("", "v1", "LimitRange", "limitranges", short_names=["limits"], generation=False),
        _rt("", "v1", "ReplicationController", "replicationcontrollers", short_names=["rc"],
            status=True, scale=_REPLICAS_SCALE, categories=["all"], field_labels=_legacy()),
        _rt("", "v1", "PodTemplate", "podtemplates", generation=False),
        _rt("apps", "v1", "ControllerRevision", "controllerrevisions", generation=False),
        _rt("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers",
            short_names=["hpa"], status=True, categories=["all"], generation=False),
        _rt("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", generation=False),
        _rt("apiregistration.k8s.io", "v1", "APIService", "apiservices", False, status=True,
            categories=["api-extensions"]),
        _rt("certificates.k8s.io", "v1", "CertificateSigningRequest",
            "certificatesigningrequests", False, short_names=["csr"], status=True,
            generation=False, field_labels=_legacy("spec.signerName")),
        _rt("node.k8s.io", "v1", "RuntimeClass", "runtimeclasses", False, generation=False),
        _rt("storage.k8s.io", "v1", "CSIDriver", "csidrivers", False, generation=False),
        _rt("storage.k8s.io", "v1", "CSINode", "csinodes", False, generation=False),
        _rt("storage.k8s.io", "v1", "VolumeAttachment", "volumeattachments", False,
            status=True, generation=False),
        _rt("admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicy",
            "validatingadmissionpolicies", False, status=True, categories=["api-extensions"]),
        _rt("admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicyBinding",
            "validatingadmissionpolicybindings", False, categories=["api-extensions"]),
        # Reviews (`kubectl auth can-i`, `kubectl auth whoami`): answered, never stored.
        *(_rt(group, "v1", kind, kind.lower() + "s", namespaced, create_only=True,
              generation=False)
          for group, kind, namespaced in (
              ("authorization.k8s.io", "SelfSubjectAccessReview", False),
              ("authorization.k8s.io", "SelfSubjectRulesReview", False),
              ("authorization.k8s.io", "SubjectAccessReview", False),
              ("authorization.k8s.io", "LocalSubjectAccessReview", True),
              ("authentication.k8s.io", "SelfSubjectReview", False))),
    ]


def from_crd(crd: dict[str, Any]) -> ResourceType:
    """Build the served type from a CRD object; raises ValueError on a CRD that cannot serve."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    served = [v for v in spec.get("versions") or [] if v.get("served", True)]
    if not served:
        raise ValueError("spec.versions: at least one served version is required")
    storage = next((v["name"] for v in served if v.get("storage")), served[0]["name"])
    schemas: dict[str, dict[str, Any]] = {}
    columns: dict[str, list[PrinterColumn]] = {}
    status = False
    scale: dict[str, str] | None = None
    for v in served:
        schema = (v.get("schema") or {}).get("openAPIV3Schema")
        if schema:
            schemas[v["name"]] = schema
        columns[v["name"]] = [
            PrinterColumn(
                name=c["name"],
                type=c.get("type", "string"),
                json_path=c["jsonPath"],
                description=c.get("description", ""),
                priority=int(c.get("priority", 0)),
                format=c.get("format", ""),
            )
            for c in v.get("additionalPrinterColumns") or []
        ]
        sub = v.get("subresources") or {}
        status = status or "status" in sub
        if "scale" in sub:
            scale = sub["scale"]
    # Versions are listed as the CRD lists them; discovery orders by Kubernetes version priority.
    versions = sorted((v["name"] for v in served), key=version_priority)
    return ResourceType(
        group=spec["group"],
        versions=versions,
        kind=names["kind"],
        plural=names["plural"],
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
        singular=names.get("singular", names["kind"].lower()),
        short_names=list(names.get("shortNames") or []),
        categories=list(names.get("categories") or []),
        status=status,
        scale=scale,
        custom=True,
        storage_version=storage,
        schemas=schemas,
        columns=columns,
        field_labels=_legacy(*(f["jsonPath"].lstrip(".") for v in served
                               for f in v.get("selectableFields") or [])),
        crd_name=crd["metadata"]["name"],
    )


def version_priority(version: str) -> tuple[int, int, int, str]:
    """Kubernetes version order: GA, then beta, then alpha; higher first (v1, v1beta2, v1beta1)."""
    import re

    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not m:
        return (3, 0, 0, version)
    major = int(m.group(1))
    stage = {None: 0, "beta": 1, "alpha": 2}[m.group(2)]
    minor = int(m.group(3) or 0)
    return (stage, -major, -minor, version)
