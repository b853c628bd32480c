"""Trajectory Transformer planning: exact, batched, K/V-cached beam search (ROS-free)."""

from ros_seqplanner.planning.beam import BeamPlanner, Plan, PlannerConfig, plan_flops
from ros_seqplanner.planning.presets import PRESETS, get_preset, preset_names

__all__ = ["PRESETS", "BeamPlanner", "Plan", "PlannerConfig", "get_preset", "plan_flops", "preset_names"]
