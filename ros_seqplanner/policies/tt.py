"""Receding-horizon Trajectory Transformer policy: beam-search a plan, execute its first action, repeat.

Context bookkeeping follows jannerm/trajectory-transformer ``scripts/plan.py`` + ``search/utils.py``:
after every executed step the transition (observation, executed action, received reward, value) is
tokenised and appended; the last ``max_context_transitions`` are kept; the planner's prefix is the
context followed by the current observation. The official code puts a *placeholder* value
(``VALUE_PLACEHOLDER = 1e6``, which discretizes to the top bin) into context transitions rather than an
estimate: the model masks value tokens out of attention, so no query ever reads them and their content
cannot change a plan. We do the same and use bin N-1 directly.

``plan_freq > 1``: between replans the next actions of the current plan are executed (official:
``sequence = sequence[1:]``); a plan is also refreshed when it has no actions left.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ros_seqplanner.nets.discretizer import Discretizer
from ros_seqplanner.nets.tt import TrajectoryTransformer, load_tt
from ros_seqplanner.planning.beam import BeamPlanner, Plan, PlannerConfig
from ros_seqplanner.planning.presets import BASE, checkpoint_planner
from ros_seqplanner.planning.rollout import predict_transitions
from ros_seqplanner.policies.base import PolicyTimings, check_action, check_observation


class TTPolicy:
    """:class:`~ros_seqplanner.policies.base.Policy` around :class:`~ros_seqplanner.planning.beam.BeamPlanner`.

    ``act(observation, reward)``: ``reward`` is the reward for the previous action (None on the first
    step of an episode; required afterwards). Exposes ``last_plan`` (:class:`Plan`) and ``timings``."""

    def __init__(self, model: TrajectoryTransformer, discretizer: Discretizer, config: PlannerConfig | None = None,
                 action_low: np.ndarray | None = None, action_high: np.ndarray | None = None, seed: int = 0,
                 dtype: torch.dtype | None = None) -> None:
        self.config = config or BASE
        self.planner = BeamPlanner(model, discretizer, self.config, dtype)
        mc = model.cfg
        self.obs_dim, self.act_dim = mc.obs_dim, mc.act_dim
        self.disc = discretizer
        self.action_low = np.asarray(-np.ones(self.act_dim) if action_low is None else action_low, np.float32)
        self.action_high = np.asarray(np.ones(self.act_dim) if action_high is None else action_high, np.float32)
        if self.action_low.shape != (self.act_dim,) or self.action_high.shape != (self.act_dim,):
            raise ValueError(f"action bounds must have shape ({self.act_dim},)")
        if np.any(self.action_low > self.action_high):
            raise ValueError("action_low must be <= action_high")
        self._default_seed = seed
        self._gen = torch.Generator(device=self.planner.device)
        self._offsets = mc.n_bins * np.arange(mc.transition_dim)
        self.timings = PolicyTimings()
        self.last_plan: Plan | None = None
        self.reset()

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", preset: str | None = None,
                        seed: int = 0, dtype: torch.dtype | None = None, **planner_overrides: Any) -> TTPolicy:
        """Load a TT checkpoint. Planner settings: ``preset`` (a name from
        :mod:`ros_seqplanner.planning.presets`), else the preset matching the checkpoint's dataset id, else
        the official base settings; then the checkpoint's own ``"planner"`` settings (a JSON object of
        PlannerConfig fields, e.g. a horizon that fits its block); then ``planner_overrides``. The discount
        defaults to the checkpoint's training ``gamma``. ``dtype``: decoder dtype, default float32 on CPU
        and bfloat16 on CUDA (bf16 plans are not bit-identical to fp32 ones)."""
        model, disc, meta = load_tt(path, device)
        _, cfg = checkpoint_planner(meta, goal_conditioned=model.cfg.goal_conditioned, preset=preset,
                                    overrides=planner_overrides, source=str(path))
        low, high = _bounds(meta, model.cfg.act_dim)
        if dtype is None:
            dtype = torch.bfloat16 if model.head.device.type == "cuda" else torch.float32
        return cls(model, disc, cfg, low, high, seed=seed, dtype=dtype)

    # ------------------------------------------------------------------------------------------ episode
    def reset(self, **opts: Any) -> None:
        """New episode: clears the context and plan. Options: ``seed`` (planner RNG), ``goal`` (O,)
        observation to reach (mode 'goal'). Unknown options (e.g. ``target_return``) are ignored."""
        seed = opts.get("seed")
        self._gen.manual_seed(int(self._default_seed if seed is None else seed))
        self._context: deque[np.ndarray] = deque(maxlen=self.config.max_context_transitions)
        self._pending: tuple[np.ndarray, np.ndarray] | None = None
        self._t = 0
        self._plan_idx = 0
        self.last_plan = None
        goal = opts.get("goal")
        if goal is not None:
            g = check_observation(goal, self.obs_dim)
            self._goal = torch.as_tensor(self._obs_tokens(g))
        else:
            self._goal = None

    @property
    def context_transitions(self) -> int:
        """Executed transitions currently kept as context."""
        return len(self._context)

    def context_tokens(self, observation: np.ndarray) -> np.ndarray:
        """Global token ids of the planner prefix for ``observation``: context transitions + observation."""
        obs = check_observation(observation, self.obs_dim)
        return np.concatenate([*self._context, self._obs_tokens(obs)]).astype(np.int64)

    def _obs_tokens(self, obs: np.ndarray) -> np.ndarray:
        """Global token ids of a validated observation."""
        return self.disc.encode_dims(obs, 0, self.obs_dim) + self._offsets[:self.obs_dim]

    def _tokenise_transition(self, obs: np.ndarray, act: np.ndarray, reward: float) -> np.ndarray:
        x = np.concatenate([obs, act, [reward]]).astype(np.float64)
        bins = self.disc.encode_dims(x, 0, self.disc.dim - 1)
        bins = np.append(bins, self.disc.n_bins - 1)  # value placeholder (official: 1e6 -> top bin)
        return bins + self._offsets

    def _deadline(self, t0: float) -> float | None:
        """``time.monotonic()`` deadline of a plan started by the act call at ``t0`` (perf_counter), or None."""
        budget = self.config.time_budget_ms
        return None if budget <= 0 else time.monotonic() + budget / 1e3 - (time.perf_counter() - t0)

    def _close_pending(self, reward: float | None) -> None:
        """Append the pending (observation, executed action) with ``reward`` to the context."""
        if self._pending is None:
            return
        if reward is None:
            raise ValueError("reward for the previous action is required after the first step of an episode")
        if not np.isfinite(reward):
            raise ValueError(f"reward must be finite, got {reward}")
        prev_obs, prev_act = self._pending
        self._context.append(self._tokenise_transition(prev_obs, prev_act, float(reward)))

    def _check_action(self, action: np.ndarray) -> np.ndarray:
        return check_action(action, self.act_dim, self.action_low, self.action_high)

    def correct_last_action(self, action: np.ndarray) -> None:
        """The robot executed ``action`` after the latest observation, not the one :meth:`act` returned (a
        realtime controller still following an older plan while this one was computed): the context
        records what was executed. No effect before the episode's first ``act``."""
        a = self._check_action(action)
        if self._pending is not None:
            self._pending = (self._pending[0], a)

    def observe(self, observation: np.ndarray, reward: float | None, action: np.ndarray) -> None:
        """A control period the policy was not asked about: the robot reached ``observation`` (``reward``
        for the previous action) and executed ``action`` there. Appends the transition so the context
        stays one transition per control period, as in training; the current plan advances one row.
        A realtime node whose planner is slower than the period calls this for the states it skipped."""
        obs = check_observation(observation, self.obs_dim)
        a = self._check_action(action)
        self._close_pending(reward)
        self._pending = (obs, a)
        self._t += 1
        self._plan_idx += 1

    def act_ahead(self, observation: np.ndarray, reward: float | None, committed: np.ndarray) -> np.ndarray:
        """Latency compensation (not in the reference): plan for the state the robot will be in once this plan
        is out. The robot executes ``committed`` (L, A) from ``observation`` meanwhile (the previous plan's next
        actions). The model predicts those L transitions (reward and next observation, per-token median,
        as in :func:`~ros_seqplanner.sim.long_horizon.tt_open_loop`), the beam search starts from the predicted
        observation, and the returned action and ``last_plan`` are for step t + L. The context keeps only
        what is known: ``observation`` with ``committed[0]``; the later steps come with :meth:`observe`."""
        t0 = time.perf_counter()
        obs = check_observation(observation, self.obs_dim)
        acts = np.asarray(committed, dtype=np.float32).reshape(-1, self.act_dim)  # (0, A) when none
        acts = np.stack([self._check_action(a) for a in acts]) if len(acts) else acts
        if len(acts) and self.planner.model.cfg.goal_conditioned:
            raise ValueError("act_ahead predicts with the model, which needs a TT without goal conditioning")
        self._close_pending(reward)
        if self.config.mode == "goal" and self._goal is None:
            raise ValueError("mode 'goal' needs a goal: call reset(goal=observation)")
        ctx = list(self._context)
        predicted = self._predict_transitions(ctx, self._obs_tokens(obs), acts)
        prefix = torch.as_tensor(np.concatenate([*ctx, *predicted]).astype(np.int64))
        self.last_plan = self.planner.plan(prefix, self._gen, self._goal, self._deadline(t0))
        self._plan_idx = 0
        action = np.clip(self.last_plan.actions[0], self.action_low, self.action_high).astype(np.float32)
        self._pending = (obs, acts[0] if len(acts) else action)
        self._t += 1
        self.timings = PolicyTimings(act_ms=(time.perf_counter() - t0) * 1e3, planned=True,
                                     extra=dict(self.planner.last_stats))
        return action

    def _predict_transitions(self, ctx: list[np.ndarray], o_ids: np.ndarray, acts: np.ndarray) -> list[np.ndarray]:
        """Token ids [transition(obs, a_0, r0^, v), ..., observation^_L] for the committed ``acts`` from
        observation tokens ``o_ids`` after context ``ctx``: the model's median predictions, with the context's
        value placeholder in the value slots."""
        if not len(acts):
            return [o_ids]
        o, a = self.obs_dim, self.act_dim
        a_ids = self.disc.encode_dims(acts.astype(np.float64), o, o + a) + self._offsets[o:o + a]  # (L, A)
        placeholder = int(self._offsets[-1] + self.disc.n_bins - 1)  # the context's value token
        r_ids, v_ids, obs_ids, _ = predict_transitions(self.planner.model, np.concatenate([*ctx, o_ids]).tolist(),
                                                       a_ids, "median", value_id=placeholder)
        starts = [o_ids, *obs_ids[:-1]]
        rows = [np.concatenate([s, a_ids[t], [r_ids[t], v_ids[t]]]) for t, s in enumerate(starts)]
        return [*rows, obs_ids[-1]]

    def act(self, observation: np.ndarray, reward: float | None = None) -> np.ndarray:
        t0 = time.perf_counter()
        obs = check_observation(observation, self.obs_dim)
        self._close_pending(reward)
        if self.config.mode == "goal" and self._goal is None:
            raise ValueError("mode 'goal' needs a goal: call reset(goal=observation)")
        replan = (self.last_plan is None or self._t % self.config.plan_freq == 0
                  or self._plan_idx + 1 >= len(self.last_plan.actions))
        if replan:
            prefix = torch.as_tensor(self.context_tokens(obs))
            self.last_plan = self.planner.plan(prefix, self._gen, self._goal, self._deadline(t0))
            self._plan_idx = 0
        else:
            self._plan_idx += 1
        action = np.clip(self.last_plan.actions[self._plan_idx], self.action_low, self.action_high).astype(np.float32)
        self._pending = (obs, action)
        self._t += 1
        self.timings = PolicyTimings(act_ms=(time.perf_counter() - t0) * 1e3, planned=replan,
                                     extra=dict(self.planner.last_stats) if replan else {})
        return action


def _bounds(meta: dict[str, Any], act_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Action bounds from checkpoint metadata (top level or under 'dataset'); MuJoCo default [-1, 1]."""
    for src in (meta, meta.get("dataset") or {}):
        if isinstance(src, dict) and "action_low" in src and "action_high" in src:
            return np.asarray(src["action_low"], np.float32), np.asarray(src["action_high"], np.float32)
    return -np.ones(act_dim, np.float32), np.ones(act_dim, np.float32)
