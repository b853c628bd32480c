"""Policies: the one interface the evaluator, the demo, the ROS node and the tests all call."""

from ros_seqplanner.policies.base import Policy, PolicyTimings

__all__ = ["Policy", "PolicyTimings"]
