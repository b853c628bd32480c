"""Decision Transformer training, following the official gym experiment (kzl/decision-transformer).

Windows of K steps start at a uniformly random step of an episode drawn with probability
proportional to its length; windows that run past the episode end are left-padded (mask 0).
States are normalised with the dataset mean/std (+1e-6), returns-to-go (undiscounted, including
the current reward) are divided by ``rtg_scale``; the loss is the action MSE over real positions.
AdamW (lr 1e-4, weight decay 1e-4), grad-norm clip 0.25, linear warm-up over 10k steps.
Deviation: padded actions are zeros (the reference uses -10); they are masked out either way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ros_seqplanner.data.episodes import DatasetError, EpisodeDataset
from ros_seqplanner.nets.dt import DecisionTransformer, DTConfig, num_params, save_dt
from ros_seqplanner.training.common import linear_warmup, make_adamw, pick_device, seed_everything

# Evaluation targets from the DT paper / official code; the first is the policy's default.
DEFAULT_TARGET_RETURNS: dict[str, tuple[float, ...]] = {
    "halfcheetah": (6000.0, 12000.0),
    "hopper": (3600.0, 1800.0),
    "walker2d": (5000.0, 2500.0),
}


@dataclass(frozen=True)
class DTTrainConfig:
    context: int = 20
    n_layer: int = 3
    n_head: int = 1
    n_embd: int = 128
    dropout: float = 0.1
    max_ep_len: int = 1000
    rtg_scale: float = 1000.0
    batch_size: int = 64
    steps: int = 100_000  # the reference: 10 iterations x 10k steps
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 10_000
    grad_clip: float = 0.25
    seed: int = 0
    device: str = "auto"
    target_returns: tuple[float, ...] = field(default=())  # empty: per-env defaults, else max dataset return
    log_every: int = 100
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if not self.rtg_scale > 0:
            raise ValueError(f"rtg_scale must be positive, got {self.rtg_scale}")
        object.__setattr__(self, "target_returns", tuple(float(r) for r in self.target_returns))


def default_target_returns(dataset: EpisodeDataset) -> tuple[float, ...]:
    """Per-env targets from the DT paper; for other envs the best return in the data."""
    from ros_seqplanner.data.scores import env_family

    try:
        return DEFAULT_TARGET_RETURNS[env_family(dataset.env_id or dataset.dataset_id)]
    except KeyError:
        return (float(dataset.returns().max()),)


def state_stats(dataset: EpisodeDataset) -> tuple[np.ndarray, np.ndarray]:
    obs = dataset.concat("observations").astype(np.float64)
    return obs.mean(axis=0).astype(np.float32), (obs.std(axis=0) + 1e-6).astype(np.float32)


def returns_to_go(rewards: np.ndarray) -> np.ndarray:
    """R_t = sum_{k >= t} r_k (undiscounted, including r_t), as in the reference."""
    return np.cumsum(np.asarray(rewards, dtype=np.float64)[::-1])[::-1].astype(np.float32)


class WindowSampler:
    """Vectorised sampling of left-padded K-step windows; all data lives on ``device``."""

    def __init__(self, dataset: EpisodeDataset, context: int, max_ep_len: int, rtg_scale: float,
                 obs_mean: np.ndarray, obs_std: np.ndarray, device: torch.device, generator: torch.Generator):
        obs = (dataset.concat("observations") - obs_mean) / obs_std
        rtg = np.concatenate([returns_to_go(ep.rewards) for ep in dataset]) / rtg_scale
        finite = np.all(np.isfinite(obs)) and np.all(np.isfinite(rtg))
        if not (finite and np.all(np.isfinite(dataset.concat("actions")))):
            raise DatasetError("dataset contains NaN or Inf values")
        self.obs = torch.as_tensor(obs, dtype=torch.float32, device=device)
        self.act = torch.as_tensor(dataset.concat("actions"), dtype=torch.float32, device=device)
        self.rtg = torch.as_tensor(rtg, dtype=torch.float32, device=device)
        lengths = dataset.lengths()
        self.lengths = torch.as_tensor(lengths, device=device)
        self.starts = torch.as_tensor(np.concatenate([[0], np.cumsum(lengths)[:-1]]), device=device)
        self.probs = torch.as_tensor(lengths / lengths.sum(), dtype=torch.float64)  # proportional to length
        self.k, self.max_ep_len, self.device, self.gen = context, max_ep_len, device, generator

    def sample(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """-> states (B,K,O), actions (B,K,A), rtg (B,K), timesteps (B,K), mask (B,K) bool."""
        ep = torch.multinomial(self.probs, batch_size, replacement=True, generator=self.gen).to(self.device)
        u = torch.rand(batch_size, generator=self.gen, dtype=torch.float64).to(self.device)
        length = self.lengths[ep]
        si = (u * length).long().clamp(max=length - 1)  # uniform start step in the episode
        n = torch.clamp(length - si, max=self.k)
        local = torch.arange(self.k, device=self.device) - (self.k - n)[:, None]  # left padding
        mask = local >= 0
        local = local.clamp(min=0)
        src = self.starts[ep, None] + si[:, None] + local
        m = mask.unsqueeze(-1)
        states = self.obs[src] * m
        actions = self.act[src] * m
        rtg = self.rtg[src] * mask
        timesteps = ((si[:, None] + local).clamp(max=self.max_ep_len - 1)) * mask
        return states, actions, rtg, timesteps, mask


def action_loss(model: DecisionTransformer, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    states, actions, rtg, timesteps, mask = batch
    pred = model(states, actions, rtg, timesteps, mask)
    return torch.nn.functional.mse_loss(pred[mask], actions[mask])


def fit_dt(dataset: EpisodeDataset, config: DTTrainConfig) -> tuple[DecisionTransformer, dict[str, Any]]:
    """Train a DT; returns the eval-mode model and the checkpoint metadata (stats, targets, history)."""
    device = pick_device(config.device)
    gen = seed_everything(config.seed)
    low, high = dataset.bounds()
    if np.any(high <= low):
        raise DatasetError(f"degenerate action bounds (high <= low somewhere): {low} vs {high}")
    mcfg = DTConfig(obs_dim=dataset.obs_dim, act_dim=dataset.act_dim, context=config.context,
                    max_ep_len=config.max_ep_len, n_layer=config.n_layer, n_head=config.n_head,
                    n_embd=config.n_embd, dropout=config.dropout,
                    action_low=tuple(low.tolist()), action_high=tuple(high.tolist()))
    obs_mean, obs_std = state_stats(dataset)
    sampler = WindowSampler(dataset, config.context, config.max_ep_len, config.rtg_scale,
                            obs_mean, obs_std, device, gen)
    model = DecisionTransformer(mcfg).to(device).train()
    opt = make_adamw(model, config.lr, (0.9, 0.999), config.weight_decay, device)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: linear_warmup(s, config.warmup_steps))
    history: list[tuple[int, float]] = []
    running = None
    bar = tqdm(range(config.steps), desc="train dt", disable=not config.progress, dynamic_ncols=True)
    for step in bar:
        loss = action_loss(model, sampler.sample(config.batch_size))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        sched.step()
        value = loss.item() if (step % config.log_every == 0 or step == config.steps - 1) else None
        if value is not None:
            history.append((step, value))
            running = value if running is None else 0.9 * running + 0.1 * value
            bar.set_postfix(loss=f"{running:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
    model.eval()
    targets = config.target_returns or default_target_returns(dataset)
    meta = {
        "obs_mean": obs_mean.tolist(), "obs_std": obs_std.tolist(), "rtg_scale": config.rtg_scale,
        "target_returns": list(targets), "env_id": dataset.env_id, "dataset_id": dataset.dataset_id,
        "dataset": {"episodes": len(dataset), "transitions": dataset.num_transitions,
                    "return_mean": float(dataset.returns().mean()), "return_max": float(dataset.returns().max())},
        "training": {**asdict(config), "device": str(device), "num_params": num_params(model),
                     "loss_history": history, "final_loss": history[-1][1]},
    }
    return model, meta


def train_dt(dataset: EpisodeDataset, config: DTTrainConfig, out: str | Path) -> Path:
    """Train and write the checkpoint (``out``.safetensors + ``out``.json); returns the JSON path."""
    model, meta = fit_dt(dataset, config)
    return save_dt(out, model, meta)
