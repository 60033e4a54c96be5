"""The reconcile engine: work queue, triggers, passes that apply plans, leader election."""

from .controller import PassResult, TopologyController
from .leader import LeaderElector
from .queue import WorkQueue

__all__ = ["LeaderElector", "PassResult", "TopologyController", "WorkQueue"]
