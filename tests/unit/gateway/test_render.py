"""The gateway's renderers: requests become specs, specs become CAPI objects the real CRDs accept
and the agent's planner leaves alone, and the agent bundle is safe to run at the edge."""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from agent.plan import Apply, Delete, Observed, plan_topology
from agent.settings import Settings
from agent.spec import ClusterSpec, capi, public_key_text
from mgmt_gateway.clusters import ClusterRequest
from mgmt_gateway.render import bundle as bundle_mod
from mgmt_gateway.render.bundle import agent_bundle, agent_manifests, load_components
from mgmt_gateway.render.capi import KUBE_VIP_MANIFEST, render_cluster
from testbed.apiserver.schema import apply_defaults, prune, validate
from testbed.crds import components_files, crd_files, load_documents
from tests.fixtures.tools import kubectl_binary

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 11, 25, tzinfo=UTC)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOutpostTestKeyOnly ops@site"
KEY2 = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 second@site"

Obj = dict[str, Any]

VSPHERE_INFRA: Obj = {
    "provider": "vsphere", "server": "vcenter.site-7.example", "datacenter": "dc1",
    "datastore": "ds1", "network": "VM Network", "folder": "/dc1/vm/edge",
    "resourcePool": "edge-pool", "thumbprint": "AA:BB:CC:DD", "identityName": "site-7-creds",
    "controlPlaneEndpoint": "10.20.0.10"}
VSPHERE_MACHINE: Obj = {"provider": "vsphere", "template": "ubuntu-2404-kube-v1.35.2",
                        "numCpus": 4, "memoryMib": 8192, "diskGib": 60}


def request_body(provider: str = "vsphere", **over: Any) -> Obj:
    infra = VSPHERE_INFRA if provider == "vsphere" else {"provider": "dev"}
    machine = VSPHERE_MACHINE if provider == "vsphere" else {"provider": "dev"}
    body: Obj = {
        "name": "site-7", "namespace": "fleet", "kubernetesVersion": "v1.35.2",
        "infrastructure": infra, "controlPlane": {"replicas": 3, "machine": machine},
        "workers": [{"name": "line", "replicas": 2, "machine": machine}],
        "certificates": {"rotateBeforeDays": 45, "rotateAfter": "2026-10-01T00:00:00Z"},
        "sshAuthorizedKeys": [KEY, KEY2],
    }
    body.update(over)
    return body


def make_spec(provider: str = "vsphere", **over: Any) -> ClusterSpec:
    return to_spec(ClusterRequest.model_validate(request_body(provider, **over)), 1)


def to_spec(req: ClusterRequest, revision: int) -> ClusterSpec:
    return req.to_spec(req.name, req.namespace, revision, None)


SPECS = {
    "vsphere": lambda: make_spec("vsphere"),
    "vsphere-dns-endpoint": lambda: make_spec("vsphere", infrastructure={
        **{k: v for k, v in VSPHERE_INFRA.items() if k not in ("thumbprint", "folder")},
        "controlPlaneEndpoint": "api.site-7.example"}),
    "vsphere-1.28": lambda: make_spec("vsphere", kubernetesVersion="v1.28.9", workers=[],
                                      sshAuthorizedKeys=[], certificates={}),
    "dev": lambda: make_spec("dev"),
    "dev-minimal": lambda: make_spec(
        "dev", namespace="default", workers=[], sshAuthorizedKeys=[], certificates={},
        controlPlane={"replicas": 1, "machine": {"provider": "dev", "image": "kindest/node"}}),
}


# -- CRD schemas ----------------------------------------------------------------------------------
def _served_schemas() -> dict[tuple[str, str], Obj]:
    out: dict[tuple[str, str], Obj] = {}
    for f in crd_files():
        for crd in load_documents(f):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                if v.get("served"):
                    out[(f"{group}/{v['name']}", kind)] = v["schema"]["openAPIV3Schema"]
    return out


SCHEMAS = _served_schemas()


