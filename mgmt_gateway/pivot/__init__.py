"""The pivot: move a cluster's Cluster API objects into the cluster itself, so it manages
itself (the semantics of `clusterctl move`, journaled and resumable)."""

from .graph import discover
from .journal import FileJournal, Journal, MemoryJournal
from .model import Graph, Node, PivotError, PreconditionFailed, Skipped
from .move import MoveReport, abandon, move
from .plan import MovePlan, build_plan
from .retry import RetryPolicy

__all__ = [
    "FileJournal", "Graph", "Journal", "MemoryJournal", "MovePlan", "MoveReport", "Node",
    "PivotError", "PreconditionFailed", "RetryPolicy", "Skipped", "abandon", "build_plan",
    "discover", "move",
]
