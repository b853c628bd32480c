"""The single ``Policy`` interface.

Every planner (TT beam search, DT, BC, the SAC behaviour policy) implements it; the evaluator, the
demo, the ROS node and the replay tests call exactly this and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class PolicyTimings:
    """Wall-clock latency of the last ``act`` call, in milliseconds; ``planned`` is False when the
    action came from a cached plan (TT ``plan_freq > 1``) rather than a fresh model call."""

    act_ms: float = 0.0
    planned: bool = True
    extra: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Policy(Protocol):
    """observation (O,) float -> action (A,) float32, within the policy's action bounds."""

    obs_dim: int
    act_dim: int
    action_low: np.ndarray
    action_high: np.ndarray

    def reset(self, **episode_options: Any) -> None:
        """Start a new episode. Options: ``target_return`` (DT), ``goal`` (TT goal mode), ``seed``."""
        ...

    def act(self, observation: np.ndarray, reward: float | None) -> np.ndarray:
        """Return the action for ``observation``. ``reward`` is the reward received for the previous
        action (None on the first step of an episode)."""
        ...

    # Optional, for policies that keep a context (TT, DT); a realtime controller whose plans outlast the
    # control period calls them before its next ``act`` (the planner node, LatencyPolicy):
    #   correct_last_action(action): the robot executed ``action`` after the latest observation, not the
    #       action ``act`` returned (it was still following an older plan);
    #   observe(observation, reward, action): a period the policy was not asked about: the robot reached
    #       ``observation`` (``reward`` for the previous action) and executed ``action``.


def check_observation(observation: np.ndarray, obs_dim: int) -> np.ndarray:
    """Validate one observation: 1-D, right length, finite. Raises ValueError with the reason."""
    obs = np.asarray(observation, dtype=np.float32)
    if obs.shape != (obs_dim,):
        raise ValueError(f"observation has shape {obs.shape}, expected ({obs_dim},)")
    if not np.all(np.isfinite(obs)):
        raise ValueError("observation contains NaN or Inf")
    return obs


def catch_up(policy: Any, executed: np.ndarray | None,
             skipped: list[tuple[np.ndarray, float | None, np.ndarray]]) -> int:
    """Tell a policy with a context what happened since its last plan: ``executed``, the action run at the state
    it planned for (None: not known), and ``skipped``, the (observation, reward, action) of each later state it
    was not asked about, in order. Returns how many skipped states it was told; a policy without
    ``correct_last_action`` / ``observe`` (BC, the behaviour policy: memoryless) is told nothing (0)."""
    correct = getattr(policy, "correct_last_action", None)
    observe = getattr(policy, "observe", None)
    if correct is None or observe is None:
        return 0
    if executed is not None:
        correct(executed)
    for obs, reward, action in skipped:
        observe(obs, reward, action)
    return len(skipped)


def check_action(action: np.ndarray, act_dim: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Validate an executed action reported to a policy (``observe`` / ``correct_last_action``): ``act_dim``
    finite values, clipped into [low, high] as the policy's own actions are. Raises ValueError with the reason."""
    a = np.asarray(action, dtype=np.float32).reshape(-1)
    if a.shape != (act_dim,) or not np.all(np.isfinite(a)):
        raise ValueError(f"action must be {act_dim} finite values, got {np.asarray(action).tolist()}")
    return np.clip(a, low, high)


def obs_normaliser(obs_mean: np.ndarray, obs_std: np.ndarray, obs_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated float32 (mean, std) of length ``obs_dim`` for state normalisation (std > 0)."""
    mean = np.asarray(obs_mean, dtype=np.float32).reshape(obs_dim)
    std = np.asarray(obs_std, dtype=np.float32).reshape(obs_dim)
    if not np.all(std > 0):
        raise ValueError("obs_std must be positive")
    return mean, std


def plan_from_policy(policy: Any, action: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(actions, predicted observations) still ahead, from the optional ``policy.last_plan`` (dict or
    object with ``actions`` / ``observations``). The plan is cut at the row that produced ``action``
    (TT with ``plan_freq > 1`` executes a cached plan row by row); without a matching plan it is just
    ``action``."""
    plan = getattr(policy, "last_plan", None)
    if plan is None:
        return action[None], None
    get = plan.get if isinstance(plan, dict) else (lambda k, d=None: getattr(plan, k, d))
    try:
        acts = np.asarray(get("actions", None), dtype=np.float64).reshape(-1, action.size)
        obs = get("observations", None)
        obs = None if obs is None else np.asarray(obs, dtype=np.float64).reshape(len(acts), -1)
    except (TypeError, ValueError):
        return action[None], None
    lo, hi = np.asarray(policy.action_low, np.float64), np.asarray(policy.action_high, np.float64)
    match = np.flatnonzero(np.all(np.abs(np.clip(acts, lo, hi) - action) <= 1e-5, axis=1))
    if match.size == 0:
        return action[None], None
    k = int(match[0])
    return np.concatenate([action[None], acts[k + 1:]]), None if obs is None else obs[k:]
