"""An emulated Kubernetes API server, strict enough that code passing here works on a real one."""

from .errors import ApiError
from .registry import Registry
from .server import ApiServer
from .store import Store

__all__ = ["ApiError", "ApiServer", "Registry", "Store"]