def as_server_stores(obj: Obj) -> Obj:
    """Prune, default and validate like kube-apiserver; fail on any pruned field or error."""
    key = (obj["apiVersion"], obj["kind"])
    assert key in SCHEMAS, f"{key} is not a served version of a known CRD"
    stored = copy.deepcopy(obj)
    pruned = prune(stored, SCHEMAS[key])
    assert pruned == [], f"{obj['kind']} {obj['metadata']['name']}: pruned {pruned}"
    apply_defaults(stored, SCHEMAS[key])
    errors = validate(stored, SCHEMAS[key])
    assert errors == [], f"{obj['kind']}: " + "; ".join(str(e) for e in errors)
    return stored


@pytest.mark.parametrize("case", sorted(SPECS))
def test_rendered_objects_validate_against_the_real_crds(case: str) -> None:
    for obj in render_cluster(SPECS[case]()):
        as_server_stores(obj)


@pytest.mark.parametrize("provider", ["vsphere", "dev"])
def test_objects_come_in_creation_order_and_reference_each_other(provider: str) -> None:
    spec = make_spec(provider)
    cluster, infra, template, kcp = render_cluster(spec)
    infra_kind = "VSphereCluster" if provider == "vsphere" else "DevCluster"
    assert [o["kind"] for o in (cluster, infra, kcp)] == ["Cluster", infra_kind,
                                                          "KubeadmControlPlane"]
    assert template == capi.machine_template(spec, capi.ROLE_CONTROL_PLANE)
    assert cluster["spec"]["controlPlaneRef"] == {
        "apiGroup": "controlplane.cluster.x-k8s.io", "kind": "KubeadmControlPlane",
        "name": kcp["metadata"]["name"]}
    assert cluster["spec"]["infrastructureRef"] == {
        "apiGroup": "infrastructure.cluster.x-k8s.io", "kind": infra_kind,
        "name": infra["metadata"]["name"]}
    assert kcp["spec"]["machineTemplate"]["spec"]["infrastructureRef"] == {
        "apiGroup": "infrastructure.cluster.x-k8s.io", "kind": template["kind"],
        "name": template["metadata"]["name"]}
    assert cluster["spec"]["clusterNetwork"]["pods"]["cidrBlocks"]
    assert cluster["spec"]["clusterNetwork"]["services"]["cidrBlocks"]
    for obj in (cluster, infra, template, kcp):
        assert obj["metadata"]["namespace"] == "fleet"
        labels = obj["metadata"]["labels"]
        assert labels[capi.LABEL_CLUSTER] == labels[capi.CAPI_CLUSTER_LABEL] == "site-7"
        assert labels[capi.LABEL_MANAGED_BY] == capi.MANAGED_BY
    assert kcp["metadata"]["name"] == capi.kcp_name(spec)
    assert kcp["metadata"]["labels"][capi.LABEL_ROLE] == capi.ROLE_CONTROL_PLANE
    assert kcp["spec"]["replicas"] == 1
    assert kcp["spec"]["version"] == "v1.35.2"


def test_dev_cluster_uses_the_docker_backend() -> None:
    _, infra, template, kcp = render_cluster(make_spec("dev"))
    assert infra["spec"] == {"backend": {"docker": {}}}
    assert template["spec"]["template"]["spec"] == {"backend": {"docker": {}}}
    init = kcp["spec"]["kubeadmConfigSpec"]["initConfiguration"]["nodeRegistration"]
    assert init == kcp["spec"]["kubeadmConfigSpec"]["joinConfiguration"]["nodeRegistration"]


def test_vsphere_cluster_references_its_identity_and_endpoint() -> None:
    _, infra, _, kcp = render_cluster(make_spec("vsphere"))
    assert infra["spec"] == {
        "server": "vcenter.site-7.example", "thumbprint": "AA:BB:CC:DD",
        "identityRef": {"kind": "VSphereClusterIdentity", "name": "site-7-creds"},
        "controlPlaneEndpoint": {"host": "10.20.0.10", "port": 6443}}
    config = kcp["spec"]["kubeadmConfigSpec"]
    for phase in ("initConfiguration", "joinConfiguration"):
        assert {"name": "cloud-provider", "value": "external"} in \
            config[phase]["nodeRegistration"]["kubeletExtraArgs"]


