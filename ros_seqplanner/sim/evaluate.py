"""In-process closed-loop evaluation of any policy checkpoint in MuJoCo.

Only the :class:`~ros_seqplanner.policies.base.Policy` interface is used (``reset`` / ``act``), via
:func:`~ros_seqplanner.policies.factory.load_policy`, so TT, DT, BC and behaviour checkpoints are
evaluated by exactly the same loop. Reported per episode: raw return, length, terminated/truncated,
D4RL-normalised score (labelled "D4RL refs, v5 env"); aggregated: mean ± std over all episodes and
over per-seed means, and the per-step ``act`` latency p50/p99 in milliseconds.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ros_seqplanner.sim.envs import canonical_env_id, make_env


@dataclass
class EpisodeResult:
    seed: int
    episode: int
    ret: float
    length: int
    terminated: bool
    truncated: bool
    normalized_score: float | None
    act_ms_p50: float
    act_ms_p99: float


@dataclass
class EvalResult:
    env_id: str
    checkpoint: str
    kind: str
    episodes: list[EpisodeResult] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"env_id": self.env_id, "checkpoint": self.checkpoint, "kind": self.kind,
                "summary": self.summary, "config": self.config, "episodes": [asdict(e) for e in self.episodes]}


def run_episode(env: Any, policy: Any, seed: int, max_steps: int | None = None,
                reset_options: dict[str, Any] | None = None, frames: list | None = None) -> tuple[dict, np.ndarray]:
    """One closed-loop episode. Returns (info dict, per-step act latencies in ms)."""
    obs, _ = env.reset(seed=seed)
    policy.reset(seed=seed, **(reset_options or {}))
    reward, ret, steps, term, trunc = None, 0.0, 0, False, False
    lat = []
    while True:
        t0 = time.perf_counter()
        action = policy.act(np.asarray(obs, dtype=np.float32), reward)
        lat.append((time.perf_counter() - t0) * 1e3)
        action = np.asarray(action, dtype=np.float32)
        if action.shape != env.action_space.shape or not np.all(np.isfinite(action)):
            raise ValueError(f"policy returned an invalid action {action!r} (expected shape {env.action_space.shape})")
        obs, reward, term, trunc, _ = env.step(action)
        ret += float(reward)
        steps += 1
        if frames is not None:
            frames.append(env.render())
        if term or trunc or (max_steps is not None and steps >= max_steps):
            break
    cut = not term and not trunc
    return {"ret": ret, "length": steps, "terminated": bool(term), "truncated": bool(trunc or cut)}, np.asarray(lat)


def evaluate_checkpoint(checkpoint: str | Path, env: str | None = None, episodes: int = 10,
                        seeds: tuple[int, ...] = (0,), max_steps: int | None = None, device: str = "cpu",
                        policy_options: dict[str, Any] | None = None, reset_options: dict[str, Any] | None = None,
                        video: str | Path | None = None, video_size: tuple[int, int] = (320, 240),
                        progress: bool = True, latency_steps: int = 0, catch_up: bool = True,
                        compensate: bool = False) -> EvalResult:
    """Evaluate a checkpoint for ``episodes`` episodes per seed. ``env`` defaults to the checkpoint's env_id.
    ``latency_steps`` > 0: every plan takes that many whole control periods, as for a realtime robot that does
    not wait (:class:`~ros_seqplanner.policies.latency.LatencyPolicy`; ``catch_up`` as the node's
    ``catch_up_context``; ``compensate``: a TT plans for the state predicted ``latency_steps`` ahead)."""
    from tqdm import tqdm

    from ros_seqplanner.data.scores import SCORE_LABEL, normalized_score
    from ros_seqplanner.planning.beam import PlannerConfig
    from ros_seqplanner.policies.factory import checkpoint_kind, load_policy

    kind = checkpoint_kind(checkpoint)
    policy = load_policy(checkpoint, device=device, **(policy_options or {}))
    if latency_steps:
        from ros_seqplanner.policies.latency import LatencyPolicy

        policy = LatencyPolicy(policy, latency_steps, catch_up, compensate)
    env_id = canonical_env_id(env or _policy_env_id(policy, checkpoint))
    if video is not None:
        check_video_path(video)
        check_rendering()
    env_ = make_env(env_id, render_mode="rgb_array" if video is not None else None,
                    **({"width": video_size[0], "height": video_size[1]} if video is not None else {}))
    if env_.observation_space.shape[0] != policy.obs_dim or env_.action_space.shape[0] != policy.act_dim:
        raise ValueError(f"checkpoint dims (obs {policy.obs_dim}, act {policy.act_dim}) do not match {env_id} "
                         f"(obs {env_.observation_space.shape[0]}, act {env_.action_space.shape[0]})")
    res = EvalResult(env_id=env_id, checkpoint=str(checkpoint), kind=kind,
                     config={"episodes_per_seed": episodes, "seeds": list(seeds), "max_steps": max_steps,
                             "device": device, "policy_options": policy_options or {},
                             "reset_options": reset_options or {}, "score_label": SCORE_LABEL})
    if latency_steps:
        res.config.update(latency_steps=int(latency_steps), catch_up=bool(catch_up), compensate=bool(compensate))
    inner = getattr(policy, "inner", policy)
    if isinstance(getattr(inner, "config", None), PlannerConfig):  # what a TT planned with, all fields
        res.config["planner"] = inner.config.to_dict()
    all_lat = []
    frames: list | None = [] if video is not None else None
    bar = tqdm(total=episodes * len(seeds), desc=f"evaluate {kind}", unit="ep", disable=not progress)
    try:
        for s in seeds:
            for k in range(episodes):
                ep_seed = int(s) * 100_003 + k
                info, lat = run_episode(env_, policy, ep_seed, max_steps, reset_options,
                                        frames if (frames is not None and not res.episodes) else None)
                all_lat.append(lat)
                try:
                    score = normalized_score(env_id, info["ret"])
                except KeyError:
                    score = None
                res.episodes.append(EpisodeResult(seed=int(s), episode=k, normalized_score=score,
                                                  act_ms_p50=float(np.percentile(lat, 50)),
                                                  act_ms_p99=float(np.percentile(lat, 99)), **info))
                bar.update(1)
                bar.set_postfix(ret=f"{info['ret']:.0f}")
    finally:
        bar.close()
        env_.close()
    res.summary = summarize(res.episodes, np.concatenate(all_lat))
    res.summary["score_label"] = SCORE_LABEL
    if video is not None and frames:
        res.summary["video"] = str(write_video(frames, video, fps=round(1.0 / float(env_.unwrapped.dt))))
    return res


def _policy_env_id(policy: Any, checkpoint: str | Path) -> str:
    """The env a checkpoint was trained on: the policy's ``env_id`` or the JSON's ``env_id``."""
    from ros_seqplanner.nets.checkpoint import checkpoint_paths

    env_id = getattr(policy, "env_id", None)
    if not env_id:
        meta = json.loads(checkpoint_paths(checkpoint)[1].read_text())
        dataset = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
        env_id = meta.get("env_id") or dataset.get("env_id")
    if not env_id:
        raise ValueError(f"{checkpoint} does not say which env it was trained on; pass --env")
    return str(env_id)


def summarize(episodes: list[EpisodeResult], latencies_ms: np.ndarray) -> dict[str, Any]:
    """Mean ± std over all episodes and over per-seed means; act latency percentiles."""
    rets = np.array([e.ret for e in episodes])
    out: dict[str, Any] = {
        "num_episodes": len(episodes),
        "return_mean": float(rets.mean()), "return_std": float(rets.std()),
        "length_mean": float(np.mean([e.length for e in episodes])),
        "terminated_fraction": float(np.mean([e.terminated for e in episodes])),
        "act_ms_p50": float(np.percentile(latencies_ms, 50)),
        "act_ms_p99": float(np.percentile(latencies_ms, 99)),
        "act_ms_mean": float(latencies_ms.mean()), "num_steps": int(latencies_ms.size),
    }
    if all(e.normalized_score is not None for e in episodes):
        scores = np.array([e.normalized_score for e in episodes])
        out.update({"score_mean": float(scores.mean()), "score_std": float(scores.std())})
    seeds = sorted({e.seed for e in episodes})
    if len(seeds) > 1:
        per_seed = np.array([np.mean([e.ret for e in episodes if e.seed == s]) for s in seeds])
        out.update({"seed_return_mean": float(per_seed.mean()), "seed_return_std": float(per_seed.std())})
        if "score_mean" in out:
            ps = np.array([np.mean([e.normalized_score for e in episodes if e.seed == s]) for s in seeds])
            out.update({"seed_score_mean": float(ps.mean()), "seed_score_std": float(ps.std())})
    return out


def check_rendering() -> str:
    """Make sure MuJoCo can render offscreen; returns the GL backend. Raises RuntimeError with advice."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    backend = os.environ["MUJOCO_GL"]
    try:
        env = make_env("halfcheetah", render_mode="rgb_array", width=64, height=48)
        try:
            env.reset(seed=0)
            frame = env.render()
        finally:
            env.close()
    except Exception as e:  # any GL failure means "no offscreen rendering here"
        raise RuntimeError(f"MuJoCo offscreen rendering failed with MUJOCO_GL={backend} ({type(e).__name__}: {e}); "
                           "try MUJOCO_GL=egl (GPU/EGL driver) or MUJOCO_GL=osmesa (libosmesa6), "
                           "or run without --video") from e
    if frame is None or frame.ndim != 3:
        raise RuntimeError(f"MuJoCo rendering with MUJOCO_GL={backend} returned no image")
    return backend


