"""Safe ROS 2 environment defaults, applied before rclpy initialises.

DDS discovery must never leave the loopback interface in tests, CI, scripts or the demo, and
concurrent runs must not see each other: every entry point calls :func:`apply_safe_ros_env` first.
No ROS import here, so the core can call it freely.
"""

from __future__ import annotations

import os
import random

# Domain ids 1..101 are valid for every DDS vendor with the default port mapping; 0 is the default
# domain a user's real robot is most likely on, so a random run never picks it.
_DOMAIN_RANGE = (1, 101)


def random_domain_id(rng: random.Random | None = None) -> int:
    """A random ROS_DOMAIN_ID in 1..101 (never 0, the default a real robot uses)."""
    rng = rng or random.SystemRandom()
    return rng.randint(*_DOMAIN_RANGE)


def apply_safe_ros_env(*, force_domain: bool = False) -> dict[str, str]:
    """Force loopback-only discovery and pick a random domain id unless one is set.

    ``ROS_AUTOMATIC_DISCOVERY_RANGE`` is always forced to ``LOCALHOST``. ``ROS_DOMAIN_ID`` is kept if
    the caller set one (a user running several nodes together must share it) unless
    ``force_domain``; otherwise a random one is chosen. Returns the settings now in effect.
    """
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.pop("ROS_STATIC_PEERS", None)
    if force_domain or not os.environ.get("ROS_DOMAIN_ID"):
        os.environ["ROS_DOMAIN_ID"] = str(random_domain_id())
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    return ros_env_summary()


def ros_env_summary() -> dict[str, str]:
    """The discovery-related environment in effect (for ``doctor`` and diagnostics)."""
    keys = ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "ROS_STATIC_PEERS",
            "RMW_IMPLEMENTATION", "ROS_LOCALHOST_ONLY")
    return {k: os.environ.get(k, "<unset>") for k in keys}
