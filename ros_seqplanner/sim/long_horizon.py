"""Open-loop long-horizon prediction: Trajectory Transformer vs a single-step MLP dynamics model.

The TT paper's Fig. 2 claim: conditioned on the logged actions, a TT's open-loop predictions stay accurate
over long horizons where a single-step model's compounding errors blow up. Here, for held-out episodes and
several start steps t0, both models see the true s_{t0} and the logged actions a_{t0..t0+H-1}:

- MLP: s_{t+1} = f(s_t, a_t), fed its own predictions;
- TT: decoding with the K/V cache, one transition at a time: the action tokens are the logged
  (discretised) actions, the reward, value and next-observation tokens are the model's point predictions,
  fed back as its input: ``greedy`` takes each token's argmax, ``median`` the median bin of its predicted
  distribution (the prediction that minimises the expected absolute error of that dimension, the metric
  below; the official TT code samples or beam-searches, it has no point-prediction rule of its own);
  predicted observations are bin midpoints. When the sequence outgrows the model's block
  (``max_transitions`` transitions) the window slides: the oldest whole transitions are dropped and the rest
  re-encoded with positions starting at 0 (the official planner crops the context the same way).

Error at horizon h = mean over observation dimensions of |prediction - truth| / std (std of the evaluation
episodes' observations), averaged over episodes and starts. Three reference rows come with it: "constant"
(predict s_{t0} forever), "data_median" (predict the evaluation episodes' per-dimension median: a model whose
error sits above it has lost all information about where the system is) and the TT tokenizer's round-trip
error on the true states (the quantisation floor no TT prediction can go below).

Run: ``python -m ros_seqplanner.sim.long_horizon --tt models/tt_x --mlp models/dyn_x --dataset held_out.hdf5``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ros_seqplanner.nets.discretizer import Discretizer
from ros_seqplanner.nets.dynamics import MLPDynamics
from ros_seqplanner.nets.tokens import bins_to_tokens
from ros_seqplanner.nets.tt import TrajectoryTransformer
from ros_seqplanner.planning.rollout import DECODES, predict_transitions


@torch.no_grad()
def mlp_open_loop(model: MLPDynamics, obs0: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Roll the MLP from ``obs0`` (O,) through ``actions`` (H, A) -> predicted s_1..s_H (H, O), r_0..r_{H-1}."""
    obs0, actions = _check_inputs(obs0, actions, model.cfg.obs_dim, model.cfg.act_dim)
    s = torch.as_tensor(obs0, dtype=torch.float32)[None]
    acts = torch.as_tensor(actions, dtype=torch.float32)
    states, rewards = [], []
    for a in acts:
        s, r = model(s, a[None])
        states.append(s[0])
        rewards.append(r[0])
    return torch.stack(states).numpy(), torch.stack(rewards).numpy()


