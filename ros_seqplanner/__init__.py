"""ros_seqplanner: sequence-model planners (Trajectory Transformer, Decision Transformer) for ROS 2.

The core (``data``, ``nets``, ``training``, ``planning``, ``policies``, ``sim``) never imports ROS;
``nodes`` are thin rclpy shells around it.
"""

__version__ = "0.1.0"
