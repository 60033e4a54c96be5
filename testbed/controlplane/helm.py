"""The pinned tools build.py builds next to the control plane, for tests: helm (helm.sh/helm/v4,
from go/helm), and go-containerregistry's in-memory OCI registry (from go/registry) that charts
are pushed to and pulled from by oci://. Each path is verified as build.py verifies it."""

from __future__ import annotations

from pathlib import Path

from . import build
from .launcher import ControlPlaneError

__all__ = ["built_helm", "built_registry"]


def built_helm() -> Path:
    """The helm binary from the cache, verified (it prints the pinned version and was built from
    go/helm's go.mod/go.sum and flags); raises ControlPlaneError saying what to run when it is
    missing or stale."""
    return _built(build.HELM)


def built_registry() -> Path:
    """The OCI registry binary from the cache, verified by its Go build info."""
    return _built(build.REGISTRY)


def _built(wrapper: build.Wrapper) -> Path:
    try:
        comp = next(c for c in build.components(build.check_go()) if c.wrapper is wrapper)
    except build.BuildError as e:
        raise ControlPlaneError(f"cannot locate the {wrapper.name} binary: {e}") from e
    if (why := comp.verify()) is not None:
        raise ControlPlaneError(f"{wrapper.name} {comp.version} missing or stale ({why}): "
                                "run `make controlplane`")
    return comp.path