@torch.no_grad()
def tt_open_loop(model: TrajectoryTransformer, disc: Discretizer, obs0: np.ndarray, actions: np.ndarray,
                 decode: str = "greedy") -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Open-loop TT prediction from ``obs0`` (O,) with logged ``actions`` (H, A), ``decode`` in DECODES.

    Returns predicted s_1..s_H (H, O), r_0..r_{H-1} (H,) as bin midpoints, and info (re-encodes, tokens).
    """
    cfg = model.cfg
    o, a, n = cfg.obs_dim, cfg.act_dim, cfg.n_bins
    obs0, actions = _check_inputs(obs0, actions, o, a)
    if decode not in DECODES:
        raise ValueError(f"unknown decode {decode!r}; expected one of {DECODES}")
    if disc.dim != cfg.transition_dim or disc.n_bins != n:
        raise ValueError(f"discretizer ({disc.dim} x {disc.n_bins}) does not fit the model "
                         f"({cfg.transition_dim} x {n})")
    obs_tokens = bins_to_tokens(disc.encode_dims(obs0.astype(np.float64), 0, o), n, 0)
    act_tokens = bins_to_tokens(disc.encode_dims(actions.astype(np.float64), o, o + a), n, o)  # (H, A)
    r_ids, _, obs_ids, reencodes = predict_transitions(model, obs_tokens.tolist(), act_tokens, decode)
    states = disc.decode_dims(obs_ids - n * np.arange(o), 0, o).astype(np.float32)
    rewards = disc.decode_dims((r_ids - n * (o + a))[:, None], o + a, o + a + 1)[:, 0].astype(np.float32)
    return states, rewards, {"reencodes": reencodes, "block_transitions": cfg.max_transitions}


def _check_inputs(obs0: np.ndarray, actions: np.ndarray, o: int, a: int) -> tuple[np.ndarray, np.ndarray]:
    obs0, actions = np.asarray(obs0, dtype=np.float32), np.asarray(actions, dtype=np.float32)
    if obs0.shape != (o,) or actions.ndim != 2 or actions.shape[1] != a or len(actions) < 1:
        raise ValueError(f"expected obs0 ({o},) and actions (H >= 1, {a}), got {obs0.shape} and {actions.shape}")
    if not (np.all(np.isfinite(obs0)) and np.all(np.isfinite(actions))):
        raise ValueError("obs0/actions contain NaN or inf")
    return obs0, actions


def horizon_error(pred: np.ndarray, true: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(H, O) predictions vs truth -> (H,) mean over dims of |error| / scale."""
    if pred.shape != true.shape:
        raise ValueError(f"prediction {pred.shape} and truth {true.shape} differ in shape")
    return np.mean(np.abs(pred - true) / scale, axis=-1)


def start_steps(length: int, horizon: int, per_episode: int) -> list[int]:
    """Up to ``per_episode`` evenly spaced starts t0 with t0 + horizon <= length (s_{t0+H} must exist)."""
    last = length - horizon
    if last < 0:
        return []
    return sorted(set(np.linspace(0, last, per_episode).round().astype(int).tolist()))


