"""Point predictions from a Trajectory Transformer, one token at a time (open-loop rollouts).

:func:`predict_transitions` serves both the long-horizon prediction study
(:func:`ros_seqplanner.sim.long_horizon.tt_open_loop`) and the TT policy's latency compensation
(:meth:`ros_seqplanner.policies.tt.TTPolicy.act_ahead`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ros_seqplanner.nets.tt import TrajectoryTransformer


class TokenStream:
    """Feeds tokens to a TT through its K/V cache, re-encoding a sliding window when the block is full.

    The window always starts at a transition boundary, so position p has dimension p % D as in training.
    """

    def __init__(self, model: TrajectoryTransformer) -> None:
        if model.cfg.goal_conditioned:
            raise ValueError("open-loop prediction needs a non-goal-conditioned TT")
        self.model = model
        self.seq: list[int] = []
        self.prefix = None
        self.cache = None
        self.reencodes = 0

    @property
    def next_dim(self) -> int:
        """Dimension of the next token to feed."""
        return len(self.seq) % self.model.cfg.transition_dim

    def feed(self, tokens: list[int]) -> torch.Tensor:
        """Append ``tokens``; returns the (N+1,) logits at the last one (they predict the next token)."""
        block, d = self.model.cfg.block_size, self.model.cfg.transition_dim
        if self.prefix is None or len(self.seq) + len(tokens) > block:
            self.seq += tokens
            if len(self.seq) > block:  # slide: drop whole transitions from the front
                self.seq = self.seq[math.ceil((len(self.seq) - block) / d) * d:]
                self.reencodes += 1
            dev = self.model.head.device
            self.prefix = self.model.prefill(torch.tensor(self.seq, device=dev)[None])
            self.cache = self.model.new_cache(1, max(1, block - len(self.seq)))
            return self.prefix.last_logits[0]
        logits = self.model.decode_many(torch.tensor([tokens], device=self.model.head.device), self.prefix, self.cache)
        self.seq += tokens
        return logits[0, -1]


DECODES = ("greedy", "median")


def pick_bin(logits: torch.Tensor, n_bins: int, decode: str = "greedy") -> int:
    """Point prediction of one token from its (N+1,) logits: the argmax or the median bin.

    The stop token is never a valid state/reward/value bin, so only the first ``n_bins`` logits count.
    """
    if decode == "greedy":
        return int(torch.argmax(logits[:n_bins]))
    if decode == "median":
        cdf = torch.cumsum(torch.softmax(logits[:n_bins].double(), dim=-1), dim=-1)
        return min(int(torch.searchsorted(cdf, torch.tensor([0.5], dtype=cdf.dtype))[0]), n_bins - 1)
    raise ValueError(f"unknown decode {decode!r}; expected one of {DECODES}")


@torch.no_grad()
def predict_transitions(model: TrajectoryTransformer, prefix_ids: list[int], act_ids: np.ndarray,
                        decode: str = "greedy",
                        value_id: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Open-loop point predictions after ``prefix_ids`` (global ids: whole transitions, then one observation):
    for each row of ``act_ids`` (L, A) global action ids, feed the actions and decode the reward, the value and
    the next observation token by token with :func:`pick_bin`, each fed back as input. ``value_id``: feed this
    value token instead of the decoded one (value tokens are masked out of attention, so no prediction depends on
    it). Returns global ids: rewards (L,), values fed (L,), observations (L, O), and the stream's re-encodes."""
    cfg = model.cfg
    n, o, a = cfg.n_bins, cfg.obs_dim, cfg.act_dim
    stream = TokenStream(model)
    logits = stream.feed([int(x) for x in prefix_ids])
    rewards = np.empty(len(act_ids), np.int64)
    values = np.empty(len(act_ids), np.int64)
    obs = np.empty((len(act_ids), o), np.int64)
    for t, acts in enumerate(act_ids):
        logits = stream.feed([int(x) for x in acts])  # the given actions; the logits now predict the reward
        rewards[t] = pick_bin(logits, n, decode) + n * (o + a)
        logits = stream.feed([int(rewards[t])])
        values[t] = pick_bin(logits, n, decode) + n * (o + a + 1) if value_id is None else value_id
        logits = stream.feed([int(values[t])])
        for j in range(o):
            if stream.next_dim != j:
                raise RuntimeError(f"token layout broken: expected dimension {j}, stream at {stream.next_dim}")
            obs[t, j] = pick_bin(logits, n, decode) + n * j
            logits = stream.feed([int(obs[t, j])])
    return rewards, values, obs, stream.reencodes
