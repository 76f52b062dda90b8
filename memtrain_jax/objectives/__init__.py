"""Proxy objectives, by name (see `base` for what an objective is and how to add one)."""

from memtrain_jax.objectives.base import Probe, ProbeObjective, Trajectory, TrajectoryObjective
from memtrain_jax.objectives.registry import available, make, register

__all__ = ["Probe", "ProbeObjective", "Trajectory", "TrajectoryObjective", "available", "make",
           "register"]
