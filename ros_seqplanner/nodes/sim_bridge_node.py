"""MuJoCo sim bridge: a gymnasium v5 env behind ROS 2 topics, standing in for a robot + ros2_control.

Publishes ``/joint_states`` (MuJoCo joint names, positions and velocities; efforts = actuator forces on
the actuated joints), ``/observation`` (Float64MultiArray, the env's observation vector), ``/reward``
(Float64, reward of the last step, published *before* the state of that step), ``/episode_events``
(String, JSON: ``{"event": "reset"|"episode_end", ...}``; ``episode_end`` carries return, length,
terminated, truncated), ``/episode_return`` (Float64, at episode end) and ``/clock`` (sim time).
Subscribes to the command topic (Float64MultiArray, one value per actuator).

Modes: ``lockstep`` steps the env once per received command (deterministic; sim time advances only
then) — until the first command of an episode it re-publishes the initial state every
``heartbeat_s`` so a late-joining planner cannot deadlock the loop; ``realtime`` steps at the env
period (``dt``, scaled by ``realtime_factor``) with zero-order hold of the last command, so planning
latency really costs. ``~/reset`` (std_srvs/Trigger) starts a new episode.
"""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, Float64MultiArray, String
from std_srvs.srv import Trigger

from ros_seqplanner.nodes.obs_layout import joint_table

STATE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
COMMAND_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
EVENT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)


def _make_env(env_id: str, seed: int) -> Any:
    from ros_seqplanner.sim.envs import make_env

    return make_env(env_id, seed=seed)


def _stamp(t: float) -> Time:
    sec = int(t)
    return Time(sec=sec, nanosec=round((t - sec) * 1e9) % 1_000_000_000)


