"""Train the single-step MLP dynamics model (:mod:`ros_seqplanner.nets.dynamics`) on an offline dataset.

Pairs (s_t, a_t) -> (s_{t+1}, r_t) are taken within episodes; the last step of an episode uses its
``final_observation`` and is dropped when the dataset does not store one. A fraction of whole episodes
is held out for a validation loss (reported in the checkpoint metadata). MSE on standardised targets,
AdamW with weight decay on Linear weights, linear warm-up then cosine decay.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ros_seqplanner.data.episodes import DatasetError, EpisodeDataset
from ros_seqplanner.nets.dynamics import DynamicsConfig, MLPDynamics, save_dynamics
from ros_seqplanner.training.common import make_adamw, pick_device, seed_everything, warmup_cosine


@dataclass(frozen=True)
class DynamicsTrainConfig:
    hidden: int = 256
    n_layer: int = 3
    batch_size: int = 256
    steps: int = 20_000
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_steps: int = 500
    grad_clip: float = 1.0
    val_fraction: float = 0.02  # of episodes (at least one) held out for the validation loss
    seed: int = 0
    device: str = "auto"
    log_every: int = 100
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


def transition_arrays(dataset: EpisodeDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(obs, act, next_obs, reward) over all within-episode transitions, float32."""
    obs, act, nxt, rew = [], [], [], []
    for ep in dataset:
        n = len(ep) if ep.final_observation is not None else len(ep) - 1
        if n < 1:
            continue
        obs.append(ep.observations[:n])
        act.append(ep.actions[:n])
        nxt.append(ep.next_observations()[:n])
        rew.append(ep.rewards[:n])
    if not obs:
        raise DatasetError("no (s, a, s') transitions: every episode is a single step without final_observation")
    out = tuple(np.concatenate(x).astype(np.float32) for x in (obs, act, nxt, rew))
    if not all(np.all(np.isfinite(x)) for x in out):
        raise DatasetError("dataset contains NaN or Inf values")
    return out


def _std(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float64).std(axis=0) + 1e-6).astype(np.float32)


def fit_dynamics(dataset: EpisodeDataset, config: DynamicsTrainConfig) -> tuple[MLPDynamics, dict[str, Any]]:
    """Train; returns the eval-mode model and checkpoint metadata (losses, held-out episode indices)."""
    device = pick_device(config.device)
    gen = seed_everything(config.seed)
    n_ep = len(dataset)
    n_val = min(n_ep - 1, max(1, round(config.val_fraction * n_ep))) if config.val_fraction > 0 else 0
    order = np.random.default_rng(config.seed).permutation(n_ep)
    val_idx = sorted(order[:n_val].tolist())
    train_ds = EpisodeDataset([dataset.episodes[i] for i in order[n_val:]], env_id=dataset.env_id,
                              dataset_id=dataset.dataset_id)
    obs, act, nxt, rew = transition_arrays(train_ds)
    model = MLPDynamics(DynamicsConfig(dataset.obs_dim, dataset.act_dim, config.hidden, config.n_layer))
    delta = nxt - obs
    model.set_stats(obs_mean=obs.mean(0), obs_std=_std(obs), act_mean=act.mean(0), act_std=_std(act),
                    delta_mean=delta.mean(0), delta_std=_std(delta), rew_mean=rew.mean(keepdims=True),
                    rew_std=_std(rew[:, None]))
    model.to(device).train()
    t = [torch.as_tensor(x, device=device) for x in (obs, act, nxt, rew)]
    target = model.targets(t[0], t[2], t[3]).detach()
    val = None
    if n_val:
        vds = EpisodeDataset([dataset.episodes[i] for i in val_idx], env_id=dataset.env_id)
        v = [torch.as_tensor(x, device=device) for x in transition_arrays(vds)]
        val = (v[0], v[1], model.targets(v[0], v[2], v[3]).detach())
    opt = make_adamw(model, config.lr, (0.9, 0.999), config.weight_decay, device)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, config.warmup_steps, config.steps, 0.1))
    history: list[tuple[int, float]] = []
    val_history: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    bar = tqdm(range(config.steps), desc="train dynamics", disable=not config.progress, dynamic_ncols=True)
    for step in bar:
        idx = torch.randint(len(obs), (config.batch_size,), generator=gen).to(device)
        loss = torch.nn.functional.mse_loss(model.normalized(t[0][idx], t[1][idx]), target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        sched.step()
        last = step == config.steps - 1
        if step % config.log_every == 0 or last:
            history.append((step, loss.item()))
            if val is not None and (step % (10 * config.log_every) == 0 or last):
                val_history.append((step, validation_loss(model, *val)))
            bar.set_postfix(loss=f"{history[-1][1]:.4f}")
    model.eval()
    meta = {
        "env_id": dataset.env_id, "dataset_id": dataset.dataset_id,
        "dataset": {"episodes": n_ep, "transitions": dataset.num_transitions},
        "val_episode_indices": val_idx,
        "training": {**asdict(config), "device": str(device), "loss_history": history, "val_history": val_history,
                     "final_loss": history[-1][1], "final_val_loss": val_history[-1][1] if val_history else None,
                     "train_seconds": time.perf_counter() - t0},
    }
    return model, meta


@torch.no_grad()
def validation_loss(model: MLPDynamics, obs: torch.Tensor, act: torch.Tensor, target: torch.Tensor) -> float:
    was_training = model.training
    model.eval()
    loss = torch.nn.functional.mse_loss(model.normalized(obs, act), target).item()
    model.train(was_training)
    return loss


def train_dynamics(dataset: EpisodeDataset, config: DynamicsTrainConfig, out: str | Path) -> Path:
    """Train and write the kind "mlp_dynamics" checkpoint; returns the JSON path."""
    model, meta = fit_dynamics(dataset, config)
    return save_dynamics(out, model, meta)
