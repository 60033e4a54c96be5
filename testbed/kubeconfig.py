"""Kubeconfig files for the testbed's clusters (emulated or real), usable by kubectl and
kubernetes_asyncio alike."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml


def kubeconfig(name: str, server: str, *, token: str | None = "testbed",
               ca: bytes | None = None, cert: bytes | None = None,
               key: bytes | None = None) -> dict[str, Any]:
    """A kubeconfig with one context: a bearer token (the emulator's plain HTTP on loopback),
    or the CA and a client certificate embedded as data, so the file works wherever it goes."""
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    cluster: dict[str, Any] = {"server": server}
    if ca is not None:
        cluster["certificate-authority-data"] = b64(ca)
    user: dict[str, Any] = {}
    if cert is not None and key is not None:
        user = {"client-certificate-data": b64(cert), "client-key-data": b64(key)}
    elif token is not None:
        user = {"token": token}
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": f"{name}-admin", "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": f"{name}-admin",
                                                "namespace": "default"}}],
        "current-context": name,
        "preferences": {},
    }


def write_kubeconfig(path: Path, name: str, server: str, **creds: Any) -> Path:
    """`kubeconfig(name, server, **creds)` written by `write_document`."""
    return write_document(path, kubeconfig(name, server, **creds))


def write_document(path: Path, doc: dict[str, Any]) -> Path:
    """Write a kubeconfig atomically (a script waiting for the file never reads half of it),
    readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.chmod(0o600)
    tmp.replace(path)
    return path
