"""The reconcile engine: triggers, passes that observe, plan and apply, per-key error isolation."""

from .controller import PassResult, TopologyController

__all__ = ["PassResult", "TopologyController"]
