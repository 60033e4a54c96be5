"""Reporting to the management plane: status and events, through a bounded disk outbox.

``status`` is pure (computes the StatusReport); ``outbox`` keeps what is not yet delivered on
disk; ``publisher`` delivers it over NATS JetStream whenever the link is up.
"""

from .events import AgentEvent, EventType, Reason
from .outbox import Outbox, OutboxError, OutboxLockedError, Record, RecordTooLargeError
from .publisher import Publisher, PublisherStats
from .status import compute_status

__all__ = [
    "AgentEvent", "EventType", "Outbox", "OutboxError", "OutboxLockedError", "Publisher",
    "PublisherStats", "Reason", "Record", "RecordTooLargeError", "compute_status",
]
