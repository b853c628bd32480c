"""The planner node: a sequence-model Policy behind a ROS 2 lifecycle node with a safety envelope.

Data path (see docs / ARCHITECTURE.md)::

    state (JointState | Float64MultiArray, best effort, depth 1) ─► latest-state slot ─► planning thread
        ─► Policy.act() ─► plan swapped in atomically ─► safety filter ─► commands (Float64MultiArray)

Threading: subscription callbacks only validate and store the latest message; planning runs in its own
thread (woken by an event) so a slow plan never blocks state intake. A plan's first action is
published the moment the plan is ready. With ``publish_on: tick`` (robots, realtime sim) a command
timer at the control rate also keeps commanding between plans: a tick with no command since the
previous tick publishes the plan's next action, so a planner slower than the control period is
followed open loop, and a plan ready k periods after its state skips its first k actions; with
``new_state`` (lockstep sim: one command per state) the timer only handles stale state and deadline
misses. With ``new_state`` and a cheap policy (recent plans <= ``inline_plan_max_ms``) the state
callback plans itself instead of waking the planning thread: the thread hand-off (wake-up + GIL
hand-over) was most of the node's own latency. ``_plan_lock`` keeps it to one plan at a time.
Spin the node with a MultiThreadedExecutor (the callback groups then run in parallel). Every command
goes through :class:`~ros_seqplanner.policies.safety.SafetyFilter` whose final guard makes it finite and
within bounds. One lock (``_cmd_lock``) orders all publishes.

Lifecycle (style of ros2/demos lifecycle_py): entities are ``Optional`` and created in on_configure.
"""

from __future__ import annotations

import array
import collections
import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.exceptions import InvalidHandle, ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64, Float64MultiArray, MultiArrayDimension, String

from ros_seqplanner.nodes.obs_layout import (
    JointGather,
    LayoutError,
    ObservationLayout,
    actuated_joints,
    builtin_layout,
    parse_name_map,
)
from ros_seqplanner.nodes.params import PLANNER_PARAMS, ParamSpec, check_value
from ros_seqplanner.policies.base import catch_up, plan_from_policy
from ros_seqplanner.policies.safety import SafetyConfig, SafetyFilter, validate_state

# state: latest wins, never queued; commands: reliable, depth 1 (forward_command_controller's default
# subscription is reliable); reward / events / e-stop: reliable, small queue (each one matters).
STATE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                       durability=DurabilityPolicy.VOLATILE)
COMMAND_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
EVENT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)

# CPython's switch interval: how long a thread waiting for the GIL waits before forcing the holder to drop
# it. The default 5 ms would delay the planning thread's wake-up (and e-stop / timer callbacks behind a
# planning thread running Python) by up to 5 ms. Too short hurts as well: the state callback's path holds
# the GIL ~0.2-0.4 ms (executor take + callback + publish) while the executor's own thread wants it to
# rebuild its wait set; at 0.5 ms that path was forced to hand the GIL over mid-way often enough to set the
# node-overhead p99 (0.6-2.2 ms vs 0.3-0.4 ms at 1 ms, `seqplanner bench node`, see BENCHMARKS.md).
GIL_SWITCH_INTERVAL_S = 0.001

# Entities created/destroyed by lifecycle transitions get no QoS event handlers: rclpy adds those to
# the executor's wait set as waitables without the InvalidHandle guard it has for subscriptions and
# timers, so destroying one while an executor thread is building its wait set (on_cleanup called
# while spinning) could kill that thread. Cost: no "incompatible QoS" warnings for these entities.
NO_PUB_EVENTS = PublisherEventCallbacks(use_default_callbacks=False)
NO_SUB_EVENTS = SubscriptionEventCallbacks(use_default_callbacks=False)

PolicyFactory = Callable[..., Any]  # (checkpoint, device, **options) -> Policy


def default_policy_factory(checkpoint: str, device: str, **options: Any) -> Any:
    """``policies.factory.load_policy`` (imported lazily: it pulls in torch)."""
    from ros_seqplanner.policies.factory import load_policy

    return load_policy(checkpoint, device, **options)


