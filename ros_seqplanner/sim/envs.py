"""Gymnasium v5 MuJoCo environments (HalfCheetah, Hopper, Walker2d) behind one factory."""

from __future__ import annotations

from typing import Any

ENV_IDS: dict[str, str] = {
    "halfcheetah": "HalfCheetah-v5",
    "hopper": "Hopper-v5",
    "walker2d": "Walker2d-v5",
}


def canonical_env_id(name_or_id: str) -> str:
    """'halfcheetah', 'HalfCheetah-v5', 'halfcheetah-medium-v2' -> 'HalfCheetah-v5'."""
    key = str(name_or_id).strip().split("/")[-1].lower().split("-")[0]
    if key not in ENV_IDS:
        raise ValueError(f"unknown environment {name_or_id!r}; supported: {sorted(ENV_IDS)} "
                         f"or their ids {sorted(ENV_IDS.values())}")
    return ENV_IDS[key]


def make_env(name_or_id: str, seed: int | None = None, render_mode: str | None = None, **kwargs: Any) -> Any:
    """Create a gymnasium v5 MuJoCo env; if ``seed`` is given, seed reset RNG and action space."""
    import gymnasium as gym

    env = gym.make(canonical_env_id(name_or_id), render_mode=render_mode, **kwargs)
    if seed is not None:
        env.reset(seed=int(seed))
        env.action_space.seed(int(seed))
    return env
