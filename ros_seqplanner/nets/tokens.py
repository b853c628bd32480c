"""Turn episodes into Trajectory Transformer tokens and fixed-length training windows.

A transition t is the D = O + A + 2 vector ``[obs_t, action_t, r_t, V_t]`` with the value-to-go
``V_t = sum_{k>=1} gamma^(k-1) r_{t+k}`` (rewards *after* t; ``data.episodes.value_to_go``). Each dimension is
discretized independently and token id = bin + N * (dimension index); the single STOP id is N * D.

Episode ends (``terminated`` / ``truncated`` kept apart by :class:`~ros_seqplanner.data.episodes.Episode`):

- a true termination adds ``termination_penalty`` (default -100, as in the official code) to the last reward
  before values are computed, and a training window that reaches the end of such an episode gets a STOP token
  right after its last transition, which is a training target (the model learns to predict termination);
- a time-limit truncation is not a termination: no penalty, no STOP target; the window is padded and the
  padding is masked out of the loss. The value-to-go at a truncated end bootstraps with 0, i.e. rewards past
  the cut are ignored. This is exactly what the official code does (its values are sums within the stored
  path); it under-estimates V near time limits, which matters little for 1000-step locomotion episodes.

Deviation: the official code fills *every* position after a termination with the stop token and trains on
all of them; here only the first STOP after the terminal transition is a target, the rest is masked padding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ros_seqplanner.data.episodes import Episode, EpisodeDataset, value_to_go
from ros_seqplanner.nets.discretizer import Discretizer


def episode_transitions(ep: Episode, gamma: float = 0.99, termination_penalty: float = -100.0) -> np.ndarray:
    """(T, D) float32 ``[obs, action, reward, value_to_go]`` for one episode (penalty on a true termination)."""
    rewards = ep.rewards.astype(np.float64).copy()
    if ep.terminated and termination_penalty:
        rewards[-1] += termination_penalty
    values = value_to_go(rewards, gamma)  # terminal_value 0 for terminations and truncations (see module doc)
    return np.concatenate([ep.observations, ep.actions, rewards[:, None], values[:, None]], axis=1).astype(np.float32)


def dataset_transitions(dataset: EpisodeDataset, gamma: float = 0.99,
                        termination_penalty: float = -100.0) -> list[np.ndarray]:
    return [episode_transitions(ep, gamma, termination_penalty) for ep in dataset]


def fit_discretizer(dataset: EpisodeDataset, n_bins: int = 100, strategy: str = "quantile", gamma: float = 0.99,
                    termination_penalty: float = -100.0) -> Discretizer:
    """Fit a per-dimension discretizer on every transition (obs, action, reward, value) of ``dataset``.

    Quantile strategy with terminations: the penalised terminal rewards get the lowest reward bin to
    themselves (see :func:`isolate_terminal_rewards`)."""
    per_episode = dataset_transitions(dataset, gamma, termination_penalty)
    joined = np.concatenate(per_episode, axis=0)
    disc = Discretizer.fit(joined, n_bins=n_bins, strategy=strategy)
    if strategy != "quantile" or not termination_penalty or n_bins < 3:
        return disc
    r = dataset.obs_dim + dataset.act_dim
    last = np.cumsum([len(t) for t in per_episode]) - 1
    terminal = np.zeros(len(joined), dtype=bool)
    terminal[last[[ep.terminated for ep in dataset]]] = True
    edges = isolate_terminal_rewards(joined[:, r], terminal, n_bins)
    if edges is None:
        return disc
    all_edges = disc.edges.copy()
    all_edges[r] = edges
    return Discretizer(all_edges, strategy)


def isolate_terminal_rewards(rewards: np.ndarray, terminal: np.ndarray, n_bins: int) -> np.ndarray | None:
    """Reward edges whose bin 0 holds only the penalised terminal rewards (None if that is not needed).

    Deviation from the official code. With equal-mass bins and ~0.2 % terminal transitions (hopper), the
    lowest reward bin spans [penalty, ~1]: it also holds every ordinary reward of its 1 % quantile (the
    standing start of each episode), and its midpoint (~penalty / 2) makes the planner believe those
    steps are catastrophic (the hopper then falls within 11 steps). The official code avoids this only
    by accident: it fits on zero-padded sequences, so padding zeros fill the low bins. Here bin 0 is
    [min terminal reward, min ordinary reward] and the other N-1 bins are quantiles of the ordinary rewards."""
    if not terminal.any() or terminal.all():
        return None
    ordinary, term = rewards[~terminal].astype(np.float64), rewards[terminal].astype(np.float64)
    if term.max() >= ordinary.min():
        return None  # penalty does not separate the terminal rewards: keep the plain quantiles
    rest = np.maximum.accumulate(np.quantile(ordinary, np.linspace(0.0, 1.0, n_bins)))
    rest[0], rest[-1] = ordinary.min(), ordinary.max()
    return np.concatenate([[term.min()], rest])


def bins_to_tokens(bins: np.ndarray | torch.Tensor, n_bins: int, start_dim: int = 0) -> np.ndarray | torch.Tensor:
    """(..., d) per-dimension bins of dims [start_dim, start_dim + d) -> global token ids."""
    d = bins.shape[-1]
    offs = (np.arange(start_dim, start_dim + d) * n_bins)
    if isinstance(bins, torch.Tensor):
        return bins + torch.as_tensor(offs, device=bins.device)
    return np.asarray(bins, dtype=np.int64) + offs


def tokens_to_bins(tokens: np.ndarray | torch.Tensor, n_bins: int, start_dim: int = 0) -> np.ndarray | torch.Tensor:
    """Inverse of :func:`bins_to_tokens` (STOP tokens are not valid input)."""
    d = tokens.shape[-1]
    offs = (np.arange(start_dim, start_dim + d) * n_bins)
    if isinstance(tokens, torch.Tensor):
        return tokens - torch.as_tensor(offs, device=tokens.device)
    return np.asarray(tokens, dtype=np.int64) - offs


def dataset_stats(dataset: EpisodeDataset) -> dict[str, Any]:
    """Small JSON-able summary stored with checkpoints."""
    rets, obs = dataset.returns(), dataset.concat("observations")
    return {
        "episodes": len(dataset), "transitions": dataset.num_transitions,
        "terminated": int(sum(ep.terminated for ep in dataset)),
        "truncated": int(sum(ep.truncated for ep in dataset)),
        "return_mean": float(rets.mean()), "return_std": float(rets.std()),
        "return_min": float(rets.min()), "return_max": float(rets.max()),
        "obs_low": obs.min(axis=0).tolist(), "obs_high": obs.max(axis=0).tolist(),
    }


class TrajectoryWindows(Dataset):
    """Fixed-length windows of ``max_transitions`` transitions, one window starting at every transition.

    Item i -> ``(x, y, mask)`` (and ``goal`` when ``goal_conditioned``): x = L = max_transitions * D input
    tokens, y = x shifted by one (y[p] = token p + 1), mask (L,) float32 = 1 where y is a real target.
    :meth:`batch` builds many windows at once (vectorised); the trainer samples with it directly.
    With ``goal_conditioned`` the goal is the episode's final observation (hindsight relabelling), encoded.
    """

    def __init__(self, dataset: EpisodeDataset, discretizer: Discretizer, max_transitions: int,
                 gamma: float = 0.99, termination_penalty: float = -100.0, goal_conditioned: bool = False) -> None:
        joined = dataset_transitions(dataset, gamma, termination_penalty)
        d = joined[0].shape[1]
        if discretizer.dim != d:
            raise ValueError(f"discretizer has {discretizer.dim} dims, transitions have {d}")
        if max_transitions < 1:
            raise ValueError("max_transitions must be >= 1")
        self.n_bins, self.transition_dim, self.max_transitions = discretizer.n_bins, d, max_transitions
        self.stop_token = self.n_bins * d
        flat = np.concatenate(joined, axis=0)
        ids = bins_to_tokens(discretizer.encode(flat), self.n_bins)
        self.tokens = ids.astype(np.int32 if self.stop_token < 2**31 else np.int64)  # (N_total, D); halves memory
        lengths = np.array([len(j) for j in joined])
        ends = np.cumsum(lengths)
        self.episode_end = np.repeat(ends, lengths)  # exclusive end row of each row's episode
        self._episode_first = ends - lengths  # first row of each episode
        self.terminated = np.repeat(np.array([ep.terminated for ep in dataset]), lengths)
        self.goal_conditioned = goal_conditioned
        if goal_conditioned:
            o = dataset.obs_dim
            finals = np.stack([ep.final_observation if ep.final_observation is not None else ep.observations[-1]
                               for ep in dataset])
            goal_bins = discretizer.encode_dims(finals.astype(np.float64), 0, o)
            self.goals = np.repeat(bins_to_tokens(goal_bins, self.n_bins), lengths, axis=0)

    @property
    def seq_len(self) -> int:
        return self.max_transitions * self.transition_dim

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[0] for t in self.batch(np.array([i])))

    def batch(self, starts: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Windows starting at global transition rows ``starts`` (B,) -> x, y (B, L) long, mask (B, L) float."""
        starts = np.asarray(starts, dtype=np.int64)
        if starts.size and (starts.min() < 0 or starts.max() >= len(self)):
            raise IndexError(f"window start out of range [0, {len(self)})")
        m, d, big_l = self.max_transitions, self.transition_dim, self.seq_len + 1
        rows = starts[:, None] + np.arange(m + 1)[None, :]  # one extra transition for the last target
        valid = rows < self.episode_end[starts][:, None]  # (B, m+1)
        tok = self.tokens[np.minimum(rows, len(self) - 1)]  # (B, m+1, D)
        tok = np.where(valid[..., None], tok, self.stop_token).reshape(len(starts), -1)[:, :big_l]
        real = np.repeat(valid, d, axis=1)[:, :big_l]
        n_real = real.sum(axis=1)
        stop_target = self.terminated[starts] & (n_real < big_l)
        target_ok = real.copy()
        target_ok[np.flatnonzero(stop_target), n_real[stop_target]] = True
        seq = torch.from_numpy(tok.astype(np.int64))
        out = (seq[:, :-1].contiguous(), seq[:, 1:].contiguous(),
               torch.from_numpy(target_ok[:, 1:].astype(np.float32)))
        if self.goal_conditioned:
            out = (*out, torch.from_numpy(self.goals[starts]))
        return out

    def termination_starts(self) -> np.ndarray:
        """Window starts (global rows) whose window holds the last transition of a terminated episode."""
        if not hasattr(self, "_termination_starts"):
            rows = np.arange(len(self))
            near_end = self.episode_end - rows <= self.max_transitions
            self._termination_starts = np.flatnonzero(self.terminated & near_end)
        return self._termination_starts

    def episode_starts(self) -> np.ndarray:
        """Window starts (global rows) at each episode's first transition, i.e. the windows that hold an
        episode's initial state at block position 0, as a plan at the start of an episode does."""
        return self._episode_first.copy()
