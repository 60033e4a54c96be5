"""A simulated Cluster API (core, kubeadm bootstrap / control plane, Dev and vSphere providers)
acting on an emulated apiserver, so that flows can be exercised end to end."""

from .runtime import SimConfig
from .simulator import CapiSimulator

__all__ = ["CapiSimulator", "SimConfig"]
