"""Pure planners: (desired spec, observed objects) -> actions. No I/O, no asyncio."""

from .topology import plan_topology
from .types import Action, Apply, Delete, Note, Observed, Plan

__all__ = ["Action", "Apply", "Delete", "Note", "Observed", "Plan", "plan_topology"]
