"""Shared helpers for tests/test_node_*.py: a deterministic test policy, a probe node, a spun graph.

The test policy is a real function of the observation (a fixed linear map, clipped), not a mock; it
records what it was given so a test can check the observation adapter end to end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64, Float64MultiArray, String

from ros_seqplanner.nodes.obs_layout import builtin_layout
from ros_seqplanner.nodes.planner_node import COMMAND_QOS, EVENT_QOS, STATE_QOS, PlannerNode
from ros_seqplanner.spinning import SpinThread

CHEETAH = builtin_layout("halfcheetah")
OBS_DIM, ACT_DIM = 17, 6


class LinearPolicy:
    """action = clip(W @ obs + b, low, high) with a fixed seeded W; optional per-call behaviour:
    ``delays`` {call_index: seconds}, ``raise_on`` {call_index}, ``nan_on`` {call_index}, ``scale``."""

    def __init__(self, obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM, scale: float = 0.3, horizon: int = 1,
                 delays: dict[int, float] | None = None, raise_on: set[int] | None = None,
                 nan_on: set[int] | None = None) -> None:
        rng = np.random.default_rng(0)
        self.W = rng.normal(size=(act_dim, obs_dim)) * scale
        self.b = np.linspace(-0.1, 0.1, act_dim)
        self.obs_dim, self.act_dim, self.horizon = obs_dim, act_dim, horizon
        self.action_low = -np.ones(act_dim, np.float32)
        self.action_high = np.ones(act_dim, np.float32)
        self.delays, self.raise_on, self.nan_on = delays or {}, raise_on or set(), nan_on or set()
        self.calls = 0
        self.observations: list[np.ndarray] = []
        self.rewards: list[float | None] = []
        self.resets: list[dict[str, Any]] = []
        self.last_plan: dict[str, np.ndarray] | None = None

    def raw(self, obs: np.ndarray) -> np.ndarray:
        return self.W @ np.asarray(obs, np.float64) + self.b

    def expected(self, obs: np.ndarray) -> np.ndarray:
        return np.clip(self.raw(obs), self.action_low, self.action_high)

    def reset(self, **options: Any) -> None:
        self.resets.append(options)

    def act(self, observation: np.ndarray, reward: float | None) -> np.ndarray:
        i = self.calls
        self.calls += 1
        self.observations.append(np.array(observation))
        self.rewards.append(reward)
        if i in self.delays:
            time.sleep(self.delays[i])
        if i in self.raise_on:
            raise RuntimeError(f"planner exploded on call {i}")
        a = self.expected(observation)
        if i in self.nan_on:
            a = a.copy()
            a[0] = np.nan
        # A "plan": this action, then the same action scaled down (predicted continuation).
        acts = np.stack([a * 0.5**k for k in range(self.horizon)])
        self.last_plan = {"actions": acts, "observations": np.tile(observation, (self.horizon, 1))}
        return a.astype(np.float32)


class ContextPolicy(LinearPolicy):
    """A LinearPolicy that also takes the node's context catch-up: records ``observe`` and
    ``correct_last_action`` calls in ``events`` (in call order, interleaved with ``act``)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.events: list[tuple] = []

    def act(self, observation: np.ndarray, reward: float | None) -> np.ndarray:
        self.events.append(("act", np.array(observation), reward))
        return super().act(observation, reward)

    def observe(self, observation: np.ndarray, reward: float | None, action: np.ndarray) -> None:
        self.events.append(("observe", np.array(observation), reward, np.array(action)))

    def correct_last_action(self, action: np.ndarray) -> None:
        self.events.append(("correct", np.array(action)))


def factory_for(policy: Any) -> Callable[..., Any]:
    def make(checkpoint: str, device: str, **options: Any) -> Any:
        policy.options = options
        return policy
    return make


PROBE_COMMAND_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=COMMAND_QOS.reliability)


