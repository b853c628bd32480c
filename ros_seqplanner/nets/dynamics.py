"""Single-step MLP dynamics model ``(s, a) -> (s', r)``: the baseline for the long-horizon prediction claim.

The TT paper (Janner et al., 2021, Fig. 2) compares the Trajectory Transformer's open-loop predictions with a
"single-step feedforward Gaussian dynamics model" of the kind used in model-based RL (PETS/MBPO-style MLPs).
This is a deterministic version: the MLP sees the standardised state and action and predicts the
standardised state *change* and the reward; un-standardising happens inside :meth:`MLPDynamics.forward`, so
callers work in raw units. Deviation: no Gaussian head / ensemble (point prediction, MSE loss), which is
what an open-loop mean rollout uses anyway.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ros_seqplanner.nets.checkpoint import CheckpointError, load_checkpoint, load_state_into, save_checkpoint
from ros_seqplanner.nets.config import config_from_dict

STAT_NAMES = ("obs_mean", "obs_std", "act_mean", "act_std", "delta_mean", "delta_std", "rew_mean", "rew_std")


@dataclass(frozen=True)
class DynamicsConfig:
    obs_dim: int
    act_dim: int
    hidden: int = 256
    n_layer: int = 3  # hidden layers

    def __post_init__(self) -> None:
        for name in ("obs_dim", "act_dim", "hidden", "n_layer"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DynamicsConfig.{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DynamicsConfig:
        return config_from_dict(cls, d)


class MLPDynamics(nn.Module):
    """(B, O) states, (B, A) actions -> (B, O) next states, (B,) rewards, all in raw units.

    Normalisation statistics are buffers (saved with the weights); :meth:`set_stats` fills them.
    """

    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        o, a = cfg.obs_dim, cfg.act_dim
        layers: list[nn.Module] = []
        width = o + a
        for _ in range(cfg.n_layer):
            layers += [nn.Linear(width, cfg.hidden), nn.SiLU()]
            width = cfg.hidden
        layers.append(nn.Linear(width, o + 1))
        self.net = nn.Sequential(*layers)
        for name, size in zip(STAT_NAMES, (o, o, a, a, o, o, 1, 1)):
            self.register_buffer(name, torch.zeros(size) if name.endswith("mean") else torch.ones(size))

    def set_stats(self, **stats: Any) -> None:
        """Set the normalisation buffers (any subset of :data:`STAT_NAMES`); stds must be positive."""
        for name, value in stats.items():
            if name not in STAT_NAMES:
                raise ValueError(f"unknown statistic {name!r}; known: {STAT_NAMES}")
            t = torch.as_tensor(value, dtype=torch.float32).reshape(getattr(self, name).shape)
            if name.endswith("std") and not bool((t > 0).all()):
                raise ValueError(f"{name} must be positive")
            getattr(self, name).copy_(t)

    def normalized(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Raw inputs -> (B, O + 1) standardised [delta, reward] prediction (what the loss sees)."""
        if obs.shape[-1] != self.cfg.obs_dim or act.shape[-1] != self.cfg.act_dim:
            raise ValueError(f"expected obs (..., {self.cfg.obs_dim}) and act (..., {self.cfg.act_dim}), "
                             f"got {tuple(obs.shape)} and {tuple(act.shape)}")
        x = torch.cat([(obs - self.obs_mean) / self.obs_std, (act - self.act_mean) / self.act_std], dim=-1)
        return self.net(x)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.normalized(obs, act)
        o = self.cfg.obs_dim
        next_obs = obs + out[..., :o] * self.delta_std + self.delta_mean
        reward = out[..., o] * self.rew_std[0] + self.rew_mean[0]
        return next_obs, reward

    def targets(self, obs: torch.Tensor, next_obs: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
        """Raw (s, s', r) -> the standardised targets matching :meth:`normalized`."""
        delta = (next_obs - obs - self.delta_mean) / self.delta_std
        return torch.cat([delta, ((reward - self.rew_mean) / self.rew_std).unsqueeze(-1)], dim=-1)


def save_dynamics(path: str | Path, model: MLPDynamics, meta: dict[str, Any] | None = None) -> Path:
    """Write a kind "mlp_dynamics" checkpoint (stats are in the weights file); returns the JSON path."""
    full = {**(meta or {}), "kind": "mlp_dynamics", "config": model.cfg.to_dict(),
            "obs_dim": model.cfg.obs_dim, "act_dim": model.cfg.act_dim}
    return save_checkpoint(path, dict(model.state_dict()), full)


def load_dynamics(path: str | Path, device: str | torch.device = "cpu") -> tuple[MLPDynamics, dict[str, Any]]:
    """Load an eval-mode :class:`MLPDynamics`; raises CheckpointError on any problem."""
    tensors, meta = load_checkpoint(path, kind="mlp_dynamics", device="cpu")
    try:
        cfg = DynamicsConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad dynamics config in metadata ({e})") from e
    model = MLPDynamics(cfg)
    load_state_into(model, tensors, source=str(path))
    return model.to(device).eval(), meta
