"""Safety envelope between a planner and the actuators. ROS-free, so it is unit-testable on its own.

The planner node calls it on every tick; everything it returns is finite and within the action
bounds *by construction* (:meth:`SafetyFilter.guard` is the last step of every path):

- :func:`validate_state` rejects a wrong-length or non-finite state (no command is derived from it);
- :meth:`SafetyFilter.filter` clips a planned action to the bounds and limits its change per tick;
- :meth:`SafetyFilter.fallback` gives the command to use when the plan deadline is missed
  (``continue`` the previous plan / ``hold`` the last command / ``zero``);
- :meth:`SafetyFilter.safe` is the command for a stale state, an e-stop or a planner exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FALLBACKS = ("continue", "hold", "zero")


class SafetyConfigError(ValueError):
    """Bounds or limits that cannot describe a valid envelope."""


@dataclass(frozen=True)
class SafetyConfig:
    """The envelope. ``max_delta`` <= 0 disables the per-tick rate limit.

    ``action_low``/``action_high``: per-joint command bounds (A,).
    ``max_delta``: largest change of any joint's command between consecutive published commands.
    ``fallback``: what to command when the plan deadline is missed (one of :data:`FALLBACKS`).
    ``safe_action``: the command for stale state / e-stop / planner error; defaults to zero clipped
    into the bounds (zero torque for the MuJoCo locomotion envs).
    """

    action_low: np.ndarray
    action_high: np.ndarray
    max_delta: float = 0.0
    fallback: str = "continue"
    safe_action: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        lo = np.asarray(self.action_low, dtype=np.float64).reshape(-1)
        hi = np.asarray(self.action_high, dtype=np.float64).reshape(-1)
        if lo.shape != hi.shape or lo.size == 0:
            raise SafetyConfigError(f"action_low {lo.shape} and action_high {hi.shape} must be equal, non-empty")
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise SafetyConfigError("action bounds must be finite")
        if np.any(lo > hi):
            raise SafetyConfigError(f"action_low must be <= action_high (low={lo.tolist()}, high={hi.tolist()})")
        if not np.isfinite(self.max_delta):
            raise SafetyConfigError("max_delta must be finite (use 0 to disable the rate limit)")
        if self.fallback not in FALLBACKS:
            raise SafetyConfigError(f"fallback must be one of {FALLBACKS}, got {self.fallback!r}")
        safe = np.zeros_like(lo) if self.safe_action is None else np.asarray(self.safe_action, np.float64)
        if safe.shape != lo.shape or not np.all(np.isfinite(safe)):
            raise SafetyConfigError(f"safe_action must be finite with shape {lo.shape}")
        object.__setattr__(self, "action_low", lo)
        object.__setattr__(self, "action_high", hi)
        object.__setattr__(self, "safe_action", np.clip(safe, lo, hi))

    @property
    def act_dim(self) -> int:
        return int(self.action_low.size)


def validate_state(state: np.ndarray | list[float], dim: int) -> tuple[np.ndarray | None, str]:
    """(state as float32 (dim,), "") if usable, else (None, reason). Never raises."""
    try:
        x = np.asarray(state, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        return None, f"state is not numeric: {e}"
    if x.size != dim:
        return None, f"state has {x.size} values, the model expects {dim}"
    if not np.all(np.isfinite(x)):
        bad = np.flatnonzero(~np.isfinite(x)).tolist()
        return None, f"state contains NaN/Inf at indices {bad}"
    return x.astype(np.float32), ""


class SafetyFilter:
    """Stateful envelope: remembers the last published command for the rate limit and ``hold``."""

    def __init__(self, config: SafetyConfig) -> None:
        self.config = config
        self.last: np.ndarray | None = None  # last command actually published

    def reset(self) -> None:
        self.last = None

    def guard(self, command: np.ndarray) -> np.ndarray:
        """The final output guard: non-finite entries become the safe action's, then clip.
        Whatever goes in, the result is finite, of length A and within bounds."""
        c = self.config
        x = np.asarray(command, dtype=np.float64).reshape(-1)
        if x.size != c.act_dim:
            x = c.safe_action.copy()
        x = np.where(np.isfinite(x), x, c.safe_action)
        return np.clip(x, c.action_low, c.action_high)

    def _rate_limit(self, x: np.ndarray) -> np.ndarray:
        c = self.config
        if c.max_delta > 0 and self.last is not None:
            x = np.clip(x, self.last - c.max_delta, self.last + c.max_delta)
        return x

    def commit(self, command: np.ndarray) -> np.ndarray:
        """Record ``command`` as published (after guarding it) and return the guarded copy."""
        out = self.guard(command)
        self.last = out.copy()
        return out

    def filter(self, action: np.ndarray) -> np.ndarray:
        """A planned action -> the command to publish: guard (finite, clip), then rate limit."""
        return self.commit(self._rate_limit(self.guard(action)))

    def safe(self, rate_limited: bool = False) -> np.ndarray:
        """The safe command. E-stop and errors skip the rate limit (stop now); a stale state
        may ramp towards it (``rate_limited``)."""
        x = self.config.safe_action.copy()
        return self.commit(self._rate_limit(x) if rate_limited else x)

    def fallback(self, plan_actions: np.ndarray | None, next_index: int) -> tuple[np.ndarray, str]:
        """Command for a missed plan deadline, and which fallback produced it.

        ``continue``: action ``next_index`` of the previous plan (its last action once it is used
        up); without a plan it degrades to ``hold``. ``hold``: the last command (safe one if none).
        ``zero``: the safe action.
        """
        mode = self.config.fallback
        if mode == "continue":
            if plan_actions is not None and len(plan_actions) > 0:
                i = min(max(int(next_index), 0), len(plan_actions) - 1)
                return self.filter(plan_actions[i]), "continue"
            mode = "hold"
        if mode == "hold" and self.last is not None:
            return self.commit(self.last), "hold"
        return self.safe(rate_limited=True), "zero"
