"""Kubeconfig files for the emulated clusters, usable by kubectl and kubernetes_asyncio alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def kubeconfig(name: str, server: str, token: str = "testbed") -> dict[str, Any]:
    """A kubeconfig with one context; plain HTTP on loopback, a bearer token as a real one has."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server}}],
        "users": [{"name": f"{name}-admin", "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": f"{name}-admin",
                                                "namespace": "default"}}],
        "current-context": name,
        "preferences": {},
    }


def write_kubeconfig(path: Path, name: str, server: str) -> Path:
    """Write atomically, so a script waiting for the file never reads half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(kubeconfig(name, server), sort_keys=False))
    tmp.chmod(0o600)
    tmp.replace(path)
    return path
