"""The plain in-memory episode container every trainer reads.

One :class:`Episode` holds T transitions (obs_t, action_t, reward_t) plus the observation reached
after the last step. ``terminated`` (a true terminal state: the robot fell) and ``truncated`` (a time
limit or a cut in the log) are kept distinct: only a termination ends the value-to-go with a
terminal state; a truncated episode could have continued.

:class:`EpisodeDataset` is a list of episodes plus what a checkpoint needs to know about its data
(env id, dataset id, action bounds, D4RL reference scores). Converters to/from flat D4RL-style arrays
live here so every I/O format shares one notion of episode boundaries.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class DatasetError(ValueError):
    """A dataset file or array set is malformed (missing keys, inconsistent lengths, NaNs)."""


@dataclass
class Episode:
    """T transitions of one episode. Arrays are float32; ``final_observation`` is obs_T."""

    observations: np.ndarray  # (T, O)
    actions: np.ndarray  # (T, A)
    rewards: np.ndarray  # (T,)
    terminated: bool = False  # the last step reached a true terminal state
    truncated: bool = False  # the episode was cut (time limit / end of log), not terminated
    final_observation: np.ndarray | None = None  # (O,) observation after the last action
    infos: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.observations = np.asarray(self.observations, dtype=np.float32)
        self.actions = np.asarray(self.actions, dtype=np.float32)
        self.rewards = np.asarray(self.rewards, dtype=np.float32).reshape(-1)
        if self.final_observation is not None:
            self.final_observation = np.asarray(self.final_observation, dtype=np.float32)
        t = len(self.rewards)
        if self.observations.ndim != 2 or self.actions.ndim != 2:
            raise DatasetError("observations and actions must be 2-D (T, dim)")
        if len(self.observations) != t or len(self.actions) != t:
            raise DatasetError(
                f"inconsistent episode lengths: observations {len(self.observations)}, "
                f"actions {len(self.actions)}, rewards {t}"
            )
        if t == 0:
            raise DatasetError("an episode needs at least one transition")
        if self.terminated and self.truncated:
            # gymnasium allows both; a true termination dominates for value-to-go.
            self.truncated = False

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    @property
    def episode_return(self) -> float:
        return float(self.rewards.sum(dtype=np.float64))

    def terminals(self) -> np.ndarray:
        """Per-step D4RL ``terminals`` flags: True only on the last step of a terminated episode."""
        flags = np.zeros(len(self), dtype=bool)
        flags[-1] = self.terminated
        return flags

    def timeouts(self) -> np.ndarray:
        """Per-step D4RL ``timeouts`` flags: True only on the last step of a truncated episode."""
        flags = np.zeros(len(self), dtype=bool)
        flags[-1] = self.truncated
        return flags

    def next_observations(self) -> np.ndarray:
        """(T, O) observations after each action (needs ``final_observation`` for the last)."""
        last = self.final_observation if self.final_observation is not None else self.observations[-1]
        return np.concatenate([self.observations[1:], last[None]], axis=0)


def value_to_go(rewards: np.ndarray, gamma: float, terminal_value: float = 0.0) -> np.ndarray:
    """V_t = sum_{k>=1} gamma^(k-1) r_{t+k}: discounted sum of the rewards *after* step t.

    This is the Trajectory Transformer's convention (the value token at t excludes r_t, which has its
    own token). ``terminal_value`` bootstraps past the last step (0 for terminated or unknown).
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    out = np.empty_like(rewards)
    acc = float(terminal_value)
    for t in range(len(rewards) - 1, -1, -1):
        out[t] = acc
        acc = rewards[t] + gamma * acc
    return out.astype(np.float32)