def checkpoint_kind(checkpoint: str) -> str | None:
    """The 'kind' in a checkpoint's JSON, or None if it cannot be read (the loader then says why)."""
    from ros_seqplanner.nets.checkpoint import checkpoint_paths

    try:
        return json.loads(checkpoint_paths(checkpoint)[1].read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


_TRACE_LEN = 64  # recent states kept for the context catch-up (a plan slower than 64 periods loses the rest)


@dataclass
class Plan:
    """One planner output: ``actions`` (H, A) starting with the action for state ``seq`` (received at
    ``t_state``, perf_counter), one per control period; optional predicted ``observations`` (H, O);
    ``index`` = next action a tick would publish."""

    actions: np.ndarray
    observations: np.ndarray | None
    seq: int
    t_state: float
    index: int = 0


class LatencyStats:
    """Ring buffer of the recent latencies (ms) with percentiles. One writer at a time (the planning
    path); readers may run concurrently. A preallocated array, so ``add`` allocates nothing and the
    diagnostics' percentiles hold the GIL for tens of microseconds, not hundreds."""

    def __init__(self, maxlen: int = 10000) -> None:
        self._buf = np.zeros(maxlen, dtype=np.float64)
        self._n = 0  # samples ever added

    def add(self, ms: float) -> None:
        self._buf[self._n % self._buf.size] = ms
        self._n += 1

    def values(self) -> np.ndarray:
        """The retained samples (unordered once the ring has wrapped)."""
        return self._buf[:min(self._n, self._buf.size)]

    @property
    def samples(self) -> list[float]:
        """The retained samples, oldest first."""
        n, size = self._n, self._buf.size
        if n <= size:
            return self._buf[:n].tolist()
        i = n % size
        return np.concatenate([self._buf[i:], self._buf[:i]]).tolist()

    def percentile(self, q: float) -> float:
        v = self.values()
        return float(np.percentile(v, q)) if v.size else float("nan")


class PlannerNode(LifecycleNode):
    """Lifecycle node running a Policy (TT / DT / BC) in closed loop. See module docstring."""

    def __init__(self, node_name: str = "seqplanner", *, policy_factory: PolicyFactory | None = None,
                 **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._policy_factory = policy_factory or default_policy_factory
        self.add_on_set_parameters_callback(self._on_set_parameters)
        for spec in PLANNER_PARAMS:
            self._declare(spec)
        # Parameter values cached for the hot paths (get_parameter costs ~10 us); kept current by the
        # post-set callback, which only runs for changes every check accepted.
        self.cfg: dict[str, Any] = {s.name: self._read(s.name) for s in PLANNER_PARAMS}
        self.add_post_set_parameters_callback(self._after_set_parameters)
        self.last_command: np.ndarray | None = None
        # Entities: created in on_configure, destroyed in on_cleanup.
        self.policy: Any | None = None
        self._safety: SafetyFilter | None = None
        self._layout: ObservationLayout | None = None
        self._name_map: dict[str, str] = {}
        self._cmd_pub: Any | None = None
        self._plan_pub: Any | None = None
        self._diag_pub: Any | None = None
        self._subs: list[Any] = []
        self._reward_sub: Any | None = None
        self._timers: list[Any] = []
        self._planning_thread: threading.Thread | None = None
        self._cmd_msg = Float64MultiArray()  # reused for every command (publishes are serialised by _cmd_lock)
        # JointState adapter cache: the gather for the last incoming joint-name order (state callback only).
        self._gather: JointGather | None = None
        self._gather_names: list[str] | None = None
        # Policy.act times of the last plans (written under _plan_lock) and their max, read lock-free by
        # the state callback to decide whether to plan inline.
        self._recent_act_ms: collections.deque[float] = collections.deque(maxlen=16)
        self._slowest_recent_ms = float("inf")
        # Shared state (guarded by _state_lock / _cmd_lock).
        self._state_lock = threading.Lock()
        self._cmd_lock = threading.RLock()
        self._reward_cv = threading.Condition(self._state_lock)  # signalled by each accepted reward
        self._plan_lock = threading.Lock()  # one Policy.act at a time: planning thread or inline in the callback
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._active = False
        self._activated_t = 0.0
        self._estop = False
        self._reset_state()
        self.plan_latency = LatencyStats()      # Policy.act wall time per fresh plan (ms)
        self.overhead = LatencyStats()          # state received -> command published, minus planning (ms)
        self.reward_wait = LatencyStats()       # time spent waiting for the reward paired with a state (ms)

    # ------------------------------------------------------------------ parameters
    def _declare(self, spec: ParamSpec) -> None:
        """Declare one parameter with a descriptor: description, read-only flag, range, choices."""
        desc = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
        if spec.choices is not None:
            desc.additional_constraints = f"one of {list(spec.choices)}"
        lo_hi = spec.range
        if lo_hi is not None and isinstance(spec.default, float):
            desc.floating_point_range = [FloatingPointRange(from_value=float(lo_hi[0]), to_value=float(lo_hi[1]))]
        elif lo_hi is not None and isinstance(spec.default, int) and not isinstance(spec.default, bool):
            desc.integer_range = [IntegerRange(from_value=int(lo_hi[0]), to_value=int(lo_hi[1]), step=1)]
        array_types = {"string_array": Parameter.Type.STRING_ARRAY, "double_array": Parameter.Type.DOUBLE_ARRAY}
        default = array_types.get(spec.default, spec.default) if isinstance(spec.default, str) else spec.default
        self.declare_parameter(spec.name, default, desc)

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Reject values outside a parameter's choices or range (rclpy checks ranges as well)."""
        for p in params:
            reason = check_value(p.name, p.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, params: list[Parameter]) -> None:
        for prm in params:
            self.cfg[prm.name] = [] if prm.value is None else prm.value
        if self._safety is not None and any(prm.name in ("max_delta_per_tick", "fallback") for prm in params):
            with self._cmd_lock:  # the envelope changes between two commands, never during one
                last = self._safety.last
                self._safety = SafetyFilter(self._safety_config())
                self._safety.last = last

    def _read(self, name: str) -> Any:
        try:
            v = self.get_parameter(name).value
        except ParameterUninitializedException:  # an array parameter declared by type, not set
            return []
        return [] if v is None else v

    def p(self, name: str) -> Any:
        """Current value of a parameter (cached)."""
        return self.cfg[name]

    # ------------------------------------------------------------------ per-activation state
    def _reset_state(self) -> None:
        self._obs: np.ndarray | None = None
        self._obs_seq = 0           # increments per accepted state
        self._obs_t = 0.0           # perf_counter when the latest accepted state arrived
        self._last_state_t: float | None = None
        self._planned_seq = 0       # last state seq handed to the policy
        self._answered_seq = 0      # last state seq a command was published for
        self._plan: Plan | None = None
        self._fresh = False         # _plan not yet published (tick mode)
        self._commands_at_tick = 0  # counters["commands"] at the end of the last tick (tick mode)
        self._reward: float | None = None
        self._reward_count = 0
        self._reward_count_at_plan = 0
        self._episode_steps = 0     # plans since the last policy reset
        self._pending_reset = False
        self._goal: np.ndarray | None = None
        self._goal_changed = False
        self._stale = False
        self._last_stamp: tuple = ()
        # [seq, observation, latest reward at arrival, command in effect when the next state arrived] of the
        # recent accepted states: what the robot did in the periods the policy was not asked about.
        self._trace: collections.deque[list[Any]] = collections.deque(maxlen=_TRACE_LEN)
        self.counters = collections.Counter()
        self.last_error = ""
        self.last_reject = ""

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the model (load_policy) and warm it up with one dummy plan; build the observation
        adapter and the safety envelope; create publishers, subscriptions, timers and the planning
        thread. Fails (stays unconfigured) if the checkpoint is missing/unreadable, of another kind
        than ``planner``, its observation/action sizes do not match the layout/joints/bounds, or the
        warm-up plan raises."""
        try:
            self._configure()
        except Exception as e:
            self.get_logger().error(f"configure failed: {e}")
            self._destroy_entities()
            self.policy = None
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f"configured: {self.p('planner')} model {self.p('checkpoint')!r} on {self.p('device')}")
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        ckpt, planner = self.p("checkpoint"), self.p("planner")
        if not ckpt:
            raise ValueError("parameter 'checkpoint' is empty; set it (e.g. -p checkpoint:=models/<name>)")
        kind = checkpoint_kind(ckpt)
        if planner != "auto" and kind is not None and kind != planner:
            raise ValueError(f"checkpoint {ckpt!r} is a {kind!r} model but planner={planner!r}")
        keys = ("preset", "horizon", "beam_width", "n_expand", "plan_freq", "mode", "obs_bounds", "time_budget_ms")
        options = {k: self.p(k) for k in keys if self.p(k) not in ("", 0)}
        if self.p("torch_threads"):
            import torch

            torch.set_num_threads(int(self.p("torch_threads")))
        self.policy = self._policy_factory(ckpt, self.p("device"), **options)
        self._layout = self._make_layout()
        if self._layout.dim != self.policy.obs_dim and self.p("state_type") == "joint_state":
            raise LayoutError(f"observation layout has {self._layout.dim} entries, the model observes "
                              f"{self.policy.obs_dim}; set observation_layout / env")
        self._name_map = parse_name_map(self.p("joint_name_map"))
        names = list(self.p("command_joint_names")) or list(actuated_joints(self.p("env")))
        if len(names) != self.policy.act_dim:
            raise ValueError(f"{len(names)} command joints {names} but the model has {self.policy.act_dim} actions")
        self.command_joint_names = names
        self._safety = SafetyFilter(self._safety_config())
        self._gather, self._gather_names = None, None
        self._recent_act_ms.clear()
        self._slowest_recent_ms = float("inf")  # unknown cost: the planning thread until a plan was timed
        if self.p("warmup"):
            self.policy.reset(**self._episode_options())
            t0 = time.perf_counter()
            self.policy.act(np.zeros(self.policy.obs_dim, np.float32), None)
            self._note_act_time((time.perf_counter() - t0) * 1000.0)
        self._create_entities()

    def _make_layout(self) -> ObservationLayout:
        entries = self.p("observation_layout")
        clip = self.p("velocity_clip")
        if entries:
            return ObservationLayout.parse(entries, clip)
        layout = builtin_layout(self.p("env"))
        return ObservationLayout(layout.entries, clip) if clip > 0 else layout

    def _safety_config(self) -> SafetyConfig:
        lo = np.asarray(self.policy.action_low, np.float64).reshape(-1)
        hi = np.asarray(self.policy.action_high, np.float64).reshape(-1)
        for name, bound, pick in (("action_low", lo, np.maximum), ("action_high", hi, np.minimum)):
            user = np.asarray(self.p(name), np.float64)
            if user.size:
                if user.shape != bound.shape:
                    raise ValueError(f"{name} has {user.size} values, the model has {bound.size} actions")
                bound[:] = pick(bound, user)  # never wider than the policy's own bounds
        return SafetyConfig(lo, hi, max_delta=self.p("max_delta_per_tick"), fallback=self.p("fallback"))

    def _create_entities(self) -> None:
        groups = {r: MutuallyExclusiveCallbackGroup() for r in ("state", "inputs", "estop", "timer", "diag")}
        self._cmd_pub = self.create_lifecycle_publisher(Float64MultiArray, self.p("command_topic"), COMMAND_QOS,
                                                        event_callbacks=NO_PUB_EVENTS)
        self._plan_pub = self.create_lifecycle_publisher(Float64MultiArray, self.p("plan_topic"), 1,
                                                         event_callbacks=NO_PUB_EVENTS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10, event_callbacks=NO_PUB_EVENTS)
        state_cb = self._on_joint_state if self.p("state_type") == "joint_state" else self._on_array_state
        state_type = JointState if self.p("state_type") == "joint_state" else Float64MultiArray
        # Creation order is the executor's dispatch order when several are ready at once: e-stop first, and
        # the reward before the state it pairs with (lockstep publishes it first), so that the state's plan
        # rarely has to wait for it.
        subs = ((Bool, "estop_topic", self._on_estop, EVENT_QOS, "estop"),
                (Float64, "reward_topic", self._on_reward, EVENT_QOS, "inputs"),
                (Float64MultiArray, "goal_topic", self._on_goal, EVENT_QOS, "inputs"),
                (String, "episode_events_topic", self._on_event, EVENT_QOS, "inputs"),
                (state_type, "state_topic", state_cb, STATE_QOS, "state"))
        self._subs = [self.create_subscription(t, self.p(topic), cb, qos, callback_group=groups[g],
                                               event_callbacks=NO_SUB_EVENTS) for t, topic, cb, qos, g in subs]
        self._reward_sub = self._subs[1]
        self._timers = [
            self.create_timer(1.0 / self.p("control_rate_hz"), self._on_tick, callback_group=groups["timer"]),
            self.create_timer(self.p("diagnostics_period_s"), self.publish_diagnostics, callback_group=groups["diag"]),
        ]
        self._stop.clear()
        self._planning_thread = threading.Thread(target=self._planning_loop, name="seqplanner-planning", daemon=True)
        self._planning_thread.start()

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Reset the policy for a new episode and start commanding. Fails while the e-stop is engaged
        (publish ``false`` on the e-stop topic first)."""
        if self._estop:
            self.get_logger().error("cannot activate: e-stop engaged (publish false on the e-stop topic)")
            return TransitionCallbackReturn.FAILURE
        with self._cmd_lock, self._state_lock:
            self._reset_state()
            self._safety.reset()
            self.policy.reset(**self._episode_options())
        ret = super().on_activate(state)
        self._activated_t = time.perf_counter()
        self._active = True
        self.get_logger().info("active: commanding on " + self.p("command_topic"))
        return ret

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Publish one safe command, then stop commanding. Always succeeds."""
        with self._cmd_lock:
            if self._active:
                self._publish(self._safety.safe(), "deactivate")
            self._active = False
        self.get_logger().info("deactivated; counters: " + json.dumps(dict(sorted(self.counters.items()))))
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop the planning thread, destroy entities and free the model. Always succeeds."""
        self._teardown()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Publish a safe command if active, then tear everything down. Always succeeds."""
        with self._cmd_lock:
            if self._active and self._safety is not None:
                self._publish(self._safety.safe(), "shutdown")
                self.get_logger().info("shutting down; counters: " + json.dumps(dict(sorted(self.counters.items()))))
            self._active = False
        self._teardown()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Tear down and return to unconfigured."""
        self._active = False
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _teardown(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._planning_thread is not None:
            self._planning_thread.join(timeout=10.0)
            self._planning_thread = None
        # A plan running inline in the state callback finishes before the entities and the policy go.
        locked = self._plan_lock.acquire(timeout=10.0)
        try:
            self._destroy_entities()
            policy, self.policy = self.policy, None
        finally:
            if locked:
                self._plan_lock.release()
        if policy is not None and str(self.p("device")).startswith("cuda"):
            del policy
            with contextlib.suppress(Exception):
                import torch

                torch.cuda.empty_cache()

    def _destroy_entities(self) -> None:
        for t in self._timers:
            self.destroy_timer(t)
        for s in self._subs:
            self.destroy_subscription(s)
        self._timers, self._subs, self._reward_sub = [], [], None
        with self._cmd_lock:  # a command being published on another thread (a tick already running) goes first
            for pub in (self._cmd_pub, self._plan_pub):
                if pub is not None:
                    self.destroy_lifecycle_publisher(pub)
            if self._diag_pub is not None:
                self.destroy_publisher(self._diag_pub)
            self._cmd_pub = self._plan_pub = self._diag_pub = None

    def _episode_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if self.p("target_return") != 0.0:
            opts["target_return"] = float(self.p("target_return"))
        if self._goal is not None:
            opts["goal"] = self._goal.copy()
        return opts

    # ------------------------------------------------------------------ callbacks: store only
    def _store_state(self, obs: np.ndarray | None, reason: str, t: float) -> None:
        """Store an accepted state and hand it to planning (see :meth:`_hand_off`)."""
        if obs is None:
            self.counters["rejected_states"] += 1
            self.last_reject = reason
            self.get_logger().warning(f"state rejected: {reason}", throttle_duration_sec=2.0)
            return
        with self._state_lock:
            self._obs, self._obs_t, self._last_state_t = obs, t, t
            self._obs_seq += 1
            if self._trace:
                self._trace[-1][3] = self.last_command  # the robot left the previous state under this command
            self._trace.append([self._obs_seq, obs, self._reward, None])
        self._hand_off()

    def _plan_inline(self) -> bool:
        """Plan in the state callback itself (no thread hand-off)? Only with ``publish_on: new_state``
        and while the slowest of the recent plans took at most ``inline_plan_max_ms``: a cheap policy's
        command then goes out without waking the planning thread, whose wake-up and GIL hand-over cost
        more than the rest of the path (~0.3 ms p50, ~0.7 ms p99 on the dev box). A slow policy keeps
        planning in its thread, so state intake (heart-beats, staleness, rejections) never waits on it."""
        limit = self.p("inline_plan_max_ms")
        if limit <= 0 or self.p("publish_on") != "new_state" or self._slowest_recent_ms > limit:
            return False
        # The reward that pairs with the state arrives through another callback: waiting for it inside
        # the state callback needs an executor that runs callbacks in parallel.
        return isinstance(self.executor, MultiThreadedExecutor)

    def _hand_off(self) -> None:
        """Plan the new state inline when cheap and no plan is running, else wake the planning thread."""
        if self._plan_inline() and self._plan_lock.acquire(blocking=False):
            try:
                if self._should_plan():
                    self._plan_once()
            finally:
                self._plan_lock.release()
            return
        self._wake.set()

    def _note_act_time(self, ms: float) -> None:
        self._recent_act_ms.append(ms)
        self._slowest_recent_ms = max(self._recent_act_ms)

    def _should_plan(self) -> bool:
        with self._state_lock:
            return self._active and self._obs is not None and self._obs_seq != self._planned_seq

    def _on_joint_state(self, msg: JointState) -> None:
        t = time.perf_counter()
        if self._layout is None:
            return
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec, tuple(msg.position))
        if stamp == self._last_stamp:
            # Same stamp and positions: a repeat of the latest state (the lockstep bridge's heartbeat):
            # the source is alive, but there is nothing new to plan.
            self.counters["duplicate_states"] += 1
            with self._state_lock:
                self._last_state_t = t
            return
        self._last_stamp = stamp
        # Fast path: the name -> index mapping is built once per incoming joint order (robots send a fixed
        # order) and applied as numpy gathers. Its result has the layout's size, which on_configure
        # matched to the policy's obs_dim, and is checked finite: validate_state's checks, already done.
        names = msg.name
        if self._gather is None or names != self._gather_names:
            gather, reason = self._layout.gather(names, self._name_map)
            if gather is None:
                self._store_state(None, reason, t)
                return
            self._gather, self._gather_names = gather, list(names)
        obs, reason = self._gather.apply(msg.position, msg.velocity)
        self._store_state(obs, reason, t)

    def _on_array_state(self, msg: Float64MultiArray) -> None:
        t = time.perf_counter()
        if self.policy is None:
            return
        obs, reason = validate_state(msg.data, self.policy.obs_dim)
        self._store_state(obs, reason, t)

    def _on_reward(self, msg: Float64) -> None:
        if not np.isfinite(msg.data):
            self.counters["rejected_rewards"] += 1
            return
        with self._reward_cv:
            self._reward = float(msg.data)
            self._reward_count += 1
            self._reward_cv.notify_all()

    def _on_goal(self, msg: Float64MultiArray) -> None:
        goal = np.asarray(msg.data, np.float32)
        if self.policy is None or goal.shape != (self.policy.obs_dim,) or not np.all(np.isfinite(goal)):
            self.counters["rejected_goals"] += 1
            return
        with self._state_lock:
            self._goal, self._goal_changed, self._pending_reset = goal, True, True  # applied before the next plan

    def _on_event(self, msg: String) -> None:
        try:
            event = json.loads(msg.data).get("event")
        except (ValueError, AttributeError):
            event = msg.data.strip()
        if event == "reset":
            with self._state_lock:
                self._pending_reset = True  # applied by the planning thread before its next plan

    def _on_estop(self, msg: Bool) -> None:
        self._estop = bool(msg.data)
        if not self._estop:
            return
        with self._cmd_lock:
            if self._active:
                self._publish(self._safety.safe(), "estop")
        self.counters["estops"] += 1
        if self._state_machine.current_state[1] == "active":
            self.get_logger().error("e-stop: safe command published, deactivating")
            self.trigger_deactivate()

    # ------------------------------------------------------------------ planning thread
    def _planning_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=0.1)
            self._wake.clear()
            if self._stop.is_set():
                break
            with self._plan_lock:
                if self._should_plan():
                    self._plan_once()

    def _wait_for_reward(self) -> float | None:
        """The reward paired with the newest state: None on an episode's first step; otherwise wait up
        to reward_wait_ms for a reward newer than the last plan's (lockstep publishes it just before
        the state, on another topic, so arrival order is not guaranteed). No wait when the reward topic
        has no publisher (a robot without a reward signal; the policy then gets None or the last one)."""
        if self._episode_steps == 0:
            return None
        sub = self._reward_sub
        if sub is not None and sub.get_publisher_count() == 0:  # nobody publishes rewards: don't wait
            return self._reward
        deadline = time.perf_counter() + self.p("reward_wait_ms") / 1000.0
        with self._reward_cv:  # woken by _on_reward the moment the reward is stored (no polling delay)
            while self._reward_count <= self._reward_count_at_plan:
                left = deadline - time.perf_counter()
                if left <= 0:
                    self.counters["missing_rewards"] += 1
                    return 0.0 if self._reward is None else self._reward
                self._reward_cv.wait(left)
            self._reward_count_at_plan = self._reward_count
            return self._reward

    def _plan_once(self) -> None:
        with self._state_lock:
            reset_opts = None
            if self._pending_reset:
                self._pending_reset = False
                # The bridge sends 'reset' just before an episode's first state, on another topic, so
                # it may be handled after that state was planned; a policy that has planned at most
                # one step since its last reset is already fresh and is not reset again.
                if self._episode_steps > 1 or self._goal_changed:
                    reset_opts = self._episode_options()
                    self._episode_steps, self._goal_changed = 0, False
                    self._reward, self._reward_count_at_plan = None, self._reward_count
        if reset_opts is not None:
            self.policy.reset(**reset_opts)
            self.counters["policy_resets"] += 1
        t_wait = time.perf_counter()
        reward = self._wait_for_reward()
        wait_ms = (time.perf_counter() - t_wait) * 1000.0
        self.reward_wait.add(wait_ms)
        with self._state_lock:
            obs, seq, t_state = self._obs, self._obs_seq, self._obs_t
            planned = self._planned_seq
            since = [e for e in self._trace if planned <= e[0] < seq and e[3] is not None]
            self._planned_seq = seq
        if self._episode_steps > 0 and reset_opts is None and self.p("catch_up_context"):
            self._catch_up(since, planned)
        t0 = time.perf_counter()
        try:
            action = np.asarray(self.policy.act(obs, reward), dtype=np.float64).reshape(-1)
            if action.size != self._safety.config.act_dim or not np.all(np.isfinite(action)):
                raise ValueError(f"policy returned an invalid action {action.tolist()}")
            plan = Plan(*plan_from_policy(self.policy, action), seq=seq, t_state=t_state)
        except Exception as e:
            self.counters["planner_errors"] += 1
            self.last_error = f"{type(e).__name__}: {e}"
            self.get_logger().error(f"planner failed: {self.last_error}", throttle_duration_sec=2.0)
            with self._cmd_lock:
                self._plan, self._fresh = None, False
                if self._active:
                    self._answered_seq = seq
                    self._publish(self._safety.safe(), "planner_error")
            return
        act_ms = (time.perf_counter() - t0) * 1000.0
        if getattr(getattr(self.policy, "last_plan", None), "violations", 0):
            self.counters["steps_plan_out_of_bounds"] += 1  # TT obs_bounds: no plan in the beam stayed inside
        planned_h = (getattr(getattr(self.policy, "timings", None), "extra", None) or {}).get("horizon_planned")
        if planned_h is not None and planned_h < getattr(getattr(self.policy, "config", None), "horizon", 0):
            self.counters["plans_cut"] += 1  # TT time_budget_ms: a shorter horizon than configured
        self.plan_latency.add(act_ms)
        self._note_act_time(act_ms)
        self._episode_steps += 1
        self.last_error = ""
        with self._cmd_lock:
            self._plan, self._fresh = plan, True  # atomic swap under the publish lock
            # Both modes publish a plan the moment it is ready. (Until session 14 tick mode left it for
            # the next tick: the two timers are not in phase, so a 38 ms plan in a 50 ms period often
            # reached a realtime sim one period late and halved a halfcheetah TT's return.)
            # Tick mode also publishes a plan whose state a deadline fallback already answered: it is
            # newer than the plan being followed (new_state: one command per state, a late plan is dropped).
            if self._active and (self._answered_seq < seq or self.p("publish_on") == "tick"):
                self._publish_fresh(t_state, act_ms + wait_ms)
        self._publish_plan(plan)

    def _catch_up(self, steps: list[list[Any]], planned: int) -> None:
        """Tell the policy what happened since its last plan, made for state ``planned``. ``steps``: trace
        entries from that state up to (not including) the state about to be planned. The command executed
        at ``planned`` replaces the plan's own first action (they differ when the plan was late and the
        robot still followed the previous one); every later entry is a state skipped while the policy
        planned, passed with its reward and executed command. Policies without ``observe`` /
        ``correct_last_action`` (BC, the behaviour policy: memoryless) are not told."""
        if not steps:
            return
        executed = next((action for e_seq, _, _, action in steps if e_seq == planned), None)
        skipped = [(obs, reward, action) for e_seq, obs, reward, action in steps if e_seq != planned]
        try:
            self.counters["observed_states"] += catch_up(self.policy, executed, skipped)
        except Exception as e:  # the context misses a step; planning goes on
            self.counters["catch_up_errors"] += 1
            self.get_logger().warning(f"context catch-up failed: {type(e).__name__}: {e}",
                                      throttle_duration_sec=2.0)

    # ------------------------------------------------------------------ commanding
    def _publish_fresh(self, t_state: float, excluded_ms: float) -> None:
        """Publish the fresh plan's first action (caller holds _cmd_lock). The node's own overhead is
        state received -> command published minus ``excluded_ms`` (planning + waiting for the reward)."""
        self._start_plan(self._plan)
        self.overhead.add((time.perf_counter() - t_state) * 1000.0 - excluded_ms)

    def _start_plan(self, plan: Plan) -> None:
        """Publish a new plan's first action (caller holds _cmd_lock). In tick mode the plan's actions are
        for consecutive control periods from its state: a plan ready k >= 1 periods after its state (a
        planner slower than the control rate) starts at action k, the one for the period the robot is in
        now, instead of replaying actions the robot's time has already passed."""
        first = 0
        if self.p("publish_on") == "tick":
            late = int((time.perf_counter() - plan.t_state) * self.p("control_rate_hz"))
            first = min(late, len(plan.actions) - 1)
            if late > 0:
                self.counters["late_plans"] += 1
        self._publish(self._safety.filter(plan.actions[first]), "plan")
        plan.index, self._fresh = first + 1, False
        self._answered_seq = max(self._answered_seq, plan.seq)

    def _on_tick(self) -> None:
        """Control-rate timer: stale state -> safe; missed deadline -> fallback; tick mode: a plan that was
        ready while the node was inactive, else -- when no command went out since the last tick -- the
        plan's next action."""
        with self._cmd_lock:
            if not self._active:
                return
            try:
                self._tick()
            finally:
                self._commands_at_tick = self.counters["commands"]

    def _tick(self) -> None:
        """Body of :meth:`_on_tick` (caller holds ``_cmd_lock``)."""
        now = time.perf_counter()
        with self._state_lock:
            last_t, seq, obs_t = self._last_state_t, self._obs_seq, self._obs_t
        tick_mode = self.p("publish_on") == "tick"
        stale_s = self.p("stale_timeout_s")
        since = last_t if last_t is not None else self._activated_t
        # new_state mode answers states; before the first one there is nothing to answer, and a
        # command would step a lockstep sim that is still starting up. Tick mode commands regardless.
        waiting_for_first = last_t is None and not tick_mode
        if stale_s > 0 and now - since > stale_s and not waiting_for_first:
            if tick_mode or not self._stale:
                self._publish(self._safety.safe(rate_limited=True), "stale")
                self.counters["stale_commands"] += 1
            self._stale = True
            return
        self._stale = False
        pending = seq > self._answered_seq
        plan = self._plan
        if tick_mode and plan is not None and self._fresh:  # ready while the node was not active
            self.counters["fresh"] += 1
            self._start_plan(plan)
            return
        deadline_ms = self.p("deadline_ms")
        if pending and deadline_ms > 0 and (now - obs_t) * 1000.0 > deadline_ms:
            self.counters["deadline_misses"] += 1
            actions = plan.actions if plan is not None else None
            cmd, how = self._safety.fallback(actions, plan.index if plan is not None else 0)
            if plan is not None:
                plan.index += 1
            self._answered_seq = seq
            self._publish(cmd, "fallback_" + how)
            return
        if tick_mode and self.counters["commands"] == self._commands_at_tick:
            if plan is None:
                self._publish(self._safety.safe(rate_limited=True), "no_plan")
            else:
                i = min(plan.index, len(plan.actions) - 1)
                plan.index += 1
                self._publish(self._safety.filter(plan.actions[i]), "continue")

    def _publish(self, command: np.ndarray, why: str) -> None:
        """The only place commands are published. Final output guard: finite and within bounds
        whatever the caller computed (the SafetyFilter already did this; checked again here)."""
        cmd = self._safety.guard(command)
        if self._cmd_pub is None:
            return
        msg = self._cmd_msg  # rclpy serialises on publish(), so one message object can be refilled each time
        msg.data = array.array("d", cmd.tobytes())
        # Before publishing: the next state (a lockstep sim answers within a millisecond, on another
        # executor thread) must find this command as the one the robot left its previous state with.
        self.last_command = cmd
        self._cmd_pub.publish(msg)
        self.counters["commands"] += 1
        self.counters["cmd_" + why] += 1

    def _publish_plan(self, plan: Plan) -> None:
        pub = self._plan_pub
        if pub is None or not self._active:
            return
        acts = plan.actions
        obs = plan.observations if plan.observations is not None and len(plan.observations) == len(acts) \
            else np.zeros((len(acts), 0))
        rows = np.concatenate([acts, obs], axis=1)
        msg = Float64MultiArray(data=array.array("d", np.ascontiguousarray(rows, np.float64).tobytes()))
        msg.layout.dim = [
            MultiArrayDimension(label="step", size=rows.shape[0], stride=rows.size),
            MultiArrayDimension(label=f"action[{acts.shape[1]}]|observation[{obs.shape[1]}]", size=rows.shape[1],
                                stride=rows.shape[1]),
        ]
        with contextlib.suppress(Exception):  # a lifecycle publisher deactivated mid-publish: drop
            pub.publish(msg)

    # ------------------------------------------------------------------ diagnostics
    def diagnostics_status(self) -> DiagnosticStatus:
        now = time.perf_counter()
        with self._state_lock:
            age = (now - self._last_state_t) * 1000.0 if self._last_state_t is not None else float("inf")
        level, message = DiagnosticStatus.OK, "ok"
        if self.last_error:
            level, message = DiagnosticStatus.ERROR, "planner error: " + self.last_error
        elif self._estop:
            level, message = DiagnosticStatus.ERROR, "e-stop engaged"
        elif self._stale and self._active:
            level, message = DiagnosticStatus.WARN, "state stale: safe command"
        elif self.last_reject:
            level, message = DiagnosticStatus.WARN, "state rejected: " + self.last_reject
        values = {
            "lifecycle_state": self._state_machine.current_state[1],
            "model": str(self.p("checkpoint")), "planner": str(self.p("planner")), "device": str(self.p("device")),
            "plan_latency_p50_ms": f"{self.plan_latency.percentile(50):.3f}",
            "plan_latency_p99_ms": f"{self.plan_latency.percentile(99):.3f}",
            "node_overhead_p99_ms": f"{self.overhead.percentile(99):.3f}",
            "state_age_ms": f"{age:.1f}",
            "last_error": self.last_error, "last_rejected_state": self.last_reject,
            **{k: str(v) for k, v in sorted(self.counters.items())},
        }
        return DiagnosticStatus(level=level, name=f"seqplanner: {self.get_name()}", message=message,
                                hardware_id=str(self.p("device")),
                                values=[KeyValue(key=k, value=v) for k, v in values.items()])

    def publish_diagnostics(self) -> None:
        pub = self._diag_pub  # read once: shutdown may clear and destroy it from another thread meanwhile
        if pub is None:
            return
        arr = DiagnosticArray(status=[self.diagnostics_status()])
        arr.header.stamp = self.get_clock().now().to_msg()
        with contextlib.suppress(InvalidHandle):  # destroyed during shutdown: this report is dropped
            pub.publish(arr)

    def current_state_label(self) -> str:
        return self._state_machine.current_state[1]


def autostart(node: PlannerNode) -> bool:
    """configure + activate; True when the node ends up active."""
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        return False
    return node.trigger_activate() == TransitionCallbackReturn.SUCCESS


def main(args: list[str] | None = None) -> None:
    """``seqplanner_node`` (ros2 run ros_seqplanner seqplanner_node --ros-args --params-file ...)."""
    from ros_seqplanner.rosenv import apply_safe_ros_env

    apply_safe_ros_env()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    # rclpy's own SIGINT handler would shut the context down before we could publish the final safe
    # command; with it disabled, Ctrl-C arrives as KeyboardInterrupt while the context is still valid.
    with rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO):
        node = PlannerNode()
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        if node.p("autostart") and not autostart(node):
            node.get_logger().error("autostart failed; the node stays up for manual lifecycle transitions")
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            executor.shutdown(timeout_sec=2.0)
            if node.current_state_label() in ("active", "inactive", "unconfigured"):
                node.trigger_shutdown()  # active: publishes one safe command first
            node.destroy_node()


if __name__ == "__main__":
    main()
