"""The pinned helm binary (helm.sh/helm/v4, built by build.py from the wrapper module in
go/helm, next to the control plane) for tests that run the real `helm` against a testbed
cluster: `built_helm()` is its path, verified as build.py verifies it."""

from __future__ import annotations

from pathlib import Path

from . import build
from .launcher import ControlPlaneError

__all__ = ["built_helm"]


def built_helm() -> Path:
    """The helm binary from the cache, verified (it prints the pinned version and was built from
    go/helm's go.mod/go.sum and flags); raises ControlPlaneError saying what to run when it is
    missing or stale."""
    try:
        comp = next(c for c in build.components(build.check_go()) if c.wrapper is build.HELM)
    except build.BuildError as e:
        raise ControlPlaneError(f"cannot locate the helm binary: {e}") from e
    if (why := comp.verify()) is not None:
        raise ControlPlaneError(f"helm {comp.version} missing or stale ({why}): "
                                "run `make controlplane`")
    return comp.path