@dataclass
class EpisodeDataset:
    """Episodes plus dataset metadata. ``env_id`` like 'HalfCheetah-v5'; ``dataset_id`` free-form."""

    episodes: list[Episode]
    env_id: str = ""
    dataset_id: str = ""
    action_low: np.ndarray | None = None
    action_high: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.episodes:
            raise DatasetError("a dataset needs at least one episode")
        o, a = self.episodes[0].obs_dim, self.episodes[0].act_dim
        for i, ep in enumerate(self.episodes):
            if ep.obs_dim != o or ep.act_dim != a:
                raise DatasetError(f"episode {i} has dims ({ep.obs_dim}, {ep.act_dim}), expected ({o}, {a})")
        if self.action_low is not None:
            self.action_low = np.asarray(self.action_low, dtype=np.float32).reshape(a)
        if self.action_high is not None:
            self.action_high = np.asarray(self.action_high, dtype=np.float32).reshape(a)

    def __len__(self) -> int:
        return len(self.episodes)

    def __iter__(self) -> Iterator[Episode]:
        return iter(self.episodes)

    @property
    def obs_dim(self) -> int:
        return self.episodes[0].obs_dim

    @property
    def act_dim(self) -> int:
        return self.episodes[0].act_dim

    @property
    def num_transitions(self) -> int:
        return sum(len(ep) for ep in self.episodes)

    def returns(self) -> np.ndarray:
        return np.array([ep.episode_return for ep in self.episodes], dtype=np.float64)

    def lengths(self) -> np.ndarray:
        return np.array([len(ep) for ep in self.episodes], dtype=np.int64)

    def concat(self, key: str) -> np.ndarray:
        """Concatenate a per-step array ('observations', 'actions', 'rewards') over episodes."""
        return np.concatenate([getattr(ep, key) for ep in self.episodes], axis=0)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Action bounds: the declared ones, else the data's min/max."""
        if self.action_low is not None and self.action_high is not None:
            return self.action_low, self.action_high
        acts = self.concat("actions")
        return acts.min(axis=0), acts.max(axis=0)

    def to_flat(self) -> dict[str, np.ndarray]:
        """D4RL-style flat arrays: observations, actions, rewards, terminals, timeouts, next_observations."""
        return {
            "observations": self.concat("observations"),
            "actions": self.concat("actions"),
            "rewards": self.concat("rewards"),
            "terminals": np.concatenate([ep.terminals() for ep in self.episodes]),
            "timeouts": np.concatenate([ep.timeouts() for ep in self.episodes]),
            "next_observations": np.concatenate([ep.next_observations() for ep in self.episodes]),
        }

    @classmethod
    def from_flat(cls, arrays: dict[str, np.ndarray], **kwargs: Any) -> EpisodeDataset:
        """Split flat D4RL-style arrays into episodes on ``terminals | timeouts``.

        A trailing run with neither flag (a log cut mid-episode) becomes a truncated episode.
        """
        required = ("observations", "actions", "rewards", "terminals")
        missing = [k for k in required if k not in arrays]
        if missing:
            raise DatasetError(f"missing keys {missing}; have {sorted(arrays)}")
        obs = np.asarray(arrays["observations"])
        n = len(obs)
        timeouts = np.asarray(arrays.get("timeouts", np.zeros(n, dtype=bool))).astype(bool).reshape(-1)
        terminals = np.asarray(arrays["terminals"]).astype(bool).reshape(-1)
        acts = np.asarray(arrays["actions"])
        rews = np.asarray(arrays["rewards"]).reshape(-1)
        next_obs = arrays.get("next_observations")
        lengths = {"observations": n, "actions": len(acts), "rewards": len(rews),
                   "terminals": len(terminals), "timeouts": len(timeouts)}
        if next_obs is not None:
            lengths["next_observations"] = len(next_obs)
        if len(set(lengths.values())) != 1:
            raise DatasetError(f"inconsistent array lengths: {lengths}")
        ends = np.flatnonzero(terminals | timeouts)
        episodes, start = [], 0
        for end in list(ends) + ([n - 1] if (len(ends) == 0 or ends[-1] != n - 1) else []):
            sl = slice(start, end + 1)
            episodes.append(Episode(
                observations=obs[sl], actions=acts[sl], rewards=rews[sl],
                terminated=bool(terminals[end]), truncated=not bool(terminals[end]),
                final_observation=None if next_obs is None else next_obs[end],
            ))
            start = end + 1
        return cls(episodes=episodes, **kwargs)
