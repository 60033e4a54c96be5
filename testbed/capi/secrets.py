"""The Secrets Cluster API keeps for a cluster, named exactly as clusterctl move expects them.

`<cluster>-kubeconfig` holds an admin kubeconfig (data `value`); `<cluster>-ca`, `-etcd`,
`-sa` and `-proxy` hold the cluster's certificate authorities (`tls.crt`/`tls.key`). All are of
type `cluster.x-k8s.io/secret`, labelled with the cluster name and controlled by the
KubeadmControlPlane. The contents are fake but stable, so converging them writes nothing.
"""

from __future__ import annotations

import base64
import copy
import hashlib
from typing import Any

import yaml

from .api import SECRETS, Api
from .util import CLUSTER_NAME_LABEL, CLUSTER_SECRET_TYPE, Obj, meta, owner_ref

CA_PURPOSES = ("ca", "etcd", "sa", "proxy")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def fake_pem(kind: str, seed: str, lines: int = 8) -> str:
    """PEM-looking text, deterministic per seed, so that rewriting it is always a no-op."""
    raw = b""
    block = seed.encode()
    while len(raw) < lines * 48:
        block = hashlib.sha256(block).digest()
        raw += block
    body = base64.b64encode(raw[: lines * 48]).decode()
    rows = [body[i:i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {kind}-----\n" + "\n".join(rows) + f"\n-----END {kind}-----\n"


def _body(name: str, cluster: str, owner: Obj, data: dict[str, str]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": {CLUSTER_NAME_LABEL: cluster},
                     "ownerReferences": [owner_ref(owner, controller=True)]},
        "type": CLUSTER_SECRET_TYPE,
        "data": data,
    }


def ensure_cluster_secrets(api: Api, ns: str, cluster: str, owner: Obj,
                           config: dict[str, Any]) -> bool:
    """Create the CA secrets once and keep the kubeconfig Secret holding `config`.

    Returns whether all of them exist now."""
    ok = True
    for purpose in CA_PURPOSES:
        name = f"{cluster}-{purpose}"
        if api.get(SECRETS, ns, name) is not None:
            continue
        seed = f"{meta(owner).get('uid')}/{purpose}"
        cert_kind = "PUBLIC KEY" if purpose == "sa" else "CERTIFICATE"
        data = {"tls.crt": b64(fake_pem(cert_kind, seed + "/crt")),
                "tls.key": b64(fake_pem("RSA PRIVATE KEY", seed + "/key", lines=16))}
        ok = api.create(SECRETS, ns, _body(name, cluster, owner, data)) is not None and ok
    name = f"{cluster}-kubeconfig"
    value = b64(yaml.safe_dump(config, sort_keys=False))
    current = api.get(SECRETS, ns, name)
    if current is None:
        return api.create(SECRETS, ns, _body(name, cluster, owner, {"value": value})) \
            is not None and ok
    if (current.get("data") or {}).get("value") != value:
        new = copy.deepcopy(current)
        new.setdefault("data", {})["value"] = value
        return api.update(new) is not None and ok
    return ok


def cloud_config(machine_name: str, join: bool, control_plane: bool) -> str:
    """Bootstrap data shaped like what the kubeadm bootstrap provider renders."""
    step = "kubeadm join" if join else "kubeadm init"
    if control_plane and join:
        step += " --control-plane"
    return ("## template: jinja\n#cloud-config\n"
            f"hostname: {machine_name}\n"
            "runcmd:\n"
            f"  - '{step} --config /run/kubeadm/kubeadm.yaml'\n")


def ensure_bootstrap_secret(api: Api, config: Obj, cluster: str, value: str) -> bool:
    """The bootstrap data Secret of a KubeadmConfig: same name, controlled by the config."""
    ns = meta(config).get("namespace", "")
    name = meta(config)["name"]
    if api.get(SECRETS, ns, name) is not None:
        return True
    body = _body(name, cluster, config, {"value": b64(value), "format": b64("cloud-config")})
    return api.create(SECRETS, ns, body) is not None
