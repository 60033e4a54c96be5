"""The Cluster API and vSphere provider CRDs the testbed serves (upstream files, with licences)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def crd_files(*providers: str) -> list[Path]:
    """CRD YAML files of the given providers (`cluster-api`, `vsphere`); all when none named."""
    dirs = [ROOT / p for p in providers] if providers else sorted(p for p in ROOT.iterdir()
                                                                   if p.is_dir())
    return sorted(f for d in dirs for f in d.glob("*.yaml"))
