"""Networks and their checkpoint I/O (torch, numpy, safetensors only; no ROS)."""