def test_a_vsphere_virtual_ip_is_held_by_kube_vip() -> None:
    config = render_cluster(make_spec("vsphere"))[3]["spec"]["kubeadmConfigSpec"]
    files = {f["path"]: f for f in config["files"]}
    pod = yaml.safe_load(files[KUBE_VIP_MANIFEST]["content"])
    assert pod["kind"] == "Pod" and pod["spec"]["hostNetwork"] is True
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["address"] == "10.20.0.10" and env["port"] == "6443"
    # The init-only swap rewrites the host path, never the path inside the container.
    content = files[KUBE_VIP_MANIFEST]["content"]
    assert len(re.findall(r"(?<![A-Za-z])path: /etc/kubernetes/admin\.conf", content)) == 1
    assert "{{" not in content  # cloud-init renders the bootstrap data as a Jinja template
    assert config["preKubeadmCommands"] and config["postKubeadmCommands"]
    assert len(config["files"]) == 2


def test_kube_vip_without_the_swap_before_1_29_and_not_for_a_dns_endpoint() -> None:
    old = render_cluster(SPECS["vsphere-1.28"]())[3]["spec"]["kubeadmConfigSpec"]
    assert [f["path"] for f in old["files"]] == [KUBE_VIP_MANIFEST]
    assert "preKubeadmCommands" not in old
    dns = render_cluster(SPECS["vsphere-dns-endpoint"]())[3]["spec"]["kubeadmConfigSpec"]
    assert "files" not in dns and "preKubeadmCommands" not in dns


