"""Which parts of a transition has a Trajectory Transformer learned? Per-group token cross-entropy.

The training loss is one weighted number (actions x5). This splits the same teacher-forced cross-entropy by
token group (observation, action, reward, value), unweighted, on windows drawn from a dataset, next to the
uniform baseline log(N + 1). It is a cheap check before a closed-loop evaluation: the planner samples its
candidate actions from the action distribution and scores beams by the reward and value tokens, so a group
near the uniform baseline predicts a planner that does not work. Stop targets are left out (every group
would share them); padded positions are masked as in training. :func:`start_token_losses` scores the same groups on
the windows that start an episode: a controller meets those first steps after every reset, but uniformly drawn
windows hold them rarely, and a model can be near-uniform there while its random-window numbers look fine.

The action group also has a floor: when the data came from one stochastic behaviour policy, no model can
predict its binned actions better than their conditional entropy given the state,
:func:`action_entropy_floor` (the policy's action dimensions are independent given the state, so the floor
of a token is the entropy of its own dimension).

The value tokens get a second check, :func:`value_fit`: the planner scores beams by the expected value token,
so that expectation must track the value target. It reports the correlation over all value tokens and, over
the last transitions before each termination (a fall, where the termination penalty pulls the target down),
the mean prediction next to the mean target: a model whose prediction stays at the data mean there cannot
steer the planner away from a fall that lies beyond its few-step horizon.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ros_seqplanner.data.episodes import EpisodeDataset
from ros_seqplanner.nets.discretizer import Discretizer
from ros_seqplanner.nets.tokens import TrajectoryWindows
from ros_seqplanner.nets.tt import TrajectoryTransformer

GROUPS = ("observation", "action", "reward", "value")


class SamplingPolicy(Protocol):
    def act_batch(self, observations: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class GroupLoss:
    """Teacher-forced prediction of one token group: mean cross-entropy (nats), top-1 accuracy, share of
    argmax bins within ``near`` bins of the target, and the number of target tokens."""

    cross_entropy: float
    accuracy: float
    within_near: float
    tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FallValue:
    """Mean value target and mean expected value token over the transitions ``first``..``last`` steps before a
    termination (1 = the terminal transition), in ``episodes`` terminated episodes long enough to have them."""

    first: int
    last: int
    target: float
    predicted: float
    episodes: int


@dataclass(frozen=True)
class ValueFit:
    """The expected value token (bin midpoints under the predicted distribution) against the value target.

    ``r``: Pearson correlation over the value tokens of random windows (``tokens`` of them; nan when either side
    is constant), ``mean_target`` their mean target. ``fall_profile``: :class:`FallValue` for windows ending 0,
    2 and 4 window lengths before a termination (empty when the data has none), over ``falls`` terminated
    episodes. ``start_*``: the value token of each episode's first transition, predicted from the initial state
    and first action alone (as a plan at the start of an episode sees them), over ``starts`` episodes: mean
    target, mean prediction and mean absolute error.
    """

    r: float
    mean_target: float
    tokens: int
    falls: int
    fall_profile: tuple[FallValue, ...] = ()
    starts: int = 0
    start_target: float | None = None
    start_predicted: float | None = None
    start_error: float | None = None

    @property
    def fall_target(self) -> float | None:
        return self.fall_profile[0].target if self.fall_profile else None

    @property
    def fall_predicted(self) -> float | None:
        return self.fall_profile[0].predicted if self.fall_profile else None

    def to_dict(self) -> dict:
        return asdict(self)


def group_slices(obs_dim: int, act_dim: int) -> dict[str, tuple[int, int]]:
    """Dimension range [lo, hi) of each group inside a transition (observation, action, reward, value)."""
    o, a = obs_dim, act_dim
    return {"observation": (0, o), "action": (o, o + a), "reward": (o + a, o + a + 1), "value": (o + a + 1, o + a + 2)}


def tokenise_windows(model: TrajectoryTransformer, disc: Discretizer, dataset: EpisodeDataset, gamma: float,
                     termination_penalty: float) -> TrajectoryWindows:
    """``dataset`` tokenised as in training, with the checkpoint's ``disc``, ``gamma`` and penalty. Build it once
    and pass it as ``tokens`` to the checks below to score one dataset several ways without re-tokenising."""
    cfg = model.cfg
    if (cfg.obs_dim, cfg.act_dim) != (dataset.obs_dim, dataset.act_dim):
        raise ValueError(f"dataset dims ({dataset.obs_dim}, {dataset.act_dim}) do not match the model "
                         f"({cfg.obs_dim}, {cfg.act_dim})")
    return TrajectoryWindows(dataset, disc, cfg.max_transitions, gamma, termination_penalty,
                             goal_conditioned=cfg.goal_conditioned)


def _random_starts(data: TrajectoryWindows, windows: int, seed: int) -> np.ndarray:
    """Window starts at uniformly drawn transitions, as in training."""
    if windows < 1:
        raise ValueError(f"windows must be >= 1, got {windows}")
    return np.random.default_rng(seed).integers(0, len(data), windows)


@torch.no_grad()
def _teacher_forced(model: TrajectoryTransformer, data: TrajectoryWindows, starts: np.ndarray, batch_size: int
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (logits, target bin within its dimension, dimension, real-target mask) per batch of the windows
    of ``data`` starting at ``starts``."""
    cfg = model.cfg
    model.eval()
    device = next(model.parameters()).device
    for i in range(0, len(starts), batch_size):
        x, y, mask, *goal = (t.to(device) for t in data.batch(starts[i:i + batch_size]))
        logits = model(x, goal=goal[0] if goal else None)[0]
        dim = torch.arange(1, y.shape[1] + 1, device=device) % cfg.transition_dim  # target p is token p + 1
        yield logits, y - cfg.n_bins * dim, dim.expand_as(y), (mask > 0) & (y != cfg.stop_token)