class SimBridgeNode(Node):
    """A gymnasium MuJoCo env as a ROS 2 node (see the module docstring)."""

    def __init__(self, node_name: str = "sim_bridge", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        ro = {"read_only": True}
        self.declare_parameter("env", "halfcheetah", ParameterDescriptor(description="env name or id", **ro))
        self.declare_parameter("mode", "lockstep", ParameterDescriptor(
            description="lockstep (one step per command) | realtime (steps at the env period)", **ro))
        self.declare_parameter("seed", 0, ParameterDescriptor(
            description="reset seed of the first episode (+1 per episode)",
            integer_range=[IntegerRange(from_value=0, to_value=2**31 - 1, step=1)], **ro))
        self.declare_parameter("max_steps", 1000, ParameterDescriptor(
            description="episode length limit (also the env's own TimeLimit applies)",
            integer_range=[IntegerRange(from_value=1, to_value=1_000_000, step=1)], **ro))
        self.declare_parameter("realtime_factor", 1.0, ParameterDescriptor(
            description="realtime mode: sim seconds per wall second",
            floating_point_range=[FloatingPointRange(from_value=0.01, to_value=100.0, step=0.0)], **ro))
        self.declare_parameter("heartbeat_s", 0.5, ParameterDescriptor(
            description="lockstep: re-publish the initial state this often until the first command",
            floating_point_range=[FloatingPointRange(from_value=0.01, to_value=60.0, step=0.0)], **ro))
        self.declare_parameter("auto_reset", False, ParameterDescriptor(
            description="start a new episode right after one ends", **ro))
        self.declare_parameter("autostart", True, ParameterDescriptor(
            description="start the first episode once the command topic has a publisher", **ro))
        self.declare_parameter("command_topic", "/forward_command_controller/commands",
                               ParameterDescriptor(description="Float64MultiArray commands in", **ro))
        g = lambda n: self.get_parameter(n).value  # noqa: E731
        self.mode = g("mode")
        if self.mode not in ("lockstep", "realtime"):
            raise ValueError(f"mode must be lockstep or realtime, got {self.mode!r}")
        self.env_id, self.max_steps, self.seed = g("env"), g("max_steps"), g("seed")
        self.auto_reset, self.heartbeat_s = g("auto_reset"), g("heartbeat_s")
        self.env = _make_env(self.env_id, self.seed)
        self.model = self.env.unwrapped.model
        self.data = self.env.unwrapped.data
        self.dt = float(self.env.unwrapped.dt)
        self.joints = joint_table(self.model)
        self.act_dim = int(self.env.action_space.shape[0])
        self.action_low = self.env.action_space.low.astype(np.float64)
        self.action_high = self.env.action_space.high.astype(np.float64)

        self._lock = threading.RLock()
        self._group = MutuallyExclusiveCallbackGroup()  # every env access is serialised
        self.pub_js = self.create_publisher(JointState, "/joint_states", STATE_QOS)
        self.pub_obs = self.create_publisher(Float64MultiArray, "/observation", STATE_QOS)
        self.pub_reward = self.create_publisher(Float64, "/reward", EVENT_QOS)
        self.pub_events = self.create_publisher(String, "/episode_events", EVENT_QOS)
        self.pub_return = self.create_publisher(Float64, "/episode_return", EVENT_QOS)
        self.pub_clock = self.create_publisher(Clock, "/clock", 10)
        self.sub_cmd = self.create_subscription(Float64MultiArray, g("command_topic"), self._on_command,
                                                COMMAND_QOS, callback_group=self._group)
        self.srv_reset = self.create_service(Trigger, "~/reset", self._on_reset, callback_group=self._group)
        self.episode = -1
        self.t = 0.0
        self.running = False
        self.returns: list[float] = []
        self.rejected_commands = 0
        self._command = np.zeros(self.act_dim)
        self._got_command = False
        period = self.dt / g("realtime_factor") if self.mode == "realtime" else self.heartbeat_s
        self.timer = self.create_timer(period, self._on_timer, callback_group=self._group)
        self._autostart = g("autostart")

    # ------------------------------------------------------------------ episodes
    def start_episode(self) -> None:
        with self._lock:
            self.episode += 1
            obs, _ = self.env.reset(seed=self.seed + self.episode)
            self.obs = np.asarray(obs, np.float64)
            self.steps, self.ret = 0, 0.0  # sim time self.t keeps running across episodes
            self._command = np.zeros(self.act_dim)
            self._got_command = False
            self.running = True
            self._event({"event": "reset", "episode": self.episode, "seed": self.seed + self.episode})
            self._publish_state()

    def _end_episode(self, terminated: bool, truncated: bool) -> None:
        self.running = False
        self.returns.append(self.ret)
        self._event({"event": "episode_end", "episode": self.episode, "return": self.ret, "length": self.steps,
                     "terminated": terminated, "truncated": truncated})
        self.pub_return.publish(Float64(data=self.ret))
        self.get_logger().info(f"episode {self.episode}: return {self.ret:.1f} in {self.steps} steps")
        if self.auto_reset:
            self.start_episode()

    def step(self, action: np.ndarray) -> None:
        """One env step with ``action`` (clipped to the action space), then publish."""
        with self._lock:
            if not self.running:
                return
            # In the env's action dtype (float32), as `seqplanner evaluate` steps it: HalfCheetah's control cost is
            # computed from the action as given, so a float64 command gave rewards 1e-7 apart and a DT's
            # return-to-go, hence its episode, drifted from the in-process one.
            act = np.clip(action, self.action_low, self.action_high).astype(self.env.action_space.dtype)
            obs, reward, terminated, truncated, _ = self.env.step(act)
            self.obs = np.asarray(obs, np.float64)
            self.steps += 1
            self.t += self.dt
            self.ret += float(reward)
            truncated = bool(truncated) or self.steps >= self.max_steps
            self.pub_reward.publish(Float64(data=float(reward)))
            self._publish_state()
            if terminated or truncated:
                self._end_episode(bool(terminated), truncated)

    # ------------------------------------------------------------------ publishing
    def _event(self, payload: dict[str, Any]) -> None:
        self.pub_events.publish(String(data=json.dumps(payload)))

    def _publish_state(self) -> None:
        stamp = _stamp(self.t)
        self.pub_clock.publish(Clock(clock=stamp))
        js = JointState()
        js.header.stamp = stamp
        js.name = [n for n, _, _ in self.joints]
        js.position = [float(self.data.qpos[a]) for _, a, _ in self.joints]
        js.velocity = [float(self.data.qvel[d]) for _, _, d in self.joints]
        js.effort = [float(self.data.qfrc_actuator[d]) for _, _, d in self.joints]
        self.pub_obs.publish(Float64MultiArray(data=self.obs.tolist()))
        self.pub_js.publish(js)

    # ------------------------------------------------------------------ callbacks
    def _on_command(self, msg: Float64MultiArray) -> None:
        cmd = np.asarray(msg.data, np.float64)
        if cmd.shape != (self.act_dim,) or not np.all(np.isfinite(cmd)):
            self.rejected_commands += 1
            self.get_logger().warning(f"command rejected: expected {self.act_dim} finite values, got {cmd.tolist()}",
                                      throttle_duration_sec=2.0)
            return
        with self._lock:
            self._command, self._got_command = cmd, True
            if self.mode == "lockstep":
                self.step(cmd)

    def _on_timer(self) -> None:
        with self._lock:
            if self.episode < 0:
                if self._autostart and self.sub_cmd.get_publisher_count() > 0 and self.pub_js.get_subscription_count() \
                        + self.pub_obs.get_subscription_count() > 0:
                    self.start_episode()
                return
            if not self.running:
                return
            if self.mode == "realtime":
                self.step(self._command)  # zero-order hold
            elif not self._got_command:
                self._publish_state()  # lockstep heartbeat until the loop is closed

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.start_episode()
        response.success, response.message = True, f"episode {self.episode} started (seed {self.seed + self.episode})"
        return response


def main(args: list[str] | None = None) -> None:
    """``sim_bridge_node`` (ros2 run ros_seqplanner sim_bridge_node --ros-args -p env:=halfcheetah)."""
    from ros_seqplanner.rosenv import apply_safe_ros_env

    apply_safe_ros_env()
    with rclpy.init(args=args):
        node = SimBridgeNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            with contextlib.suppress(Exception):
                node.env.close()
            node.destroy_node()


if __name__ == "__main__":
    main()
