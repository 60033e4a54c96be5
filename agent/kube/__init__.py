"""The one seam to Kubernetes: only this package talks to the API (and imports its client)."""

from . import resources
from .client import ApiKubeClient
from .errors import (
    AlreadyExists,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    KubeError,
    NotFound,
    Transient,
)
from .resources import by_kind
from .types import KubeClient, Obj, ObjectList, Propagation, Resource, WatchEvent

__all__ = [
    "AlreadyExists", "ApiKubeClient", "Conflict", "Forbidden", "Gone", "Invalid", "KubeClient",
    "KubeError", "NotFound", "Obj", "ObjectList", "Propagation", "Resource", "Transient",
    "WatchEvent", "by_kind", "resources",
]
