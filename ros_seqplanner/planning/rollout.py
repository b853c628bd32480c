"""Point predictions from a Trajectory Transformer, one token at a time (open-loop rollouts).

Used by the long-horizon prediction study (:mod:`ros_seqplanner.sim.long_horizon`) and by the TT policy's
latency compensation (:meth:`ros_seqplanner.policies.tt.TTPolicy.act_ahead`).
"""

from __future__ import annotations

import math

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
