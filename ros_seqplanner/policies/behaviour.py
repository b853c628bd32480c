"""The SAC behaviour policy exported by ``seqplanner train behaviour`` (kind ``"behaviour"``).

The checkpoint holds only the actor MLP: ``hidden.i`` ReLU layers, then ``mu`` and ``log_std`` heads.
Deterministic action = ``tanh(mu)``; noisy action = ``tanh(mu + std * eps)`` (the policy's own
tanh-Gaussian, ``noise="policy"``) or ``clip(tanh(mu) + sigma * eps)`` (``noise="gaussian"``).
Actions are rescaled from [-1, 1] to the env bounds. Inference is plain numpy (float32) — no torch
needed at run time — and batched (:meth:`act_batch`) for vectorised collection.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ros_seqplanner.policies.base import PolicyTimings, check_observation

NOISE_MODES = ("none", "policy", "gaussian")


class BehaviourPolicy:
    """numpy MLP actor. ``noise``: none | policy | gaussian; ``sigma`` for gaussian; ``seed`` for the RNG."""

    def __init__(self, weights: dict[str, np.ndarray], meta: dict[str, Any], noise: str = "none",
                 sigma: float = 0.1, seed: int | None = 0) -> None:
        if noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {NOISE_MODES}, got {noise!r}")
        n_hidden = sum(1 for k in weights if k.startswith("hidden.") and k.endswith(".weight"))
        if n_hidden == 0 or "mu.weight" not in weights:
            raise ValueError("behaviour checkpoint needs hidden.*.weight and mu.weight tensors")
        self.layers = [(weights[f"hidden.{i}.weight"].T.copy(), weights[f"hidden.{i}.bias"]) for i in range(n_hidden)]
        self.mu = (weights["mu.weight"].T.copy(), weights["mu.bias"])
        self.log_std = None
        if "log_std.weight" in weights:
            self.log_std = (weights["log_std.weight"].T.copy(), weights["log_std.bias"])
        if noise == "policy" and self.log_std is None:
            raise ValueError("noise='policy' needs the log_std head, which this checkpoint lacks")
        self.meta = meta
        self.obs_dim = int(self.layers[0][0].shape[0])
        self.act_dim = int(self.mu[0].shape[1])
        self.action_low = np.asarray(meta.get("action_low", [-1.0] * self.act_dim), dtype=np.float32)
        self.action_high = np.asarray(meta.get("action_high", [1.0] * self.act_dim), dtype=np.float32)
        if self.action_low.shape != (self.act_dim,) or self.action_high.shape != (self.act_dim,):
            raise ValueError("action bounds in the checkpoint metadata do not match the actor's output size")
        self.log_std_clip = tuple(meta.get("log_std_clip", (-20.0, 2.0)))
        self.noise, self.sigma = noise, float(sigma)
        self.env_id = str(meta.get("env_id", ""))
        self._seed = seed
        self.rng = np.random.default_rng(seed)
        self.timings = PolicyTimings()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", **options: Any) -> BehaviourPolicy:
        """Load ``name.safetensors`` + ``name.json`` (kind ``behaviour``). ``device`` is accepted for the
        common interface; inference runs in numpy on the CPU."""
        from ros_seqplanner.nets.checkpoint import load_checkpoint

        unknown = set(options) - {"noise", "sigma", "seed"}
        if unknown:
            raise ValueError(f"unknown behaviour-policy options {sorted(unknown)}; known: noise, sigma, seed")
        tensors, meta = load_checkpoint(path, kind="behaviour")
        weights = {k: v.float().numpy() for k, v in tensors.items()}
        return cls(weights, meta, **options)

    def reset(self, **episode_options: Any) -> None:
        """New episode; ``seed=`` re-seeds the noise RNG. Other options are ignored (stateless policy)."""
        if episode_options.get("seed") is not None:
            self.rng = np.random.default_rng(int(episode_options["seed"]))

    def act(self, observation: np.ndarray, reward: float | None = None) -> np.ndarray:
        t0 = time.perf_counter()
        obs = check_observation(observation, self.obs_dim)
        action = self.act_batch(obs[None])[0]
        self.timings = PolicyTimings(act_ms=(time.perf_counter() - t0) * 1e3)
        return action

    def act_batch(self, observations: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """(N, O) -> (N, A) float32 actions in env bounds. ``rng`` overrides the policy's own RNG."""
        x = np.asarray(observations, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.obs_dim:
            raise ValueError(f"observations must have shape (N, {self.obs_dim}), got {x.shape}")
        rng = rng or self.rng
        for w, b in self.layers:
            x = np.maximum(x @ w + b, 0.0)
        mu = x @ self.mu[0] + self.mu[1]
        if self.noise == "policy":
            log_std = np.clip(x @ self.log_std[0] + self.log_std[1], *self.log_std_clip)
            a = np.tanh(mu + np.exp(log_std) * rng.standard_normal(mu.shape, dtype=np.float32))
        else:
            a = np.tanh(mu)
            if self.noise == "gaussian":
                a = np.clip(a + self.sigma * rng.standard_normal(a.shape, dtype=np.float32), -1.0, 1.0)
        a = self.action_low + (a + 1.0) * 0.5 * (self.action_high - self.action_low)
        return a.astype(np.float32)
