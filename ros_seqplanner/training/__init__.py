"""Trainers for TT, DT, BC and the MLP dynamics baseline (ROS-free)."""
