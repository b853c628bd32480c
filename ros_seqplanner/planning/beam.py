"""Trajectory Transformer beam-search planner (Janner et al., 2021), exact and K/V-cached.

Per planning step t (jannerm/trajectory-transformer ``trajectory/search/core.py::beam_plan``):

1. expand each of the W beams E times (W*E candidates);
2. sample each action dimension from the filtered distribution (``cdf_act`` nucleus-style filter or
   ``k_act`` top-k; see :mod:`ros_seqplanner.planning.sampling`);
3. take the reward and value tokens greedily (``k_rew=1``) while scoring with their expectations under
   the unfiltered softmax over bin midpoints: score = sum_{k<=t} gamma^k r_k + gamma^(t+1) V_t
   (mode ``reward``), or the cumulative log-probability of every token decoded so far (``imitation``,
   ``goal``);
4. keep the top W candidates (as a set, in candidate order);
5. unless t is the last step, decode the next observation greedily (``k_obs=1``).

After H steps the best beam's tokens are de-tokenised; the policy executes its first action.

Deviations from the official code (each also noted where it happens):

- Context window: the official code crops the model input to ``max_context_transitions * D - 1``
  tokens on every forward pass (a sliding window with re-based positions, which rules out a cache).
  Here the context (at most ``max_context_transitions`` executed transitions, and at most the model's
  ``max_transitions - 1``) and the plan share one window with absolute positions, cached. When a plan
  outgrows the model's block (context + horizon > ``max_transitions``), the window moves in one jump:
  before the next observation, each beam's last ``max(1, context)`` transitions are re-encoded as a new
  window at position 0 (:meth:`BeamPlanner._reencode`, batched over the beams) and planning continues
  cached in it. So a token sees between ``context`` and ``max_transitions - 1`` whole transitions before
  its own (official: fewer than ``max_context_transitions``), and any horizon fits any block. Plans that
  re-encode run on the torch decoder (the C kernel keeps one shared prefix per plan).
- Expansion order: candidate ``beam * E + e`` (``repeat_interleave``) rather than ``repeat`` (tiling),
  so the E candidates of a beam share its cached history; it only changes which equal-score candidate
  wins a tie.
- Stop class never sampled/decoded in a plan (official: may be sampled, then clipped to bin N-1).
- ``imitation`` scoring: the paper's imitation planner is likelihood beam search (official
  ``beam_search``, exhaustive over all N bins per token); here it is the same sampled-expansion beam
  search as ``reward`` mode, scored by cumulative log-probability. ``goal``: the same, with the goal
  observation tokens placed before the context (model option ``goal_conditioned``).

- Beam order: the kept W candidates stay in candidate order instead of being sorted by score (official:
  sorted). Beam b's children use the uniforms of candidates b*E..b*E+E-1, so with a score-sorted order two
  near-equal scores (a float-rounding difference apart) that swap ranks would swap their children's random
  numbers and change the plan; in candidate order only the set kept matters. Same distribution of plans.
  The returned plan is the best-scoring beam after the last step.

- ``obs_bounds`` (not in the reference; off by default): a state constraint, as in MPC. Each planned (predicted)
  observation whose decoded value leaves ``[lo, hi]`` in a bounded dimension counts one violation for its beam;
  beams are kept and the plan picked by (fewest violations, then score, then lower index), so a plan that
  stays in bounds beats any that leaves them whenever the beam holds one. The current observation is not
  counted (no plan can change it). The last planned step has no predicted observation (the loop stops at its
  value), so H - 1 observations per plan are checked.

Randomness: all uniforms of a plan are drawn up front as one (H, W*E, A) tensor from the given
generator, so any planner with these semantics (e.g. the full-recompute reference in the tests)
reproduces the same plan from the same seed.
"""

from __future__ import annotations

