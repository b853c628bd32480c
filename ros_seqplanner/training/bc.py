"""Behaviour-cloning baseline training: MSE regression of actions on normalised states.

Transitions are sampled uniformly (with replacement) from the whole dataset; AdamW with weight decay
on the Linear weights only (training/common.make_adamw), constant learning rate after a short linear
warm-up, optional grad-norm clipping.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ros_seqplanner.data.episodes import DatasetError, EpisodeDataset
from ros_seqplanner.nets.bc import BCConfig, BCModel, save_bc
from ros_seqplanner.training.common import linear_warmup, make_adamw, pick_device, seed_everything
from ros_seqplanner.training.dt import state_stats


@dataclass(frozen=True)
class BCTrainConfig:
    hidden: int = 256
    n_layer: int = 2
    dropout: float = 0.0
    batch_size: int = 256
    steps: int = 100_000
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 1000
    grad_clip: float = 1.0  # <= 0 disables
    seed: int = 0
    device: str = "auto"
    log_every: int = 100
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")


def fit_bc(dataset: EpisodeDataset, config: BCTrainConfig) -> tuple[BCModel, dict[str, Any]]:
    """Train the BC MLP; returns the eval-mode model and the checkpoint metadata."""
    device = pick_device(config.device)
    gen = seed_everything(config.seed)
    low, high = dataset.bounds()
    if np.any(high <= low):
        raise DatasetError(f"degenerate action bounds (high <= low somewhere): {low} vs {high}")
    obs_mean, obs_std = state_stats(dataset)
    obs_np = (dataset.concat("observations") - obs_mean) / obs_std
    act_np = dataset.concat("actions")
    if not (np.all(np.isfinite(obs_np)) and np.all(np.isfinite(act_np))):
        raise DatasetError("dataset contains NaN or Inf values")
    obs = torch.as_tensor(obs_np, dtype=torch.float32, device=device)
    act = torch.as_tensor(act_np, dtype=torch.float32, device=device)
    cfg = BCConfig(obs_dim=dataset.obs_dim, act_dim=dataset.act_dim, hidden=config.hidden,
                   n_layer=config.n_layer, dropout=config.dropout,
                   action_low=tuple(low.tolist()), action_high=tuple(high.tolist()))
    model = BCModel(cfg).to(device).train()
    opt = make_adamw(model, config.lr, (0.9, 0.999), config.weight_decay, device)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: linear_warmup(s, config.warmup_steps))
    history: list[tuple[int, float]] = []
    bar = tqdm(range(config.steps), desc="train bc", disable=not config.progress, dynamic_ncols=True)
    for step in bar:
        idx = torch.randint(len(obs), (config.batch_size,), generator=gen).to(device)
        loss = torch.nn.functional.mse_loss(model(obs[idx]), act[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        sched.step()
        if step % config.log_every == 0 or step == config.steps - 1:
            history.append((step, loss.item()))
            bar.set_postfix(loss=f"{history[-1][1]:.4f}")
    model.eval()
    meta = {
        "obs_mean": obs_mean.tolist(), "obs_std": obs_std.tolist(), "env_id": dataset.env_id,
        "dataset_id": dataset.dataset_id,
        "dataset": {"episodes": len(dataset), "transitions": dataset.num_transitions},
        "training": {**asdict(config), "device": str(device), "loss_history": history,
                     "final_loss": history[-1][1]},
    }
    return model, meta


def train_bc(dataset: EpisodeDataset, config: BCTrainConfig, out: str | Path) -> Path:
    """Train and write the checkpoint (``out``.safetensors + ``out``.json); returns the JSON path."""
    model, meta = fit_bc(dataset, config)
    return save_bc(out, model, meta)