# -- secrets and credentials ----------------------------------------------------------------------
def leaves(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from leaves(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from leaves(v, f"{path}[{i}]")
    else:
        yield path, obj


@pytest.mark.parametrize("provider", ["vsphere", "dev"])
def test_ssh_keys_travel_only_as_cloud_init_users(provider: str) -> None:
    spec = make_spec(provider)
    found = [(o["kind"], path) for o in render_cluster(spec) for path, value in leaves(o)
             if isinstance(value, str) and any(k.split()[1] in value for k in (KEY, KEY2))]
    assert found == [("KubeadmControlPlane", "spec.kubeadmConfigSpec.users[0]"
                      f".sshAuthorizedKeys[{i}]") for i in range(2)]
    user = render_cluster(spec)[3]["spec"]["kubeadmConfigSpec"]["users"][0]
    assert user["name"] == capi.SSH_USER and user["sshAuthorizedKeys"] == [KEY, KEY2]


def test_credentials_are_only_referenced() -> None:
    objs = render_cluster(make_spec("vsphere"))
    for obj in objs:
        for path, _ in leaves(obj):
            assert not re.search(r"(?i)password|passwd|username|secret|token", path), path
    refs = [(o["kind"], v) for o in objs for p, v in leaves(o) if p.endswith("identityRef.kind")]
    assert refs == [("VSphereCluster", "VSphereClusterIdentity")]


# -- what the agent's planner makes of it ---------------------------------------------------------
def settled(obj: Obj, replicas: int, version: str | None = None) -> Obj:
    obj = copy.deepcopy(obj)
    obj["metadata"].update(generation=1, uid=f"u-{obj['metadata']['name']}")
    obj["status"] = {"observedGeneration": 1, "replicas": replicas, "readyReplicas": replicas,
                     "upToDateReplicas": replicas}
    if version:
        obj["status"]["version"] = version
    return obj


def observed_after_pivot(spec: ClusterSpec) -> Observed:
    """What the agent finds right after the pivot: the gateway's objects as the API stored
    them, the first control-plane node up, no worker pool yet."""
    _, _, template, kcp = (as_server_stores(o) for o in render_cluster(spec))
    return Observed(now=NOW, kcp=settled(kcp, 1, spec.kubernetes_version),
                    infra_templates={template["metadata"]["name"]: template})


@pytest.mark.parametrize("case", sorted(SPECS))
def test_the_agents_first_pass_only_scales_the_control_plane(case: str) -> None:
    spec = SPECS[case]()
    obs = observed_after_pivot(spec)
    plan = plan_topology(spec, obs)
    assert not [a for a in plan.actions if isinstance(a, Delete)]
    kcp_changes = [a for a in plan.actions if isinstance(a, Apply)
                   and a.kind == "KubeadmControlPlane"]
    others = {a.kind for a in plan.actions if a not in kcp_changes}
    worker_kinds = {"MachineDeployment", "KubeadmConfigTemplate", capi.infra_kind(spec)}
    assert others <= worker_kinds
    # No template of the control plane is (re)created: the gateway's is the agent's.
    assert not [a for a in plan.actions if a.kind == capi.infra_kind(spec)
                and capi.LABEL_POOL not in a.body["metadata"]["labels"]]  # type: ignore[union-attr]
    if spec.control_plane.replicas == 1:
        # At most one apply that takes ownership of what the pivot created: it changes no
        # value (no generation bump, no rollout), after which a pass writes nothing.
        assert obs.kcp is not None
        assert all(covers(obs.kcp, {"spec": a.body["spec"]}) for a in kcp_changes)  # type: ignore[union-attr]
        return
    [change] = kcp_changes
    assert obs.kcp is not None
    wanted = change.body["spec"]
    assert wanted["replicas"] == spec.control_plane.replicas
    # Everything else it would write, the gateway already wrote.
    assert covers(obs.kcp, {"spec": {k: v for k, v in wanted.items() if k != "replicas"}})
    assert f"replicas 1 -> {spec.control_plane.replicas}" in change.reason


def covers(live: Any, wanted: Any) -> bool:
    """`wanted` is contained in `live` (maps by key, lists item by item): what the gateway
    rendered is already there. A test helper; the agent itself compares managed fields."""
    if isinstance(wanted, dict):
        return isinstance(live, dict) and all(k in live and covers(live[k], v)
                                              for k, v in wanted.items())
    if isinstance(wanted, list):
        return (isinstance(live, list) and len(live) == len(wanted)
                and all(covers(a, b) for a, b in zip(live, wanted, strict=True)))
    return bool(live == wanted)


def test_a_single_node_cluster_after_the_pivot_plans_only_taking_ownership() -> None:
    """Right after the pivot the agent owns nothing yet: one apply of the values already there
    (full intent needs the agent's own managedFields), and no note."""
    spec = SPECS["dev-minimal"]()
    obs = observed_after_pivot(spec)
    plan = plan_topology(spec, obs)
    assert plan.notes == ()
    assert [a.kind for a in plan.actions] == ["KubeadmControlPlane"]
    assert covers(obs.kcp, {"spec": plan.actions[0].body["spec"]})  # type: ignore[union-attr]


# -- requests -------------------------------------------------------------------------------------
def test_request_fields_are_the_spec_fields() -> None:
    spec_fields = set(ClusterSpec.model_fields) - {"cluster_name", "revision"}
    assert set(ClusterRequest.model_fields) == spec_fields | {"name"}
    for name in spec_fields:
        assert ClusterRequest.model_fields[name].alias == ClusterSpec.model_fields[name].alias


def test_request_becomes_the_spec() -> None:
    req = ClusterRequest.model_validate(request_body())
    spec = to_spec(req, 4)
    assert spec.cluster_name == "site-7" and spec.revision == 4
    round_trip = spec.model_dump(mode="json", by_alias=True, exclude={"cluster_name",
                                                                      "revision"})
    assert to_spec(ClusterRequest.model_validate({**round_trip, "name": "site-7"}), 4) == spec


def test_a_request_is_frozen_and_camel_case() -> None:
    req = ClusterRequest.model_validate(request_body())
    with pytest.raises(ValidationError):
        req.name = "other"
    assert "kubernetesVersion" in req.model_dump(by_alias=True)


def errors_of(body: Obj) -> list[tuple[tuple[str | int, ...], str, str]]:
    """The errors of a request: its own fields first, then the rules across fields that
    the spec contract adds."""
    with pytest.raises(ValidationError) as info:
        to_spec(ClusterRequest.model_validate(body), 1)
    return [(tuple(e["loc"]), e["type"], e["msg"]) for e in info.value.errors()]


@pytest.mark.parametrize(("over", "loc", "kind"), [
    ({"name": "Site_7"}, ("name",), "value_error"),
    ({"name": "x" * 41}, ("name",), "value_error"),
    ({"controlPlane": {"replicas": 2, "machine": {"provider": "dev"}}},
     ("controlPlane", "replicas"), "literal_error"),
    ({"infrastructure": {"provider": "openstack"}}, ("infrastructure",), "union_tag_invalid"),
    ({"kubernetesVersion": "1.35"}, ("kubernetesVersion",), "value_error"),
    ({"sshAuthorizedKeys": ["-----BEGIN OPENSSH PRIVATE KEY-----"]},
     ("sshAuthorizedKeys", 0), "value_error"),
    ({"workers": [{"name": "a", "replicas": -1, "machine": {"provider": "dev"}}]},
     ("workers", 0, "replicas"), "greater_than_equal"),
    ({"revision": 3}, ("revision",), "extra_forbidden"),
    ({"clusterName": "site-7"}, ("clusterName",), "extra_forbidden"),
])
def test_bad_requests_name_the_field(over: Obj, loc: tuple[str | int, ...], kind: str) -> None:
    errors = errors_of(request_body("dev", **over))
    assert (loc, kind) in [(e[0], e[1]) for e in errors], errors


def test_missing_fields_are_each_reported() -> None:
    errors = errors_of({"name": "site-7"})
    assert {(e[0], e[1]) for e in errors} == {
        (("kubernetesVersion",), "missing"), (("infrastructure",), "missing"),
        (("controlPlane",), "missing")}
    machine = errors_of(request_body(
        "vsphere", controlPlane={"replicas": 1, "machine": {"provider": "vsphere"}}))
    assert (("controlPlane", "machine", "vsphere", "template"), "missing") in \
        [(e[0], e[1]) for e in machine]


def test_a_provider_mismatch_names_the_machine() -> None:
    body = request_body("dev", workers=[{"name": "line", "replicas": 1,
                                         "machine": VSPHERE_MACHINE}])
    [(loc, _, msg)] = errors_of(body)
    assert loc == ()
    assert msg.endswith("workers[line].machine.provider is 'vsphere' but the infrastructure "
                   "provider is 'dev'")


def test_spec_only_rules_surface_from_the_request() -> None:
    [(_, _, msg)] = errors_of(request_body("dev", workers=[
        {"name": "a", "replicas": 1, "machine": {"provider": "dev"}, "version": "v1.36.0"}]))
    assert "newer than the control plane" in msg
    [(_, _, msg)] = errors_of(request_body("dev", workers=[
        {"name": "a", "replicas": 1, "machine": {"provider": "dev"}}] * 2))
    assert "repeated: a" in msg


def test_to_spec_reports_a_bad_revision_at_its_path() -> None:
    req = ClusterRequest.model_validate(request_body())
    with pytest.raises(ValidationError) as info:
        to_spec(req, 0)
    assert [e["loc"] for e in info.value.errors()] == [("revision",)]


# -- the agent bundle -----------------------------------------------------------------------------
def signing_key() -> str:
    return public_key_text(Ed25519PrivateKey.generate().public_key())


def pem_key() -> tuple[str, str]:
    public = Ed25519PrivateKey.generate().public_key()
    pem = public.public_bytes(serialization.Encoding.PEM,
                              serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return pem, public_key_text(public)


CREDS = "-----BEGIN NATS USER JWT-----\neyJ0eXAi\n------END NATS USER JWT------\n"


def render_bundle(spec: ClusterSpec | None = None, **over: Any) -> list[Obj]:
    args: dict[str, Any] = {"nats_servers": ["nats://mgmt-a:4222", "nats://mgmt-b:4222"],
                            "nats_credentials": CREDS, "public_keys": [signing_key()],
                            "image": "registry.example/outpost:0.1.0"}
    args.update(over)
    return agent_bundle(spec or make_spec("dev"), **args)


def one(objs: list[Obj], kind: str, name: str = "outpost-agent") -> Obj:
    [obj] = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def pod_spec(objs: list[Obj]) -> Obj:
    spec: Obj = one(objs, "Deployment")["spec"]["template"]["spec"]
    return spec


def agent_container(objs: list[Obj]) -> Obj:
    containers: list[Obj] = pod_spec(objs)["containers"]
    [container] = [c for c in containers if c["name"] == "agent"]
    return container


def test_bundle_comes_in_apply_order() -> None:
    kinds = [o["kind"] for o in render_bundle()]
    assert kinds == ["Namespace", "Namespace", "ServiceAccount", "ClusterRole", "Role",
                     "RoleBinding", "RoleBinding", "ConfigMap", "Secret", "Deployment"]
    assert [o["metadata"]["name"] for o in render_bundle() if o["kind"] == "Namespace"] == \
        ["fleet", "outpost-system"]
    default_ns = render_bundle(SPECS["dev-minimal"]())
    assert [o["metadata"]["name"] for o in default_ns if o["kind"] == "Namespace"] == \
        ["outpost-system"]


def test_bundle_tolerates_the_control_plane_taints_and_prefers_those_nodes() -> None:
    pod = pod_spec(render_bundle())
    tolerated = {(t["key"], t.get("effect")) for t in pod["tolerations"]}
    assert ("node-role.kubernetes.io/control-plane", "NoSchedule") in tolerated
    assert ("node-role.kubernetes.io/master", "NoSchedule") in tolerated
    [pref] = pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert pref["preference"]["matchExpressions"][0]["key"] == \
        "node-role.kubernetes.io/control-plane"
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"


def test_bundle_probes_the_agents_endpoints() -> None:
    c = agent_container(render_bundle())
    port = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port == {"http": Settings.model_fields["http_port"].default}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["command"] == ["outpost-agent"]
    assert c["resources"]["requests"] and c["resources"]["limits"]


def test_bundle_runs_unprivileged() -> None:
    objs = render_bundle()
    pod = pod_spec(objs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    c = agent_container(objs)
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert "runAsUser" not in sc and sc.get("runAsNonRoot", True) is True
    # The one root step: handing the node's state directory to the agent's user.
    [init] = pod["initContainers"]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"],
                                                       "add": ["CHOWN", "FOWNER"]}
    assert init["securityContext"]["allowPrivilegeEscalation"] is False
    assert str(pod["securityContext"]["runAsUser"]) in " ".join(init["command"])


def test_bundle_keeps_state_on_the_node_and_names_the_pod() -> None:
    objs = render_bundle()
    pod, c = pod_spec(objs), agent_container(objs)
    env = {e["name"]: e for e in c["env"]}
    assert env["OUTPOST_AGENT_IDENTITY"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}}
    state = env["OUTPOST_AGENT_STATE_DIR"]["value"]
    [mount] = [m for m in c["volumeMounts"] if m["mountPath"] == state]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["hostPath"] == {"path": "/var/lib/outpost", "type": "DirectoryOrCreate"}
    assert one(objs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    grace = float(one(objs, "ConfigMap")["data"]["OUTPOST_AGENT_SHUTDOWN_GRACE_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > grace
    assert one(objs, "Deployment")["spec"]["replicas"] == 1


def test_bundle_files_come_from_the_secret() -> None:
    pem, b64 = pem_key()
    other = signing_key()
    objs = render_bundle(public_keys=[pem, other, " "])
    secret = one(objs, "Secret")
    assert "data" not in secret
    assert secret["stringData"] == {"public-keys": f"{b64}\n{other}\n", "nats.creds": CREDS}
    c = agent_container(objs)
    env = {e["name"]: e.get("value") for e in c["env"]}
    [mount] = [m for m in c["volumeMounts"] if m["name"] == "secret"]
    [volume] = [v for v in pod_spec(objs)["volumes"] if v["name"] == "secret"]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"] and mount["readOnly"]
    assert env["OUTPOST_AGENT_PUBLIC_KEYS_FILE"] == f"{mount['mountPath']}/public-keys"
    assert env["OUTPOST_AGENT_NATS_CREDENTIALS"] == f"{mount['mountPath']}/nats.creds"
    assert volume["secret"]["defaultMode"] == 0o440


def test_bundle_without_nats_credentials_does_not_point_at_a_missing_file() -> None:
    objs = render_bundle(nats_credentials=None)
    assert set(one(objs, "Secret")["stringData"]) == {"public-keys"}
    env = {e["name"] for e in agent_container(objs)["env"]}
    assert "OUTPOST_AGENT_NATS_CREDENTIALS" not in env


def test_bundle_settings_are_the_agents(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The ConfigMap and the pod's env make a configuration the agent accepts."""
    spec = make_spec("dev")
    objs = render_bundle(spec, extra_env={"OUTPOST_AGENT_RESYNC_SECONDS": "15"})
    data = one(objs, "ConfigMap")["data"]
    known = {f"OUTPOST_AGENT_{name.upper()}" for name in Settings.model_fields}
    assert set(data) <= known
    env = {e["name"]: e.get("value", "pod-name") for e in agent_container(objs)["env"]}
    assert set(env) <= known
    mount = "/etc/outpost/secret"
    secret = one(objs, "Secret")["stringData"]
    for key, content in secret.items():
        (tmp_path / key).write_text(content)
    for name, value in {**data, **env}.items():
        monkeypatch.setenv(name, value.replace(mount, str(tmp_path)))
    settings = Settings()  # type: ignore[call-arg]
    assert settings.cluster_name == spec.cluster_name
    assert settings.nats_servers == ["nats://mgmt-a:4222", "nats://mgmt-b:4222"]
    assert settings.agent_namespace == "outpost-system"
    assert settings.resync_seconds == 15
    assert settings.identity == "pod-name"
    assert len(settings.trusted_keys()) == 1


def test_bundle_in_another_namespace() -> None:
    spec = make_spec("dev")
    objs = render_bundle(spec, namespace="edge-agent", image="reg/x:1")
    assert [o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"] == \
        ["fleet", "edge-agent"]
    for o in objs:
        ns = o["metadata"].get("namespace")
        if o["kind"] == "RoleBinding" and o["roleRef"]["kind"] == "ClusterRole":
            assert ns == spec.namespace
        elif o["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert ns == "edge-agent", o["kind"]
        for subject in o.get("subjects") or []:
            assert subject["namespace"] == "edge-agent"
    assert one(objs, "ConfigMap")["data"]["OUTPOST_AGENT_AGENT_NAMESPACE"] == "edge-agent"
    pod = pod_spec(objs)
    assert {c["image"] for c in pod["containers"] + pod["initContainers"]} == {"reg/x:1"}


def test_bundle_rbac_is_least_privilege() -> None:
    objs = render_bundle()
    rules = {o["kind"]: o["rules"] for o in objs if o["kind"] in ("ClusterRole", "Role")}
    grants: dict[tuple[str, str], set[str]] = {}
    for rs in rules.values():
        for rule in rs:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]
            assert "*" not in rule.get("apiGroups", [])
            assert "secrets" not in rule["resources"]
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
            for group in rule["apiGroups"]:
                for res in rule["resources"]:
                    grants.setdefault((group, res), set()).update(rule["verbs"])
    read = {"get", "list", "watch"}
    writes = {k: v - read for k, v in grants.items() if v - read}
    assert writes == {
        ("cluster.x-k8s.io", "machinedeployments"): {"create", "patch", "delete"},
        ("controlplane.cluster.x-k8s.io", "kubeadmcontrolplanes"): {"patch"},
        ("bootstrap.cluster.x-k8s.io", "kubeadmconfigtemplates"): {"create", "patch", "delete"},
        ("infrastructure.cluster.x-k8s.io", "devmachinetemplates"): {"create", "patch",
                                                                     "delete"},
        ("infrastructure.cluster.x-k8s.io", "vspheremachinetemplates"): {"create", "patch",
                                                                         "delete"},
        ("coordination.k8s.io", "leases"): {"create", "update"},
        ("", "events"): {"create"},
    }
    for res in ("clusters", "machinedeployments", "machinesets", "machines"):
        assert read <= grants[("cluster.x-k8s.io", res)]
    assert not [o for o in objs if o["kind"] == "ClusterRoleBinding"]
    [capi_binding] = [o for o in objs if o["kind"] == "RoleBinding"
                      and o["roleRef"]["kind"] == "ClusterRole"]
    assert capi_binding["metadata"]["namespace"] == "fleet"


@pytest.mark.parametrize(("over", "message"), [
    ({"public_keys": []}, "no trusted public key"),
    ({"public_keys": ["not-a-key"]}, "not usable"),
    ({"nats_servers": []}, "at least one NATS URL"),
    ({"nats_servers": ["nats://a:4222,nats://b:4222"]}, "without commas"),
    ({"extra_env": {"OUTPOST_AGENT_STATE_DIR": "/tmp"}}, "set by the bundle"),
    ({"extra_env": {"OUTPOST_AGENT_CLUSTER_NAME": "other"}}, "set by the bundle"),
    ({"extra_env": {"BAD-NAME": "x"}}, "not an environment variable"),
    ({"namespace": "Outpost"}, "not a DNS label"),
    ({"image": " "}, "image is empty"),
])
def test_bundle_refuses_what_would_crash_the_agent(over: Obj, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_bundle(**over)


def test_ssh_keys_never_reach_the_bundle() -> None:
    for obj in render_bundle(make_spec("vsphere")):
        assert not [p for p, v in leaves(obj) if isinstance(v, str) and KEY.split()[1] in v]


# -- the kustomize base ---------------------------------------------------------------------------
def test_the_base_builds_with_kustomize_to_what_the_gateway_renders_from() -> None:
    out = subprocess.run([kubectl_binary(), "kustomize", str(ROOT / "manifests" / "agent")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]

    def key(o: Obj) -> tuple[str, str, str]:
        return o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]

    assert sorted(built, key=key) == sorted(agent_manifests(), key=key)


def test_the_package_reads_the_base_itself() -> None:
    assert bundle_mod.MANIFESTS.resolve() == (ROOT / "manifests" / "agent").resolve()


# -- the CAPI components bundle -------------------------------------------------------------------
def test_components_are_ordered_namespaces_crds_rbac_rest(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "a.yaml").write_text(yaml.safe_dump_all([
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "m",
                                                                     "namespace": "capi"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "crb"}},
        None,
    ]))
    (tmp_path / "b" / "crds.yml").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
             "metadata": {"name": "x.example"}}]}))
    (tmp_path / "b" / "ns.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "capi"}}))
    (tmp_path / "b" / "kustomization.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
         "resources": ["crds.yml"]}))
    (tmp_path / "b" / "notes.txt").write_text("not yaml: [")
    objs = load_components([tmp_path / "b", tmp_path / "a.yaml"])
    assert [o["kind"] for o in objs] == ["Namespace", "CustomResourceDefinition",
                                         "ClusterRoleBinding", "Deployment"]


def test_components_of_the_testbed() -> None:
    objs = load_components(components_files())
    kinds = [o["kind"] for o in objs]
    assert kinds[0] == "Namespace" and kinds[-1] == "Deployment"
    assert kinds.index("ServiceAccount") > max(i for i, k in enumerate(kinds)
                                               if k == "CustomResourceDefinition")


def test_components_refuse_what_is_not_an_object(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n")
    with pytest.raises(ValueError, match=r"metadata\.name"):
        load_components([bad])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no YAML files"):
        load_components([tmp_path / "empty"])
