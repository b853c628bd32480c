"""SAC behaviour policies (stable-baselines3) that generate the offline datasets, the way D4RL did.

One run trains SAC with the CORL / SB3-zoo default hyper-parameters, evaluates the deterministic
policy every ``eval_freq`` steps on ``eval_episodes`` episodes and

* saves the **medium** checkpoint the first time the mean evaluation return enters the D4RL medium
  band (see :data:`MEDIUM_BANDS`), together with the replay buffer filled up to that step as a
  D4RL-style HDF5 (``medium_replay.hdf5``; episode boundaries, terminals and timeouts kept apart);
* keeps the **best** (highest mean evaluation return, the "expert" candidate) and **last** actors;
* writes a resumable checkpoint (SB3 model zip + replay buffer, inside the run folder only) every
  ``checkpoint_freq`` steps, and an ``evals.jsonl`` log.

Actors are exported as ``kind="behaviour"`` checkpoints (safetensors + JSON, see
:mod:`ros_seqplanner.nets.checkpoint`): the tanh-Gaussian MLP weights only, never SB3's pickled zip.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ros_seqplanner.sim.envs import canonical_env_id, make_env

# D4RL "medium" = a policy trained to about 1/3 of expert performance; bands of mean return (v2 refs).
MEDIUM_BANDS: dict[str, tuple[float, float]] = {
    "HalfCheetah-v5": (4000.0, 5000.0),
    "Hopper-v5": (1400.0, 1800.0),
    "Walker2d-v5": (3000.0, 3500.0),
}


@dataclass
class SACConfig:
    """SAC hyper-parameters: CORL / rl-baselines3-zoo MuJoCo defaults."""

    learning_rate: float = 3e-4
    batch_size: int = 256
    buffer_size: int = 1_000_000
    learning_starts: int = 10_000
    train_freq: int = 1
    gradient_steps: int = 1
    gamma: float = 0.99
    tau: float = 0.005
    net_arch: tuple[int, ...] = (256, 256)


@dataclass
class RunConfig:
    env_id: str = "HalfCheetah-v5"
    seed: int = 0
    total_steps: int = 1_000_000
    eval_freq: int = 10_000
    eval_episodes: int = 10
    checkpoint_freq: int = 50_000
    time_limit_s: float = 0.0  # stop gracefully after this many seconds (0: no limit)
    stop_at_medium: bool = False


def actor_tensors(model: Any) -> dict[str, Any]:
    """The SB3 SAC actor's MLP weights: latent_pi (Linear/ReLU stack), mu, log_std."""
    actor = model.policy.actor
    out = {}
    linears = [m for m in actor.latent_pi if m.__class__.__name__ == "Linear"]
    for i, lin in enumerate(linears):
        out[f"hidden.{i}.weight"] = lin.weight.detach().cpu().float()
        out[f"hidden.{i}.bias"] = lin.bias.detach().cpu().float()
    out["mu.weight"] = actor.mu.weight.detach().cpu().float()
    out["mu.bias"] = actor.mu.bias.detach().cpu().float()
    out["log_std.weight"] = actor.log_std.weight.detach().cpu().float()
    out["log_std.bias"] = actor.log_std.bias.detach().cpu().float()
    return out


def export_actor(model: Any, path: str | Path, env_id: str, extra: dict[str, Any] | None = None) -> Path:
    """Save the SAC actor as a ``kind="behaviour"`` checkpoint (safetensors + JSON)."""
    from ros_seqplanner.nets.checkpoint import save_checkpoint

    tensors = actor_tensors(model)
    space = model.action_space
    meta = {
        "kind": "behaviour",
        "env_id": env_id,
        "obs_dim": int(model.observation_space.shape[0]),
        "act_dim": int(space.shape[0]),
        "hidden": [int(tensors[f"hidden.{i}.weight"].shape[0]) for i in range(len(tensors) // 2 - 2)],
        "activation": "relu",
        "squash": "tanh",  # action = low + (tanh(mu) + 1) / 2 * (high - low)
        "log_std_clip": [-20.0, 2.0],  # SB3 LOG_STD_MIN / LOG_STD_MAX
        "action_low": np.asarray(space.low, dtype=np.float32).tolist(),
        "action_high": np.asarray(space.high, dtype=np.float32).tolist(),
        "algorithm": "SAC (stable-baselines3)",
        **(extra or {}),
    }
    return save_checkpoint(path, tensors, meta)


def replay_to_arrays(buffer: Any, upto: int | None = None) -> dict[str, np.ndarray]:
    """Flat D4RL-style arrays from an SB3 ReplayBuffer (single env, no wrap-around).

    SB3 stores ``dones`` = terminated or truncated and ``timeouts`` = truncated-only, so
    terminals = dones & ~timeouts. The last transition of a partially filled episode is marked as a
    timeout (the episode was cut by the snapshot, not terminated).
    """
    n = buffer.buffer_size if buffer.full else buffer.pos
    if upto is not None:
        n = min(n, upto)
    if buffer.full:
        raise ValueError("replay buffer wrapped around; episode order is lost")
    dones = buffer.dones[:n, 0].astype(bool)
    timeouts = buffer.timeouts[:n, 0].astype(bool) & dones
    terminals = dones & ~timeouts
    if n and not dones[n - 1]:
        timeouts[n - 1] = True
    return {
        "observations": buffer.observations[:n, 0].astype(np.float32),
        "actions": buffer.actions[:n, 0].astype(np.float32),
        "rewards": buffer.rewards[:n, 0].astype(np.float32),
        "next_observations": buffer.next_observations[:n, 0].astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
    }


def write_hdf5_arrays(path: str | Path, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> Path:
    """Minimal D4RL HDF5 writer (kept here so the long-running trainer has no other dependency)."""
    import h5py

    path = Path(path)
    tmp = path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v, compression="gzip", compression_opts=4)
        for k, v in attrs.items():
            f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list)) else v
    tmp.replace(path)
    return path


