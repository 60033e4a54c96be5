"""The controller runtime both daemons share: supervisor, work queue, informers, one backoff,
leader election and the one NATS link. The gateway may import it like `agent.spec`."""

from .backoff import Backoff, delay
from .informer import Informer
from .leader import LeaderElector
from .queue import ShutDown, WorkQueue

__all__ = ["Backoff", "Informer", "LeaderElector", "ShutDown", "WorkQueue", "delay"]