def check_video_path(path: str | Path) -> None:
    """Fail before the episodes run if the video format cannot be written here."""
    import importlib.util

    suffix = Path(path).suffix.lower()
    if suffix == ".gif":
        return
    if suffix in (".mp4", ".avi", ".mkv", ".webm"):
        if importlib.util.find_spec("imageio_ffmpeg") is None and importlib.util.find_spec("av") is None:
            raise RuntimeError(f"cannot write {suffix} video: no ffmpeg backend for imageio (pip install "
                               "imageio-ffmpeg); use a .gif path instead")
        return
    raise ValueError(f"unsupported video format {suffix!r}; use .gif or .mp4")


def write_video(frames: list[np.ndarray], path: str | Path, fps: int = 20) -> Path:
    """Write RGB frames to an .mp4 (imageio-ffmpeg) or .gif."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        imageio.mimsave(path, frames, duration=1.0 / fps)
    else:
        imageio.mimsave(path, frames, fps=fps)
    return path


def plot_returns(results: list[dict[str, Any]], path: str | Path) -> Path:
    """Bar/strip plot of per-episode returns for one or more evaluation JSON results (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(results)), 3.5))
    for i, r in enumerate(results):
        rets = [e["ret"] for e in r["episodes"]]
        ax.bar(i, np.mean(rets), yerr=np.std(rets), alpha=0.5, capsize=4)
        ax.scatter(np.full(len(rets), i) + np.linspace(-0.15, 0.15, len(rets)), rets, s=10, color="k")
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels([f"{r['kind']}\n{Path(r['checkpoint']).name}" for r in results], fontsize=8)
    ax.set_ylabel(f"return ({results[0]['env_id']})")
    ax.set_title("closed-loop evaluation")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