def token_losses(model: TrajectoryTransformer, disc: Discretizer, dataset: EpisodeDataset, *, gamma: float,
                 termination_penalty: float, windows: int = 256, seed: int = 1, batch_size: int = 64,
                 near: int = 3, tokens: TrajectoryWindows | None = None) -> dict[str, GroupLoss]:
    """Per-group cross-entropy of ``model`` on ``windows`` random windows of ``dataset`` (tokenised with the
    checkpoint's ``disc``, ``gamma`` and ``termination_penalty``). Windows start at uniformly drawn transitions
    (``seed``), as in training."""
    data = tokens if tokens is not None else tokenise_windows(model, disc, dataset, gamma, termination_penalty)
    return _group_losses(model, data, _random_starts(data, windows, seed), batch_size, near)


def start_token_losses(model: TrajectoryTransformer, disc: Discretizer, dataset: EpisodeDataset, *, gamma: float,
                       termination_penalty: float, windows: int = 256, seed: int = 1, batch_size: int = 64,
                       near: int = 3, tokens: TrajectoryWindows | None = None) -> dict[str, GroupLoss]:
    """:func:`token_losses` on the windows that start an episode (up to ``windows`` episodes, drawn with
    ``seed``): the first ``max_transitions`` steps, which a controller meets at every reset but uniform windows
    train on rarely (one window in L starts an episode of L steps)."""
    data = tokens if tokens is not None else tokenise_windows(model, disc, dataset, gamma, termination_penalty)
    return _group_losses(model, data, _episode_heads(data.episode_starts(), windows, seed), batch_size, near)


def _episode_heads(firsts: np.ndarray, windows: int, seed: int) -> np.ndarray:
    """Up to ``windows`` of the episode first rows ``firsts``, drawn without replacement (``seed``), ascending."""
    if windows < 1:
        raise ValueError(f"windows must be >= 1, got {windows}")
    return np.sort(np.random.default_rng(seed).permutation(firsts)[:windows])


def _group_losses(model: TrajectoryTransformer, data: TrajectoryWindows, starts: np.ndarray, batch_size: int,
                  near: int) -> dict[str, GroupLoss]:
    ce, hit, close, count = (np.zeros(len(GROUPS)) for _ in range(4))
    slices = group_slices(model.cfg.obs_dim, model.cfg.act_dim)
    for logits, local, dim, real in _teacher_forced(model, data, starts, batch_size):
        for g, name in enumerate(GROUPS):
            lo, hi = slices[name]
            sel = real & (dim >= lo) & (dim < hi)
            lg, tgt = logits[sel], local[sel]
            if tgt.numel() == 0:
                continue
            pred = lg.argmax(-1)
            ce[g] += F.cross_entropy(lg, tgt, reduction="sum").item()
            hit[g] += (pred == tgt).sum().item()
            close[g] += ((pred - tgt).abs() <= near).sum().item()
            count[g] += tgt.numel()
    with np.errstate(invalid="ignore", divide="ignore"):  # a group with no targets reports nan
        return {name: GroupLoss(*(float(v[g] / count[g]) for v in (ce, hit, close)), int(count[g]))
                for g, name in enumerate(GROUPS)}


