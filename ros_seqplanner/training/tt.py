"""Train a Trajectory Transformer on an :class:`EpisodeDataset` (CPU, CUDA, or torchrun DDP).

Recipe (official TT / nanoGPT): AdamW lr 6e-4, betas (0.9, 0.95), weight decay 0.1 on matmul weights only,
grad-norm clip 1.0, linear warm-up then cosine decay to 10 % of the peak lr, batch 256, bf16 autocast on CUDA.

Batches are windows drawn uniformly with replacement, from a generator seeded by (seed, step, rank), so a run
is reproducible and a resumed run sees exactly the batches it would have seen (the dropout RNG state is saved
too). One "epoch" = as many windows as the dataset has transitions (the official code likewise counts
epochs in windows). ``batch_size`` is per process; under DDP the effective batch is world_size times larger.

Files written for ``out`` = ``dir/name``: ``name.safetensors`` + ``name.json`` (the model checkpoint, kind
"tt", see :func:`ros_seqplanner.nets.tt.save_tt`) and ``name.state.safetensors`` + ``name.state.json``
(optimizer moments, step, RNG states) for ``resume``. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ros_seqplanner.data.episodes import EpisodeDataset
from ros_seqplanner.nets.checkpoint import CheckpointError, checkpoint_paths
from ros_seqplanner.nets.tokens import TrajectoryWindows, dataset_stats, fit_discretizer
from ros_seqplanner.nets.tt import TrajectoryTransformer, TTConfig, load_tt, save_tt
from ros_seqplanner.planning.beam import PlannerConfig
from ros_seqplanner.planning.presets import checkpoint_planner
from ros_seqplanner.training.common import make_adamw, pick_device, seed_everything, warmup_cosine


@dataclass(frozen=True)
class TTTrainConfig:
    # tokenization
    n_bins: int = 100
    strategy: str = "quantile"
    gamma: float = 0.99
    termination_penalty: float = -100.0
    # model
    max_transitions: int = 20
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.1
    action_weight: float = 5.0
    reward_weight: float = 1.0
    value_weight: float = 1.0
    goal_conditioned: bool = False
    attn_dropout: float | None = None  # None = dropout
    # optimisation
    batch_size: int = 256
    # Share of each batch drawn from the windows that hold a termination (a fall); the rest uniform. Not in
    # the reference, which samples every window uniformly (0.0): for data where falls are rare, so that the
    # value tokens learn what precedes one. It reweights inputs, not targets.
    fall_fraction: float = 0.0
    # Share of each batch drawn from the windows that start at an episode's first transition; not in the
    # reference either. In a replay buffer whose early episodes stand still, a state at rest is mostly a
    # stuck mid-episode state, so without it the model rates the initial state by those (see
    # models/tt_halfcheetah_medium_replay.md); one window per episode starts there.
    start_fraction: float = 0.0
    lr: float = 6e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    epochs: float = 50.0
    max_steps: int | None = None  # overrides epochs
    warmup_steps: int | None = None  # default: 5 % of the steps
    min_lr_ratio: float = 0.1
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast when on CUDA
    checkpoint_every: int = 0  # steps; 0 = only at the end
    stop_at_step: int | None = None  # stop early with a resumable checkpoint (split a run across jobs)
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.fall_fraction < 1.0:
            raise ValueError(f"fall_fraction must be in [0, 1), got {self.fall_fraction}")
        if not 0.0 <= self.start_fraction < 1.0:
            raise ValueError(f"start_fraction must be in [0, 1), got {self.start_fraction}")
        if self.fall_fraction + self.start_fraction >= 1.0:
            raise ValueError(f"fall_fraction + start_fraction must be < 1, got {self.fall_fraction} + "
                             f"{self.start_fraction}")

    def model_config(self, obs_dim: int, act_dim: int) -> TTConfig:
        return TTConfig(obs_dim=obs_dim, act_dim=act_dim, n_bins=self.n_bins, n_layer=self.n_layer,
                        n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout,
                        max_transitions=self.max_transitions, action_weight=self.action_weight,
                        reward_weight=self.reward_weight, value_weight=self.value_weight,
                        goal_conditioned=self.goal_conditioned, attn_dropout=self.attn_dropout)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TTTrainConfig:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


# ---------------------------------------------------------------------------------------------- distributed
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process group was created here, so training destroys it when done

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> tuple[DistInfo, torch.device]:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK: join the process group (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), pick_device(device)
    import torch.distributed as dist

    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    dev = pick_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        info.owns_group = True
    return info, dev


# ---------------------------------------------------------------------------------------------- state I/O
def state_paths(out: str | Path) -> tuple[Path, Path]:
    stem = checkpoint_paths(out)[0].with_suffix("")
    return stem.with_name(stem.name + ".state.safetensors"), stem.with_name(stem.name + ".state.json")


def save_train_state(out: str | Path, opt: torch.optim.Optimizer, step: int, extra: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for pid, st in sd["state"].items():
        for name, val in st.items():
            tensors[f"opt.{pid}.{name}"] = torch.as_tensor(val).detach().cpu().contiguous().clone()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    weights, js = state_paths(out)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    save_file(tensors, str(weights))
    tmp = js.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"step": step, "param_groups": groups, **extra}, indent=1))
    tmp.replace(js)


def load_train_state(out: str | Path, opt: torch.optim.Optimizer) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, js = state_paths(out)
    for f in (weights, js):
        if not f.is_file():
            raise CheckpointError(f"cannot resume: training state {f} does not exist")
    try:
        meta = json.loads(js.read_text())
        tensors = load_file(str(weights))
    except (json.JSONDecodeError, SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot resume: training state next to {out} is unreadable ({e})") from e
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, val in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = val
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"cannot resume: optimizer state does not fit the model ({e})") from e
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return meta


# ---------------------------------------------------------------------------------------------- training
def total_steps(config: TTTrainConfig, n_windows: int, world_size: int = 1) -> int:
    if config.max_steps is not None:
        return int(config.max_steps)
    return max(1, int(np.ceil(config.epochs * n_windows / (config.batch_size * world_size))))


def sample_starts(n: int, batch: int, seed: int, step: int, rank: int, fall_starts: np.ndarray | None = None,
                  fall_fraction: float = 0.0, episode_starts: np.ndarray | None = None,
                  start_fraction: float = 0.0) -> np.ndarray:
    """Window starts for one batch, a function of (seed, step, rank) so a resumed run sees the same batches:
    uniform over ``n``, except that each slot is, with probability ``fall_fraction``, redrawn uniformly from
    ``fall_starts``, and with probability ``start_fraction`` from ``episode_starts`` (see
    ``TTTrainConfig``). Without the start pool the draw is the same as before it existed."""
    rng = np.random.default_rng([seed, step, rank])
    starts = rng.integers(0, n, size=batch)
    use_fall = fall_fraction > 0.0 and fall_starts is not None and len(fall_starts) > 0
    use_start = start_fraction > 0.0 and episode_starts is not None and len(episode_starts) > 0
    if use_fall or use_start:
        u = rng.random(batch)
        if use_fall:
            pick = np.flatnonzero(u < fall_fraction)
            starts[pick] = fall_starts[rng.integers(0, len(fall_starts), len(pick))]
        if use_start:
            pick = np.flatnonzero((u >= fall_fraction) & (u < fall_fraction + start_fraction))
            starts[pick] = episode_starts[rng.integers(0, len(episode_starts), len(pick))]
    return starts


def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, windows: TrajectoryWindows,
               config: TTTrainConfig, step: int, lr: float, device: torch.device, rank: int = 0) -> float:
    """One optimizer step on a freshly sampled batch; returns the loss. (Also used by the benchmark.)"""
    for g in opt.param_groups:
        g["lr"] = lr
    starts = sample_starts(len(windows), config.batch_size, config.seed, step, rank,
                           windows.termination_starts() if config.fall_fraction > 0 else None, config.fall_fraction,
                           windows.episode_starts() if config.start_fraction > 0 else None, config.start_fraction)
    batch = [t.to(device, non_blocking=True) for t in windows.batch(starts)]
    goal = batch[3] if config.goal_conditioned else None
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda"):
        _, loss = net(batch[0], batch[1], batch[2], goal)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
    opt.step()
    return float(loss.detach())


def train_tt(dataset: EpisodeDataset, config: TTTrainConfig, out: str | Path, *, resume: str | Path | None = None,
             init_from: str | Path | None = None, command: str | None = None,
             planner: dict[str, Any] | None = None) -> Path:
    """Train, checkpoint to ``out`` (``out.safetensors`` + ``out.json``), return the JSON path.

    ``resume``: a checkpoint written by this function (its ``.state`` files must sit next to it); training
    continues from its step with its discretizer, up to the same total number of steps.
    ``init_from``: fine-tune a TT checkpoint (a shipped one needs no ``.state`` files): its weights and
    discretizer, a fresh optimizer, step 0 and this config's schedule. Exclusive with ``resume``.
    ``planner``: PlannerConfig fields the checkpoint ships as its ``"planner"`` settings (what
    ``TTPolicy.from_checkpoint`` plans with unless the caller overrides them), e.g. ``{"horizon": 5}`` for a
    block too short for the dataset's preset horizon. Default: the resumed or fine-tuned checkpoint's, else none.
    """
    if resume is not None and init_from is not None:
        raise ValueError("resume and init_from are exclusive: resume continues a run, init_from starts a new one")
    dist_info, device = init_distributed(config.device)
    seed_everything(config.seed)
    source = resume if resume is not None else init_from
    if source is not None:
        model, disc, rmeta = load_tt(source, device="cpu")
        model.train()
        old = TTTrainConfig.from_dict(rmeta.get("train_config", {}))
        same_tokens = (old.n_bins, old.strategy, old.gamma, old.termination_penalty) == (
            config.n_bins, config.strategy, config.gamma, config.termination_penalty)
        if model.cfg != config.model_config(dataset.obs_dim, dataset.act_dim) or not same_tokens:
            verb = "resume" if resume is not None else "fine-tune"
            raise CheckpointError(f"cannot {verb} from {source}: its model/tokenizer config differs from this run's")
    else:
        rmeta = {}
        disc = fit_discretizer(dataset, config.n_bins, config.strategy, config.gamma, config.termination_penalty)
        model = TrajectoryTransformer(config.model_config(dataset.obs_dim, dataset.act_dim))
    planner = shipped_planner(dataset, config, planner if planner is not None else rmeta.get("planner"))
    if (model.cfg.obs_dim, model.cfg.act_dim) != (dataset.obs_dim, dataset.act_dim):
        raise ValueError(f"dataset dims ({dataset.obs_dim}, {dataset.act_dim}) do not match the checkpoint "
                         f"({model.cfg.obs_dim}, {model.cfg.act_dim})")
    windows = TrajectoryWindows(dataset, disc, config.max_transitions, config.gamma, config.termination_penalty,
                                goal_conditioned=config.goal_conditioned)
    if config.fall_fraction > 0 and not len(windows.termination_starts()):
        raise ValueError(f"fall_fraction {config.fall_fraction} needs terminated episodes; {dataset.dataset_id} "
                         "has none")
    model.to(device)
    opt = make_adamw(model, config.lr, config.betas, config.weight_decay, device)
    step = 0
    if resume is not None:
        step = int(load_train_state(resume, opt)["step"])
    net: torch.nn.Module = model
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    n_steps = total_steps(config, len(windows), dist_info.world_size)
    warmup = config.warmup_steps if config.warmup_steps is not None else max(1, n_steps // 20)
    meta = _checkpoint_meta(dataset, config, disc, dist_info, command, n_steps)
    if init_from is not None:
        meta["init_from"] = {"checkpoint": str(init_from), "step": rmeta.get("step"),
                             "training_command": rmeta.get("training_command")}
    elif "init_from" in rmeta:
        meta["init_from"] = rmeta["init_from"]  # a resumed fine-tuning run keeps its origin
    if planner:
        meta["planner"] = planner
    bar = _progress(n_steps, step, config.progress and dist_info.is_main)
    losses: list[float] = []
    t0 = time.perf_counter()
    net.train()
    last = n_steps if config.stop_at_step is None else min(n_steps, config.stop_at_step)
    while step < last:
        lr = config.lr * warmup_cosine(step, warmup, n_steps, config.min_lr_ratio)
        loss_v = train_step(net, opt, windows, config, step, lr, device, dist_info.rank)
        step += 1
        losses.append(loss_v)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_v:.3f}", lr=f"{opt.param_groups[0]['lr']:.2e}")
        if config.checkpoint_every and step % config.checkpoint_every == 0 and step < last:
            _save(out, model, disc, opt, step, meta, losses, t0, dist_info)
    if bar is not None:
        bar.close()
    path = _save(out, model, disc, opt, step, meta, losses, t0, dist_info)
    if dist_info.enabled:
        import torch.distributed as dist

        dist.barrier()
        if dist_info.owns_group:  # a group left to interpreter exit can abort a rank ('terminate called ...')
            dist.destroy_process_group()
    return path


def shipped_planner(dataset: EpisodeDataset, config: TTTrainConfig, settings: Any) -> dict[str, Any]:
    """Validate the planner settings a checkpoint will ship (see :func:`train_tt`) before any training: known
    PlannerConfig fields with valid values (ValueError otherwise). Any horizon fits: a plan longer than the
    block moves its window (:mod:`ros_seqplanner.planning.beam`)."""
    settings = PlannerConfig.check_settings(settings or {}, "--planner")
    meta = {"dataset_id": dataset.dataset_id, "env_id": dataset.env_id, "gamma": config.gamma, "planner": settings}
    checkpoint_planner(meta, goal_conditioned=config.goal_conditioned)
    return settings


def _save(out, model, disc, opt, step, meta, losses, t0, dist_info) -> Path:
    js = checkpoint_paths(out)[1]
    if dist_info.is_main:
        tail = losses[-20:]
        meta = {**meta, "step": step, "final_loss": float(np.mean(tail)) if tail else None,
                "first_loss": losses[0] if losses else None, "train_seconds": time.perf_counter() - t0}
        save_tt(out, model, disc, meta)
        save_train_state(out, opt, step, {"world_size": dist_info.world_size})
    return js


def _checkpoint_meta(dataset, config, disc, dist_info, command, n_steps) -> dict[str, Any]:
    lo, hi = dataset.bounds()
    stats = dataset_stats(dataset)
    return {
        "env_id": dataset.env_id, "dataset_id": dataset.dataset_id, "dataset_stats": stats,
        "action_low": np.asarray(lo).tolist(), "action_high": np.asarray(hi).tolist(),
        "obs_low": stats["obs_low"], "obs_high": stats["obs_high"],
        "gamma": config.gamma, "termination_penalty": config.termination_penalty,
        "train_config": config.to_dict(), "total_steps": n_steps, "world_size": dist_info.world_size,
        "training_command": command if command is not None else " ".join(sys.argv),
    }


def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train tt", dynamic_ncols=True, file=sys.stderr)


def toy_dataset(n_episodes: int = 8, length: int = 40, obs_dim: int = 3, act_dim: int = 2, seed: int = 0,
                terminate_fraction: float = 0.25) -> EpisodeDataset:
    """A tiny synthetic linear system for tests and benchmarks (no simulator needed).

    x_{t+1} = 0.9 x_t + 0.1 B u_t, u_t = -K x_t + noise, r_t = -|x_t|^2 + 1; a fraction of the episodes is
    cut short as terminated (the rest end on the time limit, truncated).
    """
    from ros_seqplanner.data.episodes import Episode

    rng = np.random.default_rng(seed)
    b = rng.normal(size=(obs_dim, act_dim)) / np.sqrt(act_dim)
    k = 0.5 * b.T
    episodes = []
    for i in range(n_episodes):
        x = rng.uniform(-1, 1, size=obs_dim)
        obs, acts, rews = [], [], []
        terminated = i < round(terminate_fraction * n_episodes)
        steps = length // 2 + i % 3 if terminated else length
        for _ in range(steps):
            u = np.clip(-k @ x + 0.1 * rng.normal(size=act_dim), -1, 1)
            obs.append(x)
            acts.append(u)
            rews.append(1.0 - float(x @ x))
            x = 0.9 * x + 0.1 * b @ u
        episodes.append(Episode(np.array(obs), np.array(acts), np.array(rews), terminated=terminated,
                                truncated=not terminated, final_observation=x))
    return EpisodeDataset(episodes, env_id="Toy-v0", dataset_id=f"toy-{seed}",
                          action_low=-np.ones(act_dim), action_high=np.ones(act_dim))
