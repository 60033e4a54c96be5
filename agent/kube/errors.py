"""Our own error types for the Kubernetes API, so no caller depends on the client library's."""

from __future__ import annotations


class KubeError(Exception):
    """An API call failed; `status` is the HTTP code (0 when the server was not reached)."""

    def __init__(self, message: str, status: int = 0, reason: str = "",
                 causes: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        #: (field, message) of each cause the server gave, e.g. the fields of a server-side
        #: apply conflict: (".spec.replicas", 'conflict with "kubectl-edit" using apps/v1').
        self.causes = causes


class NotFound(KubeError):
    pass


class AlreadyExists(KubeError):
    pass


class Conflict(KubeError):
    """A stale resourceVersion or a server-side apply conflict: re-read and retry."""


class Gone(KubeError):
    """410: the resourceVersion is too old; relist."""


class Invalid(KubeError):
    """400/422: the request itself is wrong; retrying the same request cannot help."""


class Forbidden(KubeError):
    pass


class Transient(KubeError):
    """429, 5xx, timeouts, connection failures: retry with backoff."""
