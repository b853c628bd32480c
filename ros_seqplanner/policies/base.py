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


def check_observation(observation: np.ndarray, obs_dim: int) -> np.ndarray:
    """Validate one observation: 1-D, right length, finite. Raises ValueError with the reason."""
    obs = np.asarray(observation, dtype=np.float32)
    if obs.shape != (obs_dim,):
        raise ValueError(f"observation has shape {obs.shape}, expected ({obs_dim},)")
    if not np.all(np.isfinite(obs)):
        raise ValueError("observation contains NaN or Inf")
    return obs


def obs_normaliser(obs_mean: np.ndarray, obs_std: np.ndarray, obs_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated float32 (mean, std) of length ``obs_dim`` for state normalisation (std > 0)."""
    mean = np.asarray(obs_mean, dtype=np.float32).reshape(obs_dim)
    std = np.asarray(obs_std, dtype=np.float32).reshape(obs_dim)
    if not np.all(std > 0):
        raise ValueError("obs_std must be positive")
    return mean, std
