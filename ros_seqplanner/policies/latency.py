"""A policy whose plans take whole control periods: an offline, reproducible model of a realtime controller.

In realtime the robot does not wait for the planner. :class:`LatencyPolicy` wraps any
:class:`~ros_seqplanner.policies.base.Policy` and replays what the planner node does in ``publish_on: tick``
mode with a planner that needs between ``L`` and ``L + 1`` control periods per plan (``latency_steps = L``):

- a plan for the state of step t comes out during period t + L and is followed from its action L (actions
  0..L-1 were meant for periods already past); until then the previous plan's next actions are executed
  (its last one held), and the safe action (zero, clipped into the bounds) before the first plan;
- the planner starts on the newest state as soon as it is free, i.e. at the step its last plan came out;
- with ``catch_up`` (the node's ``catch_up_context``), before each plan the inner policy is told the action
  executed at its previous state and every state it skipped (``correct_last_action`` / ``observe``);
- with ``compensate`` (TT only, not in the reference), the plan is made for the state L steps ahead, predicted by
  the model from the actions the robot executes meanwhile (``TTPolicy.act_ahead``), and followed from its action 0.

``L = 0`` is the lockstep loop: the inner policy is asked at every step and its actions are executed as is.
Unlike a realtime episode over ROS 2, the result does not depend on thread timing, so it can be compared
across planners, machines and runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ros_seqplanner.policies.base import PolicyTimings, catch_up, check_observation, plan_from_policy


class LatencyPolicy:
    """:class:`~ros_seqplanner.policies.base.Policy` executing ``inner``'s plans ``latency_steps`` periods late."""

    def __init__(self, inner: Any, latency_steps: int, catch_up: bool = True, compensate: bool = False) -> None:
        if latency_steps < 0:
            raise ValueError(f"latency_steps must be >= 0, got {latency_steps}")
        if compensate and not hasattr(inner, "act_ahead"):
            raise ValueError(f"compensate needs a policy with act_ahead (the TT policy), not {type(inner).__name__}")
        self.inner, self.latency_steps, self.catch_up = inner, int(latency_steps), bool(catch_up)
        self.compensate = bool(compensate)
        self.obs_dim, self.act_dim = inner.obs_dim, inner.act_dim
        self.action_low = np.asarray(inner.action_low, np.float32)
        self.action_high = np.asarray(inner.action_high, np.float32)
        self.safe_action = np.clip(np.zeros(self.act_dim, np.float32), self.action_low, self.action_high)
        self.timings = PolicyTimings()
        self._clear()

    @property
    def last_plan(self) -> Any:
        return getattr(self.inner, "last_plan", None)

    def reset(self, **episode_options: Any) -> None:
        self.inner.reset(**episode_options)
        self._clear()

    def _clear(self) -> None:
        self._t = 0
        self._following: tuple[np.ndarray, int] | None = None  # (plan actions, step of its action 0)
        self._running: tuple[np.ndarray, int] | None = None    # the plan being computed, same layout
        self._ready = 0                                        # step at which the running plan comes out
        self._trace: list[tuple[int, np.ndarray, float | None, np.ndarray]] = []  # since the running plan's state
        self.plans = 0

    def act(self, observation: np.ndarray, reward: float | None) -> np.ndarray:
        obs = check_observation(observation, self.obs_dim)
        t, lat = self._t, self.latency_steps
        if self._running is not None and t >= self._ready:  # the running plan comes out now
            self._following, self._running = self._running, None
        planned = self._running is None
        if planned:
            self._tell_inner()
            if self.compensate and lat:
                # The plan is for step t + L; meanwhile the robot runs the actions it would run anyway.
                committed = np.stack([self._action_at(t + k) for k in range(lat)])
                first = np.asarray(self.inner.act_ahead(obs, reward, committed), np.float64).reshape(-1)
                start = t + lat
            else:
                first = np.asarray(self.inner.act(obs, reward), np.float64).reshape(-1)
                start = t
            actions, _ = plan_from_policy(self.inner, first)
            self._running, self._ready, self._trace = (np.asarray(actions, np.float32), start), t + lat, []
            self.plans += 1
            if lat == 0:
                self._following, self._running = self._running, None
        action = self._action_at(t)
        self._trace.append((t, obs, reward, action))
        self._t += 1
        inner_t = getattr(self.inner, "timings", None)
        self.timings = inner_t if planned and inner_t is not None else PolicyTimings(act_ms=0.0, planned=False)
        return action

    def _action_at(self, t: int) -> np.ndarray:
        """The followed plan's action for step t (its last one once used up); the safe action without a plan."""
        if self._following is None:
            return self.safe_action.copy()
        acts, t0 = self._following
        return np.clip(acts[min(max(t - t0, 0), len(acts) - 1)], self.action_low, self.action_high)

    def _tell_inner(self) -> None:
        """Before a plan: the action executed at the previous plan's state and the states skipped since."""
        if not self.catch_up or not self.latency_steps or not self._trace:
            return
        (_, _, _, executed), *skipped = self._trace
        catch_up(self.inner, executed, [(obs, reward, action) for _, obs, reward, action in skipped])
