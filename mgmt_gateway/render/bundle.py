"""What the gateway installs into a new workload cluster: the CAPI components bundle and the
Outpost agent.

The agent's objects are the kustomize base `manifests/agent`, rendered per cluster, so an
operator installing by hand (`kubectl apply -k`) and the gateway install the same thing. The
package reads them from `agent_manifests/` next to this module: in a source tree that is a
symbolic link to `manifests/agent` (no copy to drift); a wheel carries the files themselves,
once they are declared as package data of `mgmt_gateway` (`render/agent_manifests/*.yaml`).

Pure but for reading those files (and, in `load_components`, the files it is given).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agent.spec import ClusterSpec, load_public_keys, public_key_text

from .yamldocs import parse_documents

Obj = dict[str, Any]

MANIFESTS = Path(__file__).resolve().parent / "agent_manifests"

# What the base names, and the gateway replaces.
BASE_NAMESPACE = "outpost-system"
AGENT_NAME = "outpost-agent"
CREDS_KEY = "nats.creds"
KEYS_KEY = "public-keys"

ENV_CLUSTER_NAME = "OUTPOST_AGENT_CLUSTER_NAME"
ENV_NATS_SERVERS = "OUTPOST_AGENT_NATS_SERVERS"
ENV_AGENT_NAMESPACE = "OUTPOST_AGENT_AGENT_NAMESPACE"
ENV_NATS_CREDENTIALS = "OUTPOST_AGENT_NATS_CREDENTIALS"
# Wired to the pod (its name, its volumes) in the Deployment: a ConfigMap value would be
# shadowed by the container's `env` and silently ignored, so extra_env may not set them.
POD_WIRED = frozenset({"OUTPOST_AGENT_IDENTITY", "OUTPOST_AGENT_STATE_DIR",
                       "OUTPOST_AGENT_PUBLIC_KEYS_FILE", ENV_NATS_CREDENTIALS,
                       "OUTPOST_AGENT_KUBECONFIG"})
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

# Apply order: what others refer to goes first.
_RBAC = ("ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding")
_AGENT_ORDER = ("Namespace", "ServiceAccount", *_RBAC, "ConfigMap", "Secret", "Deployment")
_CRD = "CustomResourceDefinition"
_KUSTOMIZE = "kustomize.config.k8s.io/"


def _documents(path: Path) -> list[Obj]:
    """The YAML documents of a file, with `kind: List` flattened."""
    return parse_documents(path.read_text(), str(path))


def _objects(path: Path) -> list[Obj]:
    """The Kubernetes objects of a file; a kustomization is not one and is left out."""
    objs = [d for d in _documents(path)
            if not str(d.get("apiVersion", "")).startswith(_KUSTOMIZE)]
    for i, obj in enumerate(objs):
        meta = obj.get("metadata")
        if not (obj.get("apiVersion") and obj.get("kind") and isinstance(meta, dict)
                and meta.get("name")):
            raise ValueError(f"{path}: object {i} lacks apiVersion, kind or metadata.name")
    return objs


def agent_manifests(directory: Path = MANIFESTS) -> list[Obj]:
    """The base's objects as written, in its kustomization's `resources` order."""
    kustomization = directory / "kustomization.yaml"
    if not kustomization.is_file():
        raise FileNotFoundError(
            f"the agent manifests are missing ({kustomization} not found): install the package "
            "with its data files (mgmt_gateway/render/agent_manifests/*.yaml)")
    resources = (_documents(kustomization) or [{}])[0].get("resources") or []
    return [obj for name in resources for obj in _objects(directory / str(name))]


def agent_bundle(spec: ClusterSpec, *, nats_servers: list[str], nats_credentials: str | None,
                 public_keys: list[str], image: str, namespace: str = BASE_NAMESPACE,
                 extra_env: dict[str, str] | None = None,
                 manifests: Path = MANIFESTS) -> list[Obj]:
    """The agent's objects for the cluster of `spec`, in apply order: Namespaces,
    ServiceAccount, RBAC, ConfigMap, Secret, Deployment.

    `nats_credentials` is the content of the cluster's NATS .creds file (None: the agent
    connects without credentials); `public_keys` are the gateway's signing keys the agent
    trusts (base64 raw Ed25519 or PEM; written one per line, as base64). `extra_env` adds
    non-secret OUTPOST_AGENT_* settings to the ConfigMap. Raises ValueError on bad input, so a
    broken bundle fails here rather than as a crash-looping pod at the edge."""
    servers = [s.strip() for s in nats_servers if s.strip()]
    if not servers or any("," in s for s in servers):
        raise ValueError("nats_servers must name at least one NATS URL, without commas")
    if not _DNS_LABEL.match(namespace):
        raise ValueError(f"namespace {namespace!r} is not a DNS label")
    if not image.strip():
        raise ValueError("the agent image is empty")
    keys = _trusted_keys(public_keys)
    env = _extra_env(extra_env or {})

    objs = agent_manifests(manifests)
    for obj in objs:
        meta = obj["metadata"]
        if obj["kind"] == "Namespace" and meta["name"] == BASE_NAMESPACE:
            meta["name"] = namespace
        elif obj["kind"] == "RoleBinding" and obj["roleRef"]["kind"] == "ClusterRole":
            # The Cluster API permissions apply in the cluster's own namespace only.
            meta["namespace"] = spec.namespace
        elif meta.get("namespace") == BASE_NAMESPACE:
            meta["namespace"] = namespace
        for subject in obj.get("subjects") or []:
            if subject.get("kind") == "ServiceAccount":
                subject["namespace"] = namespace
        if obj["kind"] == "ConfigMap" and meta["name"] == AGENT_NAME:
            obj["data"] = {**(obj.get("data") or {}), **env,
                           ENV_CLUSTER_NAME: spec.cluster_name,
                           ENV_NATS_SERVERS: ",".join(servers),
                           ENV_AGENT_NAMESPACE: namespace}
        elif obj["kind"] == "Secret" and meta["name"] == AGENT_NAME:
            data = {KEYS_KEY: "".join(f"{k}\n" for k in keys)}
            if nats_credentials is not None:
                data[CREDS_KEY] = nats_credentials
            obj.pop("data", None)
            obj["stringData"] = data
        elif obj["kind"] == "Deployment" and meta["name"] == AGENT_NAME:
            _render_deployment(obj, image, with_credentials=nats_credentials is not None)
    extra_ns = [] if spec.namespace in ("default", namespace) else [_namespace(spec.namespace)]
    return _ordered(extra_ns + objs, _AGENT_ORDER)


def _trusted_keys(public_keys: Iterable[str]) -> list[str]:
    keys: list[str] = []
    for text in public_keys:
        if not text.strip():
            continue
        try:
            parsed = load_public_keys([text])
        except ValueError as e:
            raise ValueError(f"a trusted public key is not usable: {e}") from e
        keys += [public_key_text(k) for k in parsed.values() if public_key_text(k) not in keys]
    if not keys:
        raise ValueError("no trusted public key: the agent refuses to start without one")
    return keys


def _extra_env(extra: Mapping[str, str]) -> dict[str, str]:
    for name in extra:
        if not _ENV_NAME.match(name):
            raise ValueError(f"extra_env: {name!r} is not an environment variable name")
        if name in POD_WIRED or name in (ENV_CLUSTER_NAME, ENV_NATS_SERVERS,
                                         ENV_AGENT_NAMESPACE):
            raise ValueError(f"extra_env: {name} is set by the bundle itself")
    return {k: str(v) for k, v in extra.items()}


def _render_deployment(dep: Obj, image: str, *, with_credentials: bool) -> None:
    pod = dep["spec"]["template"]["spec"]
    for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        container["image"] = image
        if not with_credentials:
            container["env"] = [e for e in container.get("env") or []
                                if e.get("name") != ENV_NATS_CREDENTIALS]


def _namespace(name: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def _ordered(objs: list[Obj], order: tuple[str, ...]) -> list[Obj]:
    """Stable: objects of the same rank keep their order; unknown kinds go last."""
    rank = {kind: i for i, kind in enumerate(order)}
    return sorted(objs, key=lambda o: rank.get(str(o.get("kind")), len(order)))


def load_components(paths: Iterable[Path]) -> list[Obj]:
    """The CAPI components bundle: every object of the given YAML files and directories
    (their *.yaml/*.yml, recursively, by name), in apply order: Namespaces, CRDs, RBAC, the
    rest. A kustomization file is not an object and is skipped: point at built output."""
    objs: list[Obj] = []
    for path in paths:
        files = sorted(f for f in path.rglob("*") if f.suffix in (".yaml", ".yml")
                       and f.is_file()) if path.is_dir() else [path]
        if not files and path.is_dir():
            raise ValueError(f"{path}: no YAML files")
        for f in files:
            objs += _objects(f)
    return _ordered(objs, ("Namespace", _CRD, "ServiceAccount", *_RBAC))
