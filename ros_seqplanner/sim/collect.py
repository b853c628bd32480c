"""Offline dataset collection in MuJoCo, the way D4RL built its locomotion datasets.

Dataset kinds:

* ``random``        uniform random actions (seeded action-space sampling);
* ``medium``        the SAC policy saved when its evaluation return first reached the medium band;
* ``expert``        the best SAC policy of the run;
* ``medium-expert`` medium + expert episodes concatenated (D4RL: 50/50);
* ``medium-replay`` the SAC replay buffer up to the medium checkpoint (written by the trainer as
  ``medium_replay.hdf5``; here it is only converted).

Collection steps ``num_envs`` environments in lock-step (a plain loop over gymnasium envs, which
keeps episode ordering deterministic) with one batched actor call per step. Env ``i`` is seeded with
``seed + i`` at its first reset; later resets continue its RNG, so a run is reproducible for a seed.
Each env plays whole episodes: once the step budget is reached no new episode starts and the
running ones finish (nothing is cut artificially), so ``terminated`` / ``truncated`` are the env's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ros_seqplanner.data.episodes import Episode, EpisodeDataset
from ros_seqplanner.sim.envs import canonical_env_id, env_name, make_env

DATASET_KINDS = ("random", "medium", "expert", "medium-expert", "medium-replay")


class RandomPolicy:
    """Uniform random actions in the env bounds (batched, seeded)."""

    def __init__(self, action_low: np.ndarray, action_high: np.ndarray, seed: int = 0) -> None:
        self.action_low = np.asarray(action_low, dtype=np.float32)
        self.action_high = np.asarray(action_high, dtype=np.float32)
        self.rng = np.random.default_rng(seed)

    def act_batch(self, observations: np.ndarray) -> np.ndarray:
        n = len(observations)
        return self.rng.uniform(self.action_low, self.action_high, size=(n, len(self.action_low))).astype(np.float32)


@dataclass
class _Running:
    obs: list[np.ndarray]
    acts: list[np.ndarray]
    rews: list[float]


def collect_episodes(env_id: str, policy: Any, num_steps: int, num_envs: int = 8, seed: int = 0,
                     max_episode_steps: int | None = None, progress: bool = True,
                     desc: str | None = None) -> list[Episode]:
    """Roll ``policy.act_batch`` in ``num_envs`` envs until ``num_steps`` transitions are collected."""
    from tqdm import tqdm

    if num_steps <= 0 or num_envs <= 0:
        raise ValueError("num_steps and num_envs must be positive")
    kwargs = {"max_episode_steps": max_episode_steps} if max_episode_steps else {}
    envs = [make_env(env_id, **kwargs) for _ in range(num_envs)]
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]).astype(np.float32)
    running = [_Running([], [], []) for _ in envs]
    active = [True] * num_envs
    episodes: list[Episode] = []
    total = 0
    bar = tqdm(total=num_steps, desc=desc or f"collect {env_name(env_id)}", unit="step", disable=not progress)
    try:
        while any(active):
            idx = [i for i in range(num_envs) if active[i]]
            actions = policy.act_batch(obs[idx])
            finished = []
            for j, i in enumerate(idx):
                a = actions[j]
                nobs, r, term, trunc, _ = envs[i].step(a)
                run = running[i]
                run.obs.append(obs[i].copy())
                run.acts.append(np.asarray(a, dtype=np.float32))
                run.rews.append(float(r))
                obs[i] = nobs
                if term or trunc:
                    episodes.append(Episode(np.stack(run.obs), np.stack(run.acts), np.asarray(run.rews, np.float32),
                                            terminated=bool(term), truncated=bool(trunc) and not term,
                                            final_observation=np.asarray(nobs, dtype=np.float32)))
                    running[i] = _Running([], [], [])
                    finished.append(i)
            total += len(idx)
            bar.update(len(idx))
            for i in finished:  # decided after the whole lock-step, so the outcome is order-independent
                if total >= num_steps:
                    active[i] = False
                else:
                    obs[i] = envs[i].reset()[0]
    finally:
        bar.close()
        for e in envs:
            e.close()
    return episodes


def behaviour_checkpoint(env: str, level: str, models_dir: str | Path | None = None) -> Path:
    """Default checkpoint path for a level ('medium' / 'expert'): <models>/behaviour/<env>-<level>,
    with <models> the shipped models folder (ros_seqplanner.resources.models_dir) unless given."""
    from ros_seqplanner.resources import models_dir as shipped_models

    base = Path(models_dir) if models_dir is not None else shipped_models() / "behaviour"
    return base / f"{env_name(env)}-{level}"


def collect_dataset(env: str, kind: str, num_steps: int, num_envs: int = 8, seed: int = 0,
                    policy_path: str | Path | None = None, expert_path: str | Path | None = None,
                    noise: str = "policy", sigma: float = 0.1, replay_path: str | Path | None = None,
                    progress: bool = True, max_episode_steps: int | None = None) -> EpisodeDataset:
    """Build one dataset ``kind`` for ``env`` (see module docstring). Returns an EpisodeDataset."""
    from ros_seqplanner.data.d4rl_hdf5 import load_d4rl_hdf5
    from ros_seqplanner.data.scores import SCORE_LABEL
    from ros_seqplanner.policies.behaviour import BehaviourPolicy

    if kind not in DATASET_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose from {DATASET_KINDS}")
    env_id = canonical_env_id(env)
    probe = make_env(env_id)
    low, high = probe.action_space.low.astype(np.float32), probe.action_space.high.astype(np.float32)
    probe.close()
    dataset_id = f"{env_name(env_id)}-{kind}-v5"
    meta: dict[str, Any] = {"kind": kind, "seed": seed, "num_envs": num_envs, "score_label": SCORE_LABEL}

    def roll(path: str | Path, level: str, steps: int, s: int) -> list[Episode]:
        pol = BehaviourPolicy.from_checkpoint(path, noise=noise, sigma=sigma, seed=s)
        if canonical_env_id(pol.env_id or env_id) != env_id:
            raise ValueError(f"policy {path} was trained on {pol.env_id}, not {env_id}")
        meta[f"{level}_policy"] = {"path": str(path), "steps": pol.meta.get("steps"),
                                   "eval_mean_return": pol.meta.get("eval_mean_return")}
        return collect_episodes(env_id, pol, steps, num_envs, s, max_episode_steps, progress,
                                f"{level} {env_name(env_id)}")

    if kind == "random":
        meta["policy"] = "uniform random"
        episodes = collect_episodes(env_id, RandomPolicy(low, high, seed), num_steps, num_envs, seed,
                                    max_episode_steps, progress)
    elif kind == "medium-replay":
        if replay_path is None:
            raise ValueError("medium-replay needs --replay (the run's medium_replay.hdf5)")
        ds = load_d4rl_hdf5(replay_path, env_id=env_id, dataset_id=dataset_id)
        episodes = ds.episodes
        meta.update({"policy": "SAC replay buffer up to the medium checkpoint", "source": str(replay_path)})
    elif kind in ("medium", "expert"):
        meta.update({"policy": f"SAC {kind}", "noise": noise, "sigma": sigma})
        episodes = roll(policy_path or behaviour_checkpoint(env_id, kind), kind, num_steps, seed)
    else:  # medium-expert: half the budget each, different seeds
        meta.update({"policy": "SAC medium + SAC expert", "noise": noise, "sigma": sigma})
        episodes = roll(policy_path or behaviour_checkpoint(env_id, "medium"), "medium", num_steps // 2, seed)
        episodes += roll(expert_path or behaviour_checkpoint(env_id, "expert"), "expert",
                         num_steps - num_steps // 2, seed + 10_000)
    ds = EpisodeDataset(episodes=episodes, env_id=env_id, dataset_id=dataset_id, action_low=low,
                        action_high=high, metadata=meta)
    rets = ds.returns()
    meta.update({"num_episodes": len(ds), "num_steps": ds.num_transitions,
                 "return_mean": float(rets.mean()), "return_std": float(rets.std())})
    return ds


def save_dataset(ds: EpisodeDataset, fmt: str, out: str | Path | None = None, minari_id: str | None = None,
                 data_dir: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write ``ds`` as D4RL HDF5 (``fmt='hdf5'``, to ``out``) or Minari (``fmt='minari'``)."""
    if fmt == "hdf5":
        from ros_seqplanner.data.d4rl_hdf5 import save_d4rl_hdf5

        if out is None:
            raise ValueError("--out is required for the hdf5 format")
        out = Path(out)
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists (pass --overwrite)")
        return save_d4rl_hdf5(ds, out)
    if fmt == "minari":
        from ros_seqplanner.data.minari_io import save_minari

        return save_minari(ds, minari_id or f"seqplanner/{ds.dataset_id.rsplit('-v', 1)[0]}-v0", data_dir=data_dir,
                           overwrite=overwrite)
    raise ValueError(f"unknown format {fmt!r}; use hdf5 or minari")
