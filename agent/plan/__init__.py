"""Pure planners: (desired spec, observed objects) -> actions. No I/O, no asyncio."""

from .topology import plan_topology
from .types import AGENT_FIELD_MANAGER, Action, Apply, Delete, FieldsClaim, Note, Observed, Plan

__all__ = ["AGENT_FIELD_MANAGER", "Action", "Apply", "Delete", "FieldsClaim", "Note", "Observed",
           "Plan", "plan_topology"]