class Probe(Node):
    """Publishes state / reward / e-stop / events and records commands, plans and diagnostics."""

    def __init__(self, context: Any, command_topic: str = "/forward_command_controller/commands") -> None:
        super().__init__("probe", context=context)
        self.pub_js = self.create_publisher(JointState, "/joint_states", STATE_QOS)
        self.pub_arr = self.create_publisher(Float64MultiArray, "/observation", STATE_QOS)
        self.pub_reward = self.create_publisher(Float64, "/reward", EVENT_QOS)
        self.pub_estop = self.create_publisher(Bool, "/estop", EVENT_QOS)
        self.pub_event = self.create_publisher(String, "/episode_events", EVENT_QOS)
        self.commands: list[np.ndarray] = []
        self.command_times: list[float] = []
        self.diagnostics: list[Any] = []
        self.plans: list[Float64MultiArray] = []
        self._lock = threading.Lock()
        # The probe records every command: a reader cache of COMMAND_QOS's depth 1 lets a command that arrives
        # before the probe's executor took the previous one overwrite it (seen in lockstep, where the next
        # command follows within a millisecond), so only the depth differs from the controllers' profile.
        self.create_subscription(Float64MultiArray, command_topic, self._on_cmd, PROBE_COMMAND_QOS)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.create_subscription(Float64MultiArray, "/seqplanner/plan", self.plans.append, 10)

    def _on_cmd(self, msg: Float64MultiArray) -> None:
        with self._lock:
            self.commands.append(np.array(msg.data))
            self.command_times.append(time.perf_counter())

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for s in msg.status:
            if s.name.startswith("seqplanner"):
                self.diagnostics.append({"level": int.from_bytes(s.level, "little") if isinstance(s.level, bytes)
                                         else int(s.level), "message": s.message,
                                         **{kv.key: kv.value for kv in s.values}})

    def n_commands(self) -> int:
        with self._lock:
            return len(self.commands)

    def joint_state(self, obs: np.ndarray, order: list[str] | None = None, stamp: tuple[int, int] = (0, 0),
                    drop: str | None = None) -> JointState:
        """A JointState whose mapping through the cheetah layout is ``obs`` (rootx position = 7.0)."""
        pos = {"rootx": 7.0}
        vel = {}
        for k, (kind, joint) in enumerate(CHEETAH.entries):
            (pos if kind == "pos" else vel)[joint] = float(obs[k])
        names = [n for n in (order or list(CHEETAH.joints)) if n != drop]
        msg = JointState(name=names, position=[pos[n] for n in names], velocity=[vel[n] for n in names])
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
        return msg


def wait_for(pred: Callable[[], bool], timeout: float = 5.0, period: float = 0.005) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(period)
    return bool(pred())


class Graph:
    """Nodes each spun by their own executor in a daemon thread; ``close`` stops everything."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.spinners: list[SpinThread] = []
        self.nodes: list[Node] = []

    def spin(self, node: Node, multi: bool = False) -> Node:
        ex = MultiThreadedExecutor(num_threads=4, context=self.context) if multi \
            else SingleThreadedExecutor(context=self.context)
        ex.add_node(node)
        self.spinners.append(SpinThread(ex).start())
        self.nodes.append(node)
        return node

    def close(self) -> None:
        for spinner in self.spinners:
            spinner.stop(timeout_s=2.0)
        for n in self.nodes:  # tear planners down once nothing spins them
            if isinstance(n, PlannerNode) and n.current_state_label() in ("active", "inactive"):
                n.trigger_shutdown()
        for n in self.nodes:
            n.destroy_node()


def make_planner(context: Any, policy: Any, **params: Any) -> PlannerNode:
    overrides = [Parameter("checkpoint", value="test-policy"), Parameter("planner", value="auto"),
                 *(Parameter(k, value=v) for k, v in params.items())]
    return PlannerNode(context=context, policy_factory=factory_for(policy), parameter_overrides=overrides)


def connected(probe: Probe, planner: PlannerNode, array: bool = False) -> bool:
    pub = probe.pub_arr if array else probe.pub_js
    return wait_for(lambda: pub.get_subscription_count() > 0 and planner._cmd_pub is not None
                    and planner._cmd_pub.get_subscription_count() > 0, timeout=5.0)