import math
import time
import typing
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from ros_seqplanner.nets.discretizer import Discretizer
from ros_seqplanner.nets.tt import TrajectoryTransformer
from ros_seqplanner.planning import ckernel
from ros_seqplanner.planning.ckernel import CBeamDecoder
from ros_seqplanner.planning.engine import BeamDecoder
from ros_seqplanner.planning.sampling import expectation, greedy_bins, sample_bins, token_logp

MODES = ("reward", "imitation", "goal")


def parse_obs_bounds(text: str | None) -> list[tuple[int, float, float]]:
    """``"DIM:LO:HI,DIM:LO:HI"`` -> [(dim, lo, hi)]; LO or HI may be empty (unbounded on that side), e.g.
    ``"1:-1:1"`` (observation 1 within +-1) or ``"0:0.9:"`` (observation 0 at least 0.9). None / '' -> []."""
    out: list[tuple[int, float, float]] = []
    for item in (text or "").replace(";", ",").split(","):
        if not item.strip():
            continue
        parts = item.strip().split(":")
        if len(parts) != 3:
            raise ValueError(f"obs_bounds: expected DIM:LO:HI, got {item.strip()!r}")
        try:
            dim = int(parts[0])
            lo = float(parts[1]) if parts[1].strip() else -np.inf
            hi = float(parts[2]) if parts[2].strip() else np.inf
        except ValueError as e:
            raise ValueError(f"obs_bounds: bad number in {item.strip()!r} (expected DIM:LO:HI)") from e
        if dim < 0 or np.isnan(lo) or np.isnan(hi) or not lo < hi:
            raise ValueError(f"obs_bounds: need DIM >= 0 and LO < HI, got {item.strip()!r}")
        if any(d == dim for d, _, _ in out):
            raise ValueError(f"obs_bounds: dimension {dim} bounded twice")
        out.append((dim, lo, hi))
    return out


