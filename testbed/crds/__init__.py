"""The Cluster API and vSphere provider CRDs the testbed serves (upstream files, with licences)."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

from mgmt_gateway.render.yamldocs import KubeLoader

ROOT = Path(__file__).resolve().parent


COMPONENTS = ROOT.parent / "components"


def components_files() -> list[Path]:
    """What the gateway installs into a workload cluster on the testbed: the CRDs, then the CAPI
    controllers' Deployment."""
    return [*crd_files(), *sorted(COMPONENTS.glob("*.yaml"))]


GATEWAY_CRDS = ROOT.parents[1] / "manifests" / "gateway" / "crds"


def gateway_crd_files() -> list[Path]:
    """The management plane's own CRDs (OutpostCluster, ClusterProfile), as shipped."""
    return sorted(GATEWAY_CRDS.glob("*.yaml"))


def crd_files(*providers: str) -> list[Path]:
    """CRD YAML files of the given providers (`cluster-api`, `vsphere`); all when none named."""
    dirs = [ROOT / p for p in providers] if providers else sorted(p for p in ROOT.iterdir()
                                                                   if p.is_dir())
    return sorted(f for d in dirs for f in d.glob("*.yaml"))


@functools.cache
def _parsed(path: Path) -> tuple[dict[str, Any], ...]:
    return tuple(d for d in yaml.load_all(path.read_text(), Loader=KubeLoader) if d)


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a file, parsed once per process (the CRDs are large): fresh copies."""
    return copy.deepcopy(list(_parsed(path.resolve())))