def value_fit(model: TrajectoryTransformer, disc: Discretizer, dataset: EpisodeDataset, *, gamma: float,
              termination_penalty: float, windows: int = 256, seed: int = 1, batch_size: int = 64,
              tokens: TrajectoryWindows | None = None) -> ValueFit:
    """How well the expected value token tracks its target (see :class:`ValueFit`): on the random windows
    :func:`token_losses` scores (same ``seed``), and on windows that end 0, 2 and 4 window lengths before a
    termination (up to ``windows`` terminated episodes, drawn with ``seed``): a planner that looks a few steps
    ahead needs the value to drop well before the fall. Values in value units (bin midpoints)."""
    data = tokens if tokens is not None else tokenise_windows(model, disc, dataset, gamma, termination_penalty)
    pv, tv = _value_pairs(model, disc, data, _random_starts(data, windows, seed), batch_size)
    if len(tv) < 2:
        raise ValueError(f"{len(tv)} value token(s) in {windows} windows: too few to compare")
    r = float(np.corrcoef(pv, tv)[0, 1]) if pv.std() > 0 and tv.std() > 0 else float("nan")
    ends = np.unique(data.episode_end)  # exclusive end row of every episode, ascending
    firsts = data.episode_starts()  # first row of every episode, in the same order as ends
    fell = data.terminated[ends - 1]
    picks = np.random.default_rng(seed).permutation(np.flatnonzero(fell))[:windows]
    m, profile = model.cfg.max_transitions, []
    for gap in (0, 2 * m, 4 * m) if len(picks) else ():
        if gap == 0:  # the window that ends with the terminal transition (or the whole episode if shorter)
            starts = np.maximum(ends[picks] - m, firsts[picks])
        else:  # windows ending ``gap`` transitions before it, in episodes long enough to hold them
            starts = (ends[picks] - m - gap)[ends[picks] - m - gap >= firsts[picks]]
        if len(starts):
            pf, tf = _value_pairs(model, disc, data, starts, batch_size)
            profile.append(FallValue(gap + 1, gap + m, float(tf.mean()), float(pf.mean()), len(starts)))
    # The windows that start an episode (up to ``windows`` of them); each real transition of a window has one
    # value token, so a window's first value token sits after those of the windows before it.
    heads = _episode_heads(firsts, windows, seed)
    pv_h, tv_h = _value_pairs(model, disc, data, heads, batch_size)
    first = np.r_[0, np.cumsum(np.minimum(m, data.episode_end[heads] - heads))[:-1]]
    ps, ts = pv_h[first], tv_h[first]
    return ValueFit(r=r, mean_target=float(tv.mean()), tokens=len(tv), falls=len(picks), fall_profile=tuple(profile),
                    starts=len(ts), start_target=float(ts.mean()), start_predicted=float(ps.mean()),
                    start_error=float(np.abs(ps - ts).mean()))


def _value_pairs(model: TrajectoryTransformer, disc: Discretizer, data: TrajectoryWindows, starts: np.ndarray,
                 batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(expected value token, target value) for every real value token of the windows at ``starts``."""
    cfg = model.cfg
    vd = cfg.obs_dim + cfg.act_dim + 1
    mids = torch.as_tensor(disc.midpoints_np[vd], dtype=torch.float64)
    pred, target = [], []
    for logits, local, dim, real in _teacher_forced(model, data, starts, batch_size):
        sel = real & (dim == vd)
        p = torch.softmax(logits[sel][:, :cfg.n_bins].double(), dim=-1)  # the stop class is not a value
        pred.append((p * mids.to(p.device)).sum(-1).cpu())
        target.append(mids[local[sel].cpu()])
    return torch.cat(pred).numpy(), torch.cat(target).numpy()


def uniform_cross_entropy(n_bins: int) -> float:
    """Cross-entropy of a uniform prediction over the N bins + stop class the model outputs."""
    return math.log(n_bins + 1)


def action_entropy_floor(disc: Discretizer, obs_dim: int, act_dim: int, policy: SamplingPolicy,
                         observations: np.ndarray, *, states: int = 256, samples: int = 2000,
                         seed: int = 0) -> float:
    """Mean entropy (nats) of one binned action dimension given the state, under ``policy`` (a stochastic
    behaviour policy, e.g. ``BehaviourPolicy(noise="policy")``), over ``states`` observations drawn from
    ``observations``: the lowest action cross-entropy a model of this policy's data can reach. Monte Carlo with
    ``samples`` actions per state and the Miller-Madow correction of the plug-in estimate."""
    rng = np.random.default_rng(seed)
    obs = np.asarray(observations, dtype=np.float32)
    if obs.ndim != 2 or obs.shape[1] != obs_dim or len(obs) == 0:
        raise ValueError(f"observations must be a non-empty (N, {obs_dim}) array, got {obs.shape}")
    total = 0.0
    picks = obs[rng.integers(0, len(obs), states)]
    for s in picks:
        acts = np.asarray(policy.act_batch(np.repeat(s[None], samples, axis=0), rng), dtype=np.float64)
        bins = disc.encode_dims(acts, obs_dim, obs_dim + act_dim)
        for j in range(act_dim):
            p = np.bincount(bins[:, j], minlength=disc.n_bins) / samples
            p = p[p > 0]
            total += float(-(p * np.log(p)).sum()) + (len(p) - 1) / (2 * samples)
    return total / (states * act_dim)