def bound_bins(bounds: list[tuple[int, float, float]], disc: Discretizer, obs_dim: int
               ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per observation dimension, the lowest and highest bin whose midpoint (the decoded value) lies in its
    bounds ((O,) int64 each; unbounded dimensions 0 and N-1), or None without bounds."""
    if not bounds:
        return None
    n = disc.n_bins
    lo_bin, hi_bin = torch.zeros(obs_dim, dtype=torch.long), torch.full((obs_dim,), n - 1, dtype=torch.long)
    for dim, lo, hi in bounds:
        if dim >= obs_dim:
            raise ValueError(f"obs_bounds: dimension {dim} out of range (the model observes {obs_dim})")
        inside = np.flatnonzero((disc.midpoints_np[dim] >= lo) & (disc.midpoints_np[dim] <= hi))
        if inside.size == 0:
            mids = disc.midpoints_np[dim]
            raise ValueError(f"obs_bounds: no bin of observation {dim} decodes into [{lo}, {hi}] "
                             f"(its bins decode to {mids.min():.4g} .. {mids.max():.4g})")
        lo_bin[dim], hi_bin[dim] = int(inside[0]), int(inside[-1])  # midpoints are sorted: a contiguous run
    return lo_bin, hi_bin


def keep_order(score: torch.Tensor, viol: torch.Tensor | None = None) -> torch.Tensor:
    """Candidates ranked best first by (fewest violations, highest score, lowest index); a NaN score ranks
    last (among its violation count). Stable sorts, so an exact tie (two children of one beam that sampled
    the same tokens score the same) goes to the lower index, as in the C kernel; ``torch.topk`` does not
    promise which tied index it returns (it differed from the C kernel on such ties)."""
    idx = torch.sort(torch.nan_to_num(score, nan=-torch.inf), descending=True, stable=True).indices
    idx = idx.index_select(0, torch.sort(score.index_select(0, idx).isnan().to(torch.uint8), stable=True).indices)
    if viol is not None:
        idx = idx.index_select(0, torch.sort(viol.index_select(0, idx), stable=True).indices)
    return idx


@dataclass(frozen=True)
class PlannerConfig:
    """Beam-search settings (defaults = official base config; see :mod:`ros_seqplanner.planning.presets`)."""

    horizon: int = 15
    beam_width: int = 128
    n_expand: int = 2
    discount: float = 0.99
    cdf_act: float | None = 0.6
    k_act: int | None = None
    k_obs: int = 1
    cdf_obs: float | None = None
    max_context_transitions: int = 5
    plan_freq: int = 1
    mode: str = "reward"
    obs_bounds: str | None = None
    # Not in the reference: a plan whose wall time reaches this budget (from the policy's act() call) starts no
    # further transition and returns the best beam of those done (at least one), as a shorter horizon would.
    time_budget_ms: float = 0.0  # 0: no budget

    def __post_init__(self) -> None:
        for name in ("horizon", "beam_width", "n_expand", "plan_freq"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"PlannerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_context_transitions < 0:
            raise ValueError(f"max_context_transitions must be >= 0, got {self.max_context_transitions}")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {self.discount}")
        if self.cdf_act is not None and not 0.0 <= self.cdf_act < 1.0:
            raise ValueError(f"cdf_act must be in [0, 1) or None, got {self.cdf_act}")
        if self.k_act is not None and self.k_act < 1:
            raise ValueError(f"k_act must be >= 1 or None, got {self.k_act}")
        if self.k_obs != 1 or self.cdf_obs is not None:
            raise ValueError("only greedy observation decoding is supported (k_obs=1, cdf_obs=None), "
                             "as in every official preset")
        if not (self.time_budget_ms >= 0.0 and math.isfinite(self.time_budget_ms)):
            raise ValueError(f"time_budget_ms must be >= 0 (0: none), got {self.time_budget_ms}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        parse_obs_bounds(self.obs_bounds)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def check_settings(cls, settings: Any, source: str) -> dict[str, Any]:
        """Validate partial settings (a checkpoint's ``"planner"`` object, ``--planner`` flags): known field
        names, values of the field's type, values a config accepts. Returns them as a new dict (ints as float
        where the field is a float). ``source`` names the settings in error messages."""
        names = sorted(cls.field_names())
        if not isinstance(settings, dict):
            raise ValueError(f"{source} must be an object of {names}, got {type(settings).__name__}")
        if set(settings) - set(names):
            raise ValueError(f"{source}: unknown {sorted(set(settings) - set(names))}; known: {names}")
        hints = typing.get_type_hints(cls)
        out: dict[str, Any] = {}
        for key, value in settings.items():
            allowed = typing.get_args(hints[key]) or (hints[key],)
            if isinstance(value, np.generic):  # numpy scalars from callers' arrays
                value = value.item()
            if float in allowed and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if isinstance(value, bool) or not isinstance(value, allowed):  # no field is a bool
                want = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
                raise ValueError(f"{source}: {key} must be {want}, got {value!r}")
            out[key] = value
        try:
            cls(**out)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from e
        return out


@dataclass
class Plan:
    """De-tokenised best beam. Row k is transition k of the plan: ``observations[0]`` is the (tokenised)
    current observation, ``observations[k>0]`` predicted; rewards/values are the decoded greedy tokens.
    ``tokens`` are per-dimension bins (H, D); ``score`` the beam's search score; ``violations`` how many
    predicted observation values leave ``PlannerConfig.obs_bounds``."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    values: np.ndarray
    tokens: np.ndarray
    score: float
    violations: int = 0


def decode_plan(bins: torch.Tensor, score: torch.Tensor | float, disc: Discretizer, obs_dim: int, act_dim: int,
                violations: int = 0) -> Plan:
    """(H, D) bins of one beam -> :class:`Plan` (float32 arrays)."""
    b = bins.detach().cpu().numpy()
    x = disc.decode(b).astype(np.float32)
    o, a = obs_dim, act_dim
    return Plan(x[:, :o], x[:, o:o + a], x[:, o + a], x[:, o + a + 1], b, float(score), int(violations))


def make_decoder(model: TrajectoryTransformer, dtype: torch.dtype | None, static: bool, cuda_graphs: bool | None,
                 kernel: str) -> BeamDecoder | CBeamDecoder:
    """The decoder for ``kernel`` (``auto`` | ``c`` | ``torch``; see :class:`BeamPlanner`)."""
    if kernel not in ("auto", "c", "torch"):
        raise ValueError(f"kernel must be 'auto', 'c' or 'torch', got {kernel!r}")
    fits = model.head.device.type == "cpu" and (dtype or model.head.dtype) == torch.float32 and not static
    if kernel == "c" and not fits:
        raise ValueError("kernel 'c' needs a CPU float32 model and dynamic shapes (static=False)")
    if kernel != "torch" and fits:
        lib = ckernel.load_kernel()
        if lib is not None:
            return CBeamDecoder(model, lib)
        if kernel == "c":
            raise RuntimeError(ckernel.LOAD_ERROR or "C kernel unavailable")
    return BeamDecoder(model, dtype, static=static, cuda_graphs=cuda_graphs)


def context_capacity(model_max_transitions: int, max_context_transitions: int) -> int:
    """Context transitions kept before a plan: at most ``max_context_transitions``, and one transition less
    than the model's block so that the plan's first transition fits after them."""
    return min(max_context_transitions, model_max_transitions - 1)


def window_transitions(model_max_transitions: int, max_context_transitions: int) -> int:
    """Transitions a moved window starts with (each beam's last ones): the context's length, at least one."""
    return max(1, context_capacity(model_max_transitions, max_context_transitions))


def needs_reencode(model_max_transitions: int, horizon: int, max_context_transitions: int) -> bool:
    """Whether a full-context plan of ``horizon`` transitions outgrows the model's block (window re-encode)."""
    return context_capacity(model_max_transitions, max_context_transitions) + horizon > model_max_transitions


class BeamPlanner:
    """Batched, K/V-cached TT beam search. Reuse one instance: decoder buffers are kept across plans."""

    def __init__(self, model: TrajectoryTransformer, discretizer: Discretizer, config: PlannerConfig,
                 dtype: torch.dtype | None = None, static: bool | None = None,
                 cuda_graphs: bool | None = None, kernel: str = "auto") -> None:
        """``dtype``: decoder dtype (default: the model's; use bfloat16 on CUDA). ``static``: static-shape
        decoding (default: on CUDA only); ``cuda_graphs``: capture it into CUDA graphs (default: when
        static on CUDA; untested on the dev machine). ``kernel``: ``"c"`` the fused C decoder step
        (:mod:`~ros_seqplanner.planning.ckernel`; CPU, fp32, dynamic shapes), ``"torch"`` the torch decoder,
        ``"auto"`` (default) C where it applies and builds, else torch. Both give the same plans."""
        cfg = model.cfg
        if discretizer.dim != cfg.transition_dim or discretizer.n_bins != cfg.n_bins:
            raise ValueError(f"discretizer ({discretizer.dim} x {discretizer.n_bins}) does not fit the model "
                             f"({cfg.transition_dim} x {cfg.n_bins})")
        if config.mode == "goal" and not cfg.goal_conditioned:
            raise ValueError("mode 'goal' needs a goal-conditioned model (TTConfig.goal_conditioned=True)")
        if config.mode != "goal" and cfg.goal_conditioned:
            raise ValueError("this model is goal-conditioned: use mode 'goal'")
        self.model = model.eval()
        self.disc = discretizer
        self.config = config
        self.device = model.head.device
        if static is None:
            static = self.device.type == "cuda"
        self.context_transitions = context_capacity(cfg.max_transitions, config.max_context_transitions)
        self.reencode = needs_reencode(cfg.max_transitions, config.horizon, config.max_context_transitions)
        self._keep = window_transitions(cfg.max_transitions, config.max_context_transitions)
        if self.reencode and kernel == "c":
            raise ValueError(f"kernel 'c' plans within one block: context {self.context_transitions} + horizon "
                             f"{config.horizon} > the model's {cfg.max_transitions} transitions; use 'torch'/'auto'")
        self.decoder = make_decoder(model, dtype, static, cuda_graphs, "torch" if self.reencode else kernel)
        self.kernel = "c" if isinstance(self.decoder, CBeamDecoder) else "torch"
        mids = discretizer.midpoints.to(self.device)
        self._mid_r, self._mid_v = mids[-2].contiguous(), mids[-1].contiguous()
        self._bounds = bound_bins(parse_obs_bounds(config.obs_bounds), discretizer, cfg.obs_dim)
        self.last_stats: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------ helpers
    def decode_steps(self) -> int:
        """Sequential decoder calls per plan (excluding the prefill; each window move replaces one of them, a value
        token's, by a batched prefill)."""
        c = self.model.cfg
        return self.config.horizon * c.transition_dim - c.obs_dim - 1

    def check_prefix(self, prefix: torch.Tensor) -> torch.Tensor:
        """Validate a prefix of global ids: whole transitions then one observation; keep the last
        :attr:`context_transitions` transitions. Returns (T0,) int64 on the planner's device."""
        c = self.model.cfg
        d, o = c.transition_dim, c.obs_dim
        prefix = torch.as_tensor(prefix, dtype=torch.long, device=self.device).reshape(-1)
        if prefix.numel() < o or (prefix.numel() - o) % d:
            raise ValueError(f"prefix must be k*{d} context tokens + {o} observation tokens, got {prefix.numel()}")
        n_ctx = (prefix.numel() - o) // d
        keep = min(n_ctx, self.context_transitions)
        return prefix[(n_ctx - keep) * d:]

    # ------------------------------------------------------------------------------------------ planning
    @torch.inference_mode()
    def plan(self, prefix: torch.Tensor, generator: torch.Generator, goal: torch.Tensor | None = None,
             deadline: float | None = None) -> Plan:
        """Plan from ``prefix`` (T0,) global token ids ending with the current observation's O tokens.
        ``goal`` (O,) global ids of the goal observation (mode 'goal'). ``deadline``: a ``time.monotonic()``
        time after which no further transition is started; the plan then has fewer than ``horizon`` rows and
        equals the plan with that shorter horizon. Returns the best :class:`Plan`."""
        cfg, mc = self.config, self.model.cfg
        t_start = time.perf_counter()
        prefix = self.check_prefix(prefix)
        if (goal is None) != (cfg.mode != "goal"):
            raise ValueError("a goal is required in mode 'goal' and not allowed otherwise")
        if goal is not None:
            goal = torch.as_tensor(goal, dtype=torch.long, device=self.device).reshape(1, -1)
        o, a, d, n = mc.obs_dim, mc.act_dim, mc.transition_dim, mc.n_bins
        h_steps, w, e = cfg.horizon, cfg.beam_width, cfg.n_expand
        b = w * e
        logp_mode = cfg.mode != "reward"
        dev = self.device

        u = torch.rand((h_steps, b, a), generator=generator, device=dev)
        pre = self.model.prefill(prefix.unsqueeze(0), goal)
        dec = self.decoder
        dec.set_prefix(pre)
        max_hist = (h_steps - 1) * (d - 1)
        if self.reencode:  # a re-encoded window (goal keys included) grows until the block is full
            max_hist = max(max_hist, (0 if goal is None else o) + mc.max_transitions * (d - 1))
        dec.allocate(w, e, max(1, max_hist), a + 1)

        first_obs = prefix[-o:] - n * torch.arange(o, device=dev)
        discounts = cfg.discount ** torch.arange(h_steps + 1, device=dev, dtype=torch.float32)
        if isinstance(dec, CBeamDecoder):  # the same loop as below, in C: no Python between tokens
            best, best_score, n_viol = dec.plan(pre.last_logits, first_obs, u, discounts, (self._mid_r, self._mid_v),
                                                prefix.numel(), w, e, cfg.cdf_act, cfg.k_act, logp_mode, self._bounds,
                                                deadline)
            plan = decode_plan(best, best_score, self.disc, o, a, n_viol)
            self.last_stats = {"plan_ms": (time.perf_counter() - t_start) * 1e3,
                               "context_tokens": float(prefix.numel()), "horizon_planned": float(len(best))}
            return plan
        expand_idx = torch.arange(w, device=dev).repeat_interleave(e)  # candidate -> parent beam
        bins = torch.zeros(w, h_steps, d, dtype=torch.long, device=dev)
        bins[:, 0, :o] = first_obs
        rewards = torch.zeros(w, h_steps + 1, device=dev)
        score = torch.zeros(w, device=dev)
        viol = None if self._bounds is None else torch.zeros(w, dtype=torch.long, device=dev)
        lo_bin, hi_bin = (None, None) if self._bounds is None else (x.to(dev) for x in self._bounds)
        logits = pre.last_logits.expand(w, -1)
        pos = prefix.numel()
        hist_len = 0
        for t in range(h_steps):
            # ---- expand, then actions (sampled) and reward/value (greedy) for every candidate
            logits = logits.index_select(0, expand_idx)
            cand_score = score.index_select(0, expand_idx) if logp_mode else None
            step_tokens = []
            for j in range(a):
                c = sample_bins(logits[:, :n], u[t, :, j], cfg.cdf_act, cfg.k_act)
                if logp_mode:
                    cand_score = cand_score + token_logp(logits, c)
                step_tokens.append(c)
                logits = dec.step(c, pos, e, hist_len, j, "step")
                pos += 1
            r = greedy_bins(logits)
            r_hat = expectation(logits, self._mid_r)
            if logp_mode:
                cand_score = cand_score + token_logp(logits, r)
            step_tokens.append(r)
            logits = dec.step(r, pos, e, hist_len, a, "step")
            pos += 1
            v = greedy_bins(logits)
            step_tokens.append(v)
            if logp_mode:
                cand_score = cand_score + token_logp(logits, v)
            else:
                cand_rewards = rewards.index_select(0, expand_idx)
                cand_rewards[:, t] = r_hat
                cand_rewards[:, t + 1] = expectation(logits, self._mid_v)
                cand_score = cand_rewards @ discounts
            # ---- keep the top W, in candidate order (see the module docstring)
            cand_viol = None if viol is None else viol.index_select(0, expand_idx)
            top = keep_order(cand_score, cand_viol)[:w].sort().values
            score = cand_score.index_select(0, top)
            parent = expand_idx.index_select(0, top)
            if viol is not None:
                viol = cand_viol.index_select(0, top)
            bins = bins.index_select(0, parent)
            bins[:, t, o:] = torch.stack(step_tokens, dim=1).index_select(0, top)
            if not logp_mode:
                rewards = cand_rewards.index_select(0, top)
            if t == h_steps - 1:
                break
            if deadline is not None and time.monotonic() >= deadline:  # as if horizon = t + 1
                bins = bins[:, :t + 1]
                break
            # ---- next observation, greedy, at beam width (pos: the value token's position)
            if pos + d > mc.block_size:  # step t + 1 would not fit: move the window (module docstring)
                logits, pos, hist_len = self._reencode(prefix, bins[:, :t + 1], goal)
            else:
                dec.merge(parent, top, hist_len, a + 1)
                hist_len += a + 1
                logits = dec.step(bins[:, t, d - 1], pos, 1, hist_len, 0, None)  # value token: query only
                pos += 1
            obs_tokens = []
            for _ in range(o):
                c = greedy_bins(logits)
                if logp_mode:
                    score = score + token_logp(logits, c)
                obs_tokens.append(c)
                logits = dec.step(c, pos, 1, hist_len, 0, "hist")
                pos += 1
                hist_len += 1
            bins[:, t + 1, :o] = torch.stack(obs_tokens, dim=1)
            if viol is not None:
                nxt = bins[:, t + 1, :o]
                viol = viol + ((nxt < lo_bin) | (nxt > hi_bin)).sum(1)
        best = int(keep_order(score, viol)[0])
        plan = decode_plan(bins[best], score[best], self.disc, o, a, 0 if viol is None else int(viol[best]))
        self.last_stats = {"plan_ms": (time.perf_counter() - t_start) * 1e3, "context_tokens": float(prefix.numel()),
                           "horizon_planned": float(bins.shape[1])}
        return plan

    def _reencode(self, prefix: torch.Tensor, planned: torch.Tensor, goal: torch.Tensor | None
                  ) -> tuple[torch.Tensor, int, int]:
        """New window per beam: its last ``self._keep`` transitions (planned ones, topped up from the shared
        context), re-encoded at position 0 into the decoder's history. ``planned`` (W, t+1, D) bins of the
        kept beams. Returns the logits at the window's last (value) token, the next position, the history
        length."""
        mc = self.model.cfg
        d, n, w = mc.transition_dim, mc.n_bins, planned.shape[0]
        rows = planned[:, -self._keep:] + n * torch.arange(d, device=self.device)  # global ids
        window = rows.reshape(w, -1)
        short = self._keep - rows.shape[1]
        if short > 0:  # (with a block of few transitions) the window still reaches into the context
            ctx = prefix[:prefix.numel() - mc.obs_dim].reshape(-1, d)[-short:]
            window = torch.cat([ctx.reshape(1, -1).expand(w, -1), window], dim=1)
        pre = self.model.prefill(window, None if goal is None else goal.expand(w, -1))
        return pre.last_logits, window.shape[1], self.decoder.load_history(pre)


def plan_flops(model_cfg, config: PlannerConfig, prefix_len: int) -> float:
    """Multiply-add FLOPs (x2) of one plan by this planner: prefill + every decode step's linear layers,
    heads and attention over (valid prefix keys + the beam's cached tokens). Elementwise ops excluded."""
    mc = model_cfg
    c, n_l, d, o, a = mc.n_embd, mc.n_layer, mc.transition_dim, mc.obs_dim, mc.act_dim
    per_row = n_l * 2 * (c * 3 * c + c * c + 2 * c * 4 * c) + 2 * c * (mc.n_bins + 1)
    tp = prefix_len - prefix_len // d  # keys visible to planned tokens (value keys dropped)
    total = prefix_len * per_row + n_l * 4 * c * prefix_len * prefix_len / 2  # prefill (causal)
    w, b = config.beam_width, config.beam_width * config.n_expand
    keep = window_transitions(mc.max_transitions, config.max_context_transitions)
    hist, pos = 0, prefix_len
    for t in range(config.horizon):
        for s in range(a + 1):  # actions + reward at W*E rows
            total += b * (per_row + n_l * 4 * c * (tp + hist + s + 1))
        pos += a + 1
        if t == config.horizon - 1:
            break
        if pos + d > mc.block_size:  # window re-encode: W prefills of keep transitions, then no shared prefix
            n_win = keep * d
            total += w * (n_win * per_row + n_l * 4 * c * n_win * n_win / 2)
            tp, hist, pos = 0, n_win - keep, n_win
        else:
            hist += a + 1
            total += w * (per_row + n_l * 4 * c * (tp + hist))  # value token (query only)
            pos += 1
        for _ in range(o):
            hist += 1
            pos += 1
            total += w * (per_row + n_l * 4 * c * (tp + hist))
    return float(total)
