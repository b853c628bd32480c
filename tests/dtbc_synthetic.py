"""Tiny synthetic offline datasets shared by the DT and BC tests (no simulator needed)."""

from __future__ import annotations

import numpy as np

from ros_seqplanner.data.episodes import Episode, EpisodeDataset

OBS_DIM, ACT_DIM = 4, 2
LOW = np.array([-2.0, 0.0], dtype=np.float32)
HIGH = np.array([2.0, 1.0], dtype=np.float32)


def expert_action(obs: np.ndarray) -> np.ndarray:
    """A fixed smooth state -> action map inside the bounds (what BC/DT should learn)."""
    w = np.array([[0.9, -0.5, 0.3, 0.0], [0.2, 0.4, -0.7, 0.6]], dtype=np.float32)
    z = np.tanh(obs @ w.T)
    return (LOW + (z + 1.0) * 0.5 * (HIGH - LOW)).astype(np.float32)


def synthetic_dataset(n_episodes: int = 12, seed: int = 0, min_len: int = 8, max_len: int = 40) -> EpisodeDataset:
    """Episodes of varying length with offset/scaled states (so normalisation matters)."""
    rng = np.random.default_rng(seed)
    episodes = []
    for _ in range(n_episodes):
        t = int(rng.integers(min_len, max_len + 1))
        obs = (rng.normal(size=(t, OBS_DIM)) * np.array([1.0, 3.0, 0.5, 2.0]) + np.array([5.0, -2.0, 0.0, 1.0]))
        obs = obs.astype(np.float32)
        norm = (obs - np.array([5.0, -2.0, 0.0, 1.0])) / np.array([1.0, 3.0, 0.5, 2.0])
        act = expert_action(norm.astype(np.float32))
        rew = rng.normal(1.0, 0.5, size=t).astype(np.float32)
        episodes.append(Episode(observations=obs, actions=act, rewards=rew, truncated=True))
    return EpisodeDataset(episodes=episodes, env_id="Synthetic-v0", dataset_id="synthetic",
                          action_low=LOW, action_high=HIGH)