def compare(episodes: list, horizon: int, starts_per_episode: int = 3, tt: tuple | None = None,
            mlp: MLPDynamics | None = None, progress: bool = True,
            tt_decodes: tuple[str, ...] = ("greedy",)) -> dict[str, Any]:
    """Error-vs-horizon curves (h = 1..horizon) for the given models on ``episodes`` (data.episodes.Episode).

    ``tt`` is (model, discretizer), rolled out once per decode in ``tt_decodes`` (rows ``tt_<decode>``).
    Returns a JSON-able dict (``kind: long_horizon``) for the report.
    """
    if not tt_decodes or any(d not in DECODES for d in tt_decodes):
        raise ValueError(f"tt_decodes must be a non-empty subset of {DECODES}, got {tt_decodes}")
    all_obs = np.concatenate([ep.observations for ep in episodes]).astype(np.float64)
    scale = (all_obs.std(axis=0) + 1e-6).astype(np.float32)
    median = np.median(all_obs, axis=0).astype(np.float32)
    errs: dict[str, list[np.ndarray]] = {"constant": [], "data_median": []}
    if mlp is not None:
        errs["mlp_dynamics"] = []
    if tt is not None:
        errs.update({f"tt_{d}": [] for d in tt_decodes}, tt_tokenizer_floor=[])
    seconds = {k: 0.0 for k in errs}
    reencodes = 0
    n_starts = 0
    for ei, ep in enumerate(episodes):
        nxt = ep.next_observations() if ep.final_observation is not None else ep.observations[1:]
        for t0 in start_steps(len(nxt), horizon, starts_per_episode):
            true = nxt[t0:t0 + horizon]
            obs0, acts = ep.observations[t0], ep.actions[t0:t0 + horizon]
            errs["constant"].append(horizon_error(np.broadcast_to(obs0, true.shape), true, scale))
            errs["data_median"].append(horizon_error(np.broadcast_to(median, true.shape), true, scale))
            if mlp is not None:
                t = time.perf_counter()
                errs["mlp_dynamics"].append(horizon_error(mlp_open_loop(mlp, obs0, acts)[0], true, scale))
                seconds["mlp_dynamics"] += time.perf_counter() - t
            if tt is not None:
                model, disc = tt
                for d in tt_decodes:
                    t = time.perf_counter()
                    pred, _, info = tt_open_loop(model, disc, obs0, acts, decode=d)
                    seconds[f"tt_{d}"] += time.perf_counter() - t
                    reencodes += info["reencodes"]
                    errs[f"tt_{d}"].append(horizon_error(pred, true, scale))
                o = model.cfg.obs_dim
                floor = disc.decode_dims(disc.encode_dims(true.astype(np.float64), 0, o), 0, o)
                errs["tt_tokenizer_floor"].append(horizon_error(floor, true, scale))
            n_starts += 1
        if progress:
            print(f"episode {ei + 1}/{len(episodes)}: {n_starts} starts so far", flush=True)
    if not n_starts:
        raise ValueError(f"no episode is longer than the horizon {horizon}")
    notes = {
        "constant": "predict s_t0 for every h (reference)",
        "data_median": "predict the per-dimension median of the evaluation episodes' observations for every h "
                       "(reference: knows the test data's marginals, nothing of s_t0)",
        "mlp_dynamics": "single-step MLP, fed its own predictions",
        "tt_greedy": "greedy decoding with logged actions; block of "
                     f"{tt[0].cfg.max_transitions if tt else '?'} transitions, sliding window beyond it",
        "tt_median": "per-token median decoding (the L1-optimal point prediction) with logged actions, same windows",
        "tt_tokenizer_floor": "quantisation error of the TT tokenizer on the true states (lower bound for TT)",
    }
    models = {k: {"error": np.mean(v, axis=0).tolist(), "error_std": np.std(v, axis=0).tolist(),
                  "note": notes[k], "seconds": round(seconds.get(k, 0.0), 3)} for k, v in errs.items()}
    return {"kind": "long_horizon", "horizons": list(range(1, horizon + 1)), "num_episodes": len(episodes),
            "num_starts": n_starts, "metric": "mean over obs dims of |error| / obs std, mean over starts",
            "models": models, "tt_reencodes": reencodes}


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Error vs horizon, one line per model (log y), to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    h = result["horizons"]
    for name, m in result["models"].items():
        ref = name in ("constant", "data_median", "tt_tokenizer_floor")
        ax.plot(h, m["error"], label=name, linestyle="--" if ref else "-")
    ax.set_yscale("log")
    ax.set_xlabel("prediction horizon h (steps)")
    ax.set_ylabel("mean |error| / std")
    ax.set_title(f"open-loop prediction, {result.get('dataset', '')} ({result['num_starts']} starts)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, help="held-out episodes (.hdf5 / Minari)")
    p.add_argument("--tt", help="TT checkpoint")
    p.add_argument("--mlp", help="mlp_dynamics checkpoint")
    p.add_argument("--horizon", type=int, default=100)
    p.add_argument("--episodes", type=int, default=5, help="use the first N episodes")
    p.add_argument("--starts", type=int, default=3, help="start steps per episode")
    p.add_argument("--out", default="models/results/long_horizon.json")
    p.add_argument("--plot", default="docs/long_horizon.png")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tt-decode", nargs="+", choices=DECODES, default=["greedy"],
                   help="TT point-prediction rule(s), one row each")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from ros_seqplanner.data.loading import load_dataset
    from ros_seqplanner.nets.dynamics import load_dynamics
    from ros_seqplanner.nets.tt import load_tt

    data = load_dataset(args.dataset)
    tt = load_tt(args.tt)[:2] if args.tt else None
    mlp = load_dynamics(args.mlp)[0] if args.mlp else None
    res = compare(data.episodes[:args.episodes], args.horizon, args.starts, tt, mlp,
                  tt_decodes=tuple(args.tt_decode))
    res.update(dataset=Path(args.dataset).name, env_id=data.env_id, tt_checkpoint=args.tt, mlp_checkpoint=args.mlp)
    if args.plot:
        res["plot"] = str(Path(args.plot).name)
        plot(res, args.plot)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
