"""rclpy nodes: the planner (lifecycle) node and the MuJoCo sim bridge node."""
