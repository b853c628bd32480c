"""Action bounds carried by model configs (DT, BC): validation and the [-1, 1] default."""

from __future__ import annotations


class ActionBoundsMixin:
    """For frozen dataclass configs with ``act_dim``, ``action_low`` and ``action_high`` (tuples; empty
    means [-1, 1]). Call :meth:`_check_action_bounds` from ``__post_init__``."""

    act_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]

    def _check_action_bounds(self) -> None:
        for name in ("action_low", "action_high"):
            v = getattr(self, name)
            if v and len(v) != self.act_dim:
                raise ValueError(f"{name} has {len(v)} values, expected act_dim={self.act_dim}")
            object.__setattr__(self, name, tuple(float(x) for x in v))
        low, high = self.bounds()
        if any(h <= lo for lo, h in zip(low, high)):
            raise ValueError(f"action_high must exceed action_low everywhere: {low} vs {high}")

    def bounds(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return (self.action_low or (-1.0,) * self.act_dim, self.action_high or (1.0,) * self.act_dim)
