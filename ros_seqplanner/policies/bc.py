"""Behaviour-cloning policy: one MLP forward per step, same interface as the TT and DT policies."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ros_seqplanner.nets.bc import BCModel, load_bc
from ros_seqplanner.nets.checkpoint import CheckpointError
from ros_seqplanner.policies.base import PolicyTimings, check_observation, obs_normaliser


class BCPolicy:
    """Implements :class:`ros_seqplanner.policies.base.Policy`; ignores rewards and episode options."""

    def __init__(self, model: BCModel, obs_mean: np.ndarray, obs_std: np.ndarray,
                 meta: dict[str, Any] | None = None) -> None:
        cfg = model.cfg
        self.model = model.eval()
        self.meta = meta or {}
        self.env_id = str(self.meta.get("env_id", ""))
        self.obs_dim, self.act_dim = cfg.obs_dim, cfg.act_dim
        self.action_low, self.action_high = (np.asarray(b, dtype=np.float32) for b in cfg.bounds())
        self.obs_mean, self.obs_std = obs_normaliser(obs_mean, obs_std, cfg.obs_dim)
        self.device = next(model.parameters()).device
        self.timings = PolicyTimings()

    def reset(self, **episode_options: Any) -> None:
        """Nothing to reset: BC is memoryless (``target_return``, ``seed`` etc. are accepted and ignored)."""

    @torch.inference_mode()
    def act(self, observation: np.ndarray, reward: float | None = None) -> np.ndarray:
        t0 = time.perf_counter()
        obs = check_observation(observation, self.obs_dim)
        x = torch.from_numpy((obs - self.obs_mean) / self.obs_std).to(self.device)
        out = self.model(x[None])[0].cpu().numpy()
        out = np.clip(out, self.action_low, self.action_high)
        self.timings = PolicyTimings(act_ms=(time.perf_counter() - t0) * 1e3, planned=True)
        return out

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", **_: Any) -> BCPolicy:
        model, meta = load_bc(path, device=device)
        try:
            return cls(model, np.asarray(meta["obs_mean"]), np.asarray(meta["obs_std"]), meta=meta)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: BC metadata is invalid ({e})") from e
