"""Official Trajectory Transformer planning settings per D4RL-style locomotion dataset.

Source: jannerm/trajectory-transformer ``config/offline.py`` (``base['plan']`` plus per-dataset
overrides). Base: horizon 15, beam width 128, n_expand 2, k_obs 1, k_act None, cdf_obs None,
cdf_act 0.6, value/reward expectation (``percentile='mean'``), max_context_transitions 5,
plan_freq 1; the planning discount is the training discount (0.99).

Per-dataset overrides in the official config:

- halfcheetah-{medium, medium-replay, medium-expert}: horizon 5. The beam width 32 line is commented
  out there, with the note that halfcheetah tolerates a smaller horizon *and beam width*; the
  faster-trajectory-transformer reimplementation evaluates halfcheetah with beam 32, and so do we.
- hopper-medium: plan_freq 5. hopper-medium-replay / hopper-medium-expert: base.
- walker2d-medium / walker2d-medium-replay: base. walker2d-medium-expert: horizon 5.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ros_seqplanner.planning.beam import PlannerConfig

ENVS = ("halfcheetah", "hopper", "walker2d")
QUALITIES = ("medium", "medium-replay", "medium-expert")

# obs/act dims of the MuJoCo locomotion envs (Gymnasium v4/v5 = D4RL v2 layouts).
ENV_DIMS: dict[str, tuple[int, int]] = {"halfcheetah": (17, 6), "hopper": (11, 3), "walker2d": (17, 6)}

BASE = PlannerConfig(horizon=15, beam_width=128, n_expand=2, discount=0.99, cdf_act=0.6, k_act=None,
                     max_context_transitions=5, plan_freq=1, mode="reward")

_OVERRIDES: dict[str, dict] = {
    "halfcheetah-medium": {"horizon": 5, "beam_width": 32},
    "halfcheetah-medium-replay": {"horizon": 5, "beam_width": 32},
    "halfcheetah-medium-expert": {"horizon": 5, "beam_width": 32},
    "hopper-medium": {"plan_freq": 5},
    "hopper-medium-replay": {},
    "hopper-medium-expert": {},
    "walker2d-medium": {},
    "walker2d-medium-replay": {},
    "walker2d-medium-expert": {"horizon": 5},
}

PRESETS: dict[str, PlannerConfig] = {name: replace(BASE, **kw) for name, kw in _OVERRIDES.items()}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def normalize_name(name: str) -> str | None:
    """Map a dataset/env id to a preset name, or None if it names no known env+quality.

    Accepts ``halfcheetah-medium``, ``halfcheetah-medium-v2`` (D4RL), ``mujoco/halfcheetah/medium-v0``
    (Minari), ``HalfCheetah-v5`` (env id only: no quality -> None)."""
    s = name.lower().replace("_", "-").replace("/", "-")
    s = s.replace("half-cheetah", "halfcheetah").replace("walker-2d", "walker2d")
    env = next((e for e in ENVS if e in s), None)
    if env is None:
        return None
    rest = s.split(env, 1)[1]
    for q in ("medium-replay", "medium-expert", "medium"):  # longest first
        if re.search(rf"(^|-){q}(-|$)", rest):
            return f"{env}-{q}"
    return None


def get_preset(name: str, **overrides) -> PlannerConfig:
    """The preset for ``name`` (any spelling :func:`normalize_name` accepts), with field overrides."""
    key = normalize_name(name)
    if key is None or key not in PRESETS:
        raise ValueError(f"no planning preset for {name!r}; known: {', '.join(preset_names())}")
    return replace(PRESETS[key], **overrides) if overrides else PRESETS[key]


def env_dims(name: str) -> tuple[int, int]:
    """(obs_dim, act_dim) of the env a preset/dataset name refers to."""
    s = name.lower()
    for env, dims in ENV_DIMS.items():
        if env in s:
            return dims
    raise ValueError(f"unknown env in {name!r}; known: {', '.join(ENVS)}")


def checkpoint_planner(meta: Mapping[str, Any], *, goal_conditioned: bool = False, preset: str | None = None,
                       overrides: Mapping[str, Any] | None = None, source: str = "checkpoint"
                       ) -> tuple[str | None, PlannerConfig]:
    """The planner settings a TT checkpoint plans with, and the preset name they start from.

    In order: ``preset``, else the preset matching the checkpoint's ``dataset_id`` (else ``env_id``), else
    :data:`BASE`; the discount from its training ``gamma``; mode ``goal`` for a goal-conditioned model; the
    checkpoint's own ``"planner"`` object (settings recorded at training time); then ``overrides``. The
    discount and mode defaults yield to any later setting of the same field."""
    overrides = PlannerConfig.check_settings(dict(overrides or {}), "planner options")
    shipped = PlannerConfig.check_settings(meta.get("planner") or {}, f"{source} 'planner'")
    name = preset or normalize_name(str(meta.get("dataset_id") or "")) or normalize_name(str(meta.get("env_id") or ""))
    cfg = get_preset(name) if name else BASE
    if meta.get("gamma") is not None:
        cfg = replace(cfg, discount=float(meta["gamma"]))
    if goal_conditioned:
        cfg = replace(cfg, mode="goal")
    return name, replace(cfg, **{**shipped, **overrides})