def _make_callback(run_dir: Path, cfg: RunConfig, state: dict[str, Any]) -> Any:
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    band = MEDIUM_BANDS.get(cfg.env_id)

    class BehaviourCallback(BaseCallback):
        def _on_training_start(self) -> None:
            seeds = [cfg.seed * 1000 + 100 + i for i in range(cfg.eval_episodes)]
            self.eval_env = DummyVecEnv([(lambda s=s: Monitor(make_env(cfg.env_id, seed=s))) for s in seeds])
            self.eval_env.seed(cfg.seed * 1000 + 100)
            self.t0 = time.time()
            self.steps0 = self.num_timesteps
            self.pending_replay: int | None = None

        def _on_step(self) -> bool:
            n = self.num_timesteps
            if self.pending_replay is not None:
                # SB3 stores transition n after this callback, so the buffer holds step n only now
                self._dump_replay(self.pending_replay)
                self.pending_replay = None
            if n % cfg.eval_freq == 0:
                self._evaluate(n)
            if n % cfg.checkpoint_freq == 0:
                self._save_resume(n)
            if cfg.time_limit_s and time.time() - self.t0 > cfg.time_limit_s:
                print(f"time limit {cfg.time_limit_s}s reached at step {n}", flush=True)
                return False
            # with stop_at_medium, stop one step after the medium checkpoint, once the replay is dumped
            stop = cfg.stop_at_medium and state.get("medium_step") is not None and self.pending_replay is None
            return not stop

        def _evaluate(self, n: int) -> None:
            te = time.time()
            rets, lens = evaluate_policy(self.model, self.eval_env, n_eval_episodes=cfg.eval_episodes,
                                         deterministic=True, return_episode_rewards=True)
            elapsed = time.time() - self.t0
            rec = {"step": n, "mean_return": float(np.mean(rets)), "std_return": float(np.std(rets)),
                   "mean_length": float(np.mean(lens)), "eval_s": round(time.time() - te, 1),
                   "wall_s": round(state.get("wall_offset_s", 0.0) + elapsed, 1),
                   "steps_per_s": round((n - self.steps0) / max(elapsed, 1e-9), 1)}
            with open(run_dir / "evals.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(json.dumps(rec), flush=True)
            info = {"steps": n, "eval_mean_return": rec["mean_return"], "eval_std_return": rec["std_return"],
                    "eval_episodes": cfg.eval_episodes, "wall_s": rec["wall_s"], "seed": cfg.seed,
                    "sac": state["sac"]}
            export_actor(self.model, run_dir / "actor_last", cfg.env_id, {**info, "tag": "last"})
            if rec["mean_return"] > state.get("best_return", -np.inf):
                state["best_return"], state["best_step"] = rec["mean_return"], n
                export_actor(self.model, run_dir / "actor_best", cfg.env_id, {**info, "tag": "best"})
            if band and state.get("medium_step") is None and rec["mean_return"] >= band[0]:
                state["medium_step"], state["medium_return"] = n, rec["mean_return"]
                state["medium_in_band"] = bool(rec["mean_return"] <= band[1])
                export_actor(self.model, run_dir / "actor_medium", cfg.env_id,
                             {**info, "tag": "medium", "medium_band": list(band)})
                self.pending_replay = n
                print(f"MEDIUM checkpoint at step {n}: return {rec['mean_return']:.1f}", flush=True)
            (run_dir / "state.json").write_text(json.dumps(state, indent=2))

        def _dump_replay(self, n: int) -> None:
            arrays = replay_to_arrays(self.model.replay_buffer, upto=n)
            write_hdf5_arrays(run_dir / "medium_replay.hdf5", arrays, {
                "env_id": cfg.env_id, "dataset_id": f"{cfg.env_id.split('-')[0].lower()}-medium-replay-v5",
                "source": "SAC replay buffer up to the medium checkpoint", "steps": n})

        def _save_resume(self, n: int) -> None:
            rdir = run_dir / "resume"
            rdir.mkdir(exist_ok=True)
            self.model.save(rdir / "model.zip")
            self.model.save_replay_buffer(rdir / "replay_buffer.pkl")
            state["resume_step"] = n
            state["last_wall_s"] = round(state.get("wall_offset_s", 0.0) + time.time() - self.t0, 1)
            (run_dir / "state.json").write_text(json.dumps(state, indent=2))

    return BehaviourCallback()


def _truncate_eval_log(path: Path, step: int) -> None:
    """On resume, drop evaluations after the resume step (they are redone by the resumed run)."""
    if path.exists():
        lines = [x for x in path.read_text().splitlines() if x.strip() and json.loads(x)["step"] <= step]
        path.write_text("".join(x + "\n" for x in lines))


def train_behaviour(run_dir: str | Path, cfg: RunConfig, sac: SACConfig | None = None, resume: bool = True) -> dict:
    """Train (or resume) a SAC behaviour policy in ``run_dir``. Returns the final run state."""
    import torch
    from stable_baselines3 import SAC

    torch.set_num_threads(1)
    sac = sac or SACConfig()
    cfg.env_id = canonical_env_id(cfg.env_id)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "state.json"
    state: dict[str, Any] = json.loads(state_path.read_text()) if (resume and state_path.exists()) else {}
    state.update({"env_id": cfg.env_id, "run": asdict(cfg), "sac": asdict(sac)})
    env = make_env(cfg.env_id, seed=cfg.seed)
    zip_path = run_dir / "resume" / "model.zip"
    if resume and zip_path.exists():
        model = SAC.load(zip_path, env=env, device="cpu")
        model.load_replay_buffer(run_dir / "resume" / "replay_buffer.pkl")
        _truncate_eval_log(run_dir / "evals.jsonl", model.num_timesteps)
        # evals after the last resume point are re-done; keep the wall-clock of the earlier process
        state["wall_offset_s"] = state.get("last_wall_s", 0.0)
        print(f"resumed at step {model.num_timesteps}", flush=True)
        reset = False
    else:
        model = SAC("MlpPolicy", env, learning_rate=sac.learning_rate, buffer_size=sac.buffer_size,
                    learning_starts=sac.learning_starts, batch_size=sac.batch_size, tau=sac.tau,
                    gamma=sac.gamma, train_freq=sac.train_freq, gradient_steps=sac.gradient_steps,
                    policy_kwargs={"net_arch": list(sac.net_arch)}, seed=cfg.seed, device="cpu", verbose=0)
        reset = True
    cb = _make_callback(run_dir, cfg, state)
    t0 = time.time()
    remaining = max(cfg.total_steps - model.num_timesteps, 0)
    model.learn(total_timesteps=remaining, callback=cb, reset_num_timesteps=reset, progress_bar=False)
    if cb.pending_replay is not None:  # medium reached on the very last step
        cb._dump_replay(cb.pending_replay)
    state["last_wall_s"] = state.get("wall_offset_s", 0.0) + time.time() - t0
    state["final_step"] = model.num_timesteps
    cb._save_resume(model.num_timesteps)
    export_actor(model, run_dir / "actor_last", cfg.env_id, {"steps": model.num_timesteps, "tag": "last"})
    state_path.write_text(json.dumps(state, indent=2))
    return state


def export_models(run_dir: str | Path, models_dir: str | Path, expert_min_gain: float = 1.2) -> dict[str, str]:
    """Copy the run's actors into ``models_dir`` as ``<env>-medium`` and ``<env>-expert``.

    ``expert`` = the best actor, exported only when its evaluation return exceeds the medium one by
    ``expert_min_gain`` (a "best" that is barely better than medium is not an expert).
    """
    import shutil

    from ros_seqplanner.nets.checkpoint import checkpoint_paths, load_checkpoint

    run_dir, models_dir = Path(run_dir), Path(models_dir)
    out: dict[str, str] = {}
    _, medium_meta = load_checkpoint(run_dir / "actor_medium", kind="behaviour")
    name = medium_meta["env_id"].split("-")[0].lower()
    picks = {"medium": "actor_medium"}
    best = run_dir / "actor_best.json"
    if best.exists():
        _, best_meta = load_checkpoint(run_dir / "actor_best", kind="behaviour")
        if best_meta["eval_mean_return"] >= expert_min_gain * medium_meta["eval_mean_return"]:
            picks["expert"] = "actor_best"
    models_dir.mkdir(parents=True, exist_ok=True)
    for level, src in picks.items():
        for s, d in zip(checkpoint_paths(run_dir / src), checkpoint_paths(models_dir / f"{name}-{level}")):
            shutil.copyfile(s, d)
        out[level] = str(models_dir / f"{name}-{level}")
    return out
