"""Behaviour-cloning baseline: an MLP from the normalised state to the action, tanh-scaled to the bounds.

Same shape as the common offline-RL BC baseline (e.g. CORL ``any_percent_bc``: two hidden layers of
256 with ReLU, tanh output). Deviation: the output is scaled to arbitrary action bounds, and the
state normalisation statistics travel in the checkpoint metadata (applied by the policy).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ros_seqplanner.nets.bounds import ActionBoundsMixin
from ros_seqplanner.nets.checkpoint import CheckpointError, load_checkpoint, load_state_into, save_checkpoint
from ros_seqplanner.nets.config import config_from_dict


@dataclass(frozen=True)
class BCConfig(ActionBoundsMixin):
    obs_dim: int
    act_dim: int
    hidden: int = 256
    n_layer: int = 2  # hidden layers
    dropout: float = 0.0
    action_low: tuple[float, ...] = field(default=())  # empty = [-1, 1] per dimension
    action_high: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.obs_dim < 1 or self.act_dim < 1 or self.hidden < 1 or self.n_layer < 1:
            raise ValueError("obs_dim, act_dim, hidden and n_layer must be >= 1")
        self._check_action_bounds()


    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> BCConfig:
        return config_from_dict(cls, d)


class BCModel(nn.Module):
    """(B, O) normalised states -> (B, A) actions within the bounds."""

    def __init__(self, cfg: BCConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        width = cfg.obs_dim
        for _ in range(cfg.n_layer):
            layers += [nn.Linear(width, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = cfg.hidden
        layers.append(nn.Linear(width, cfg.act_dim))
        self.net = nn.Sequential(*layers)
        low, high = (torch.tensor(b, dtype=torch.float32) for b in cfg.bounds())
        self.register_buffer("act_mid", (high + low) / 2, persistent=False)
        self.register_buffer("act_half", (high - low) / 2, persistent=False)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(states)) * self.act_half + self.act_mid


def save_bc(path: str | Path, model: BCModel, meta: dict[str, Any]) -> Path:
    """Write a kind "bc" checkpoint; ``meta`` must carry obs_mean and obs_std."""
    missing = [k for k in ("obs_mean", "obs_std") if k not in meta]
    if missing:
        raise ValueError(f"BC checkpoint metadata lacks {missing}")
    low, high = model.cfg.bounds()
    full = {**meta, "kind": "bc", "config": model.cfg.to_dict(), "action_low": list(low),
            "action_high": list(high), "obs_dim": model.cfg.obs_dim, "act_dim": model.cfg.act_dim}
    return save_checkpoint(path, dict(model.state_dict()), full)


def load_bc(path: str | Path, device: str | torch.device = "cpu") -> tuple[BCModel, dict[str, Any]]:
    """Load a kind "bc" checkpoint into an eval-mode model; raises CheckpointError on any problem."""
    tensors, meta = load_checkpoint(path, kind="bc", device=device)
    missing = [k for k in ("config", "obs_mean", "obs_std") if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: BC checkpoint metadata lacks {missing}")
    try:
        cfg = BCConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid BC config in metadata ({e})") from e
    for key in ("obs_mean", "obs_std"):
        if len(meta[key]) != cfg.obs_dim:
            raise CheckpointError(f"{path}: {key} has {len(meta[key])} values, expected obs_dim={cfg.obs_dim}")
    model = BCModel(cfg)
    load_state_into(model, tensors, source=str(path))
    return model.to(device).eval(), meta
