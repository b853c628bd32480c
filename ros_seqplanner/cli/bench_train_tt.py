"""``seqplanner bench train-tt``: TT training throughput (tokens/s) of the default model.

Times full optimizer steps (window sampling, forward, backward, grad clip, AdamW) of the default TT
(4 layers, 4 heads, width 128, 100 bins, 20-transition block) on a synthetic dataset shaped like HalfCheetah
(17 obs + 6 action dims -> 25 tokens per transition, 500-token windows). tokens/s = batch x 500 x steps / time.
"""

from __future__ import annotations

import argparse
import json
import platform
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--batch-size", type=int, default=None, help="default 64 on CPU, 256 on CUDA")
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--obs-dim", type=int, default=17)
    p.add_argument("--act-dim", type=int, default=6)
    p.add_argument("--max-transitions", type=int, default=20)
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument("--attn-dropout", type=float, default=None, help="default: the model dropout (0.1)")
    p.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ros_seqplanner.nets.tokens import TrajectoryWindows, fit_discretizer
    from ros_seqplanner.nets.tt import TrajectoryTransformer
    from ros_seqplanner.training.common import make_adamw, pick_device, seed_everything
    from ros_seqplanner.training.tt import TTTrainConfig, toy_dataset, train_step

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    batch = args.batch_size or (256 if device.type == "cuda" else 64)
    cfg = TTTrainConfig(batch_size=batch, max_transitions=args.max_transitions, amp=not args.no_amp, progress=False,
                        attn_dropout=args.attn_dropout)
    seed_everything(0)
    ds = toy_dataset(n_episodes=8, length=200, obs_dim=args.obs_dim, act_dim=args.act_dim)
    disc = fit_discretizer(ds, cfg.n_bins, cfg.strategy, cfg.gamma, cfg.termination_penalty)
    windows = TrajectoryWindows(ds, disc, cfg.max_transitions, cfg.gamma, cfg.termination_penalty)
    model = TrajectoryTransformer(cfg.model_config(ds.obs_dim, ds.act_dim)).to(device).train()
    opt = make_adamw(model, cfg.lr, cfg.betas, cfg.weight_decay, device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for s in range(args.warmup):
        train_step(model, opt, windows, cfg, s, cfg.lr, device)
    sync()
    times = []
    for s in range(args.steps):
        t0 = time.perf_counter()
        train_step(model, opt, windows, cfg, args.warmup + s, cfg.lr, device)
        sync()
        times.append(time.perf_counter() - t0)
    seq = model.cfg.block_size
    tokens_per_s = batch * seq * len(times) / sum(times)
    result = {
        "benchmark": "train-tt", "tokens_per_s": round(tokens_per_s, 1),
        "step_s_p50": float(np.percentile(times, 50)), "step_s_max": float(max(times)),
        "batch_size": batch, "seq_len": seq, "steps": len(times), "warmup": args.warmup,
        "params": model.num_params(), "model": {k: getattr(model.cfg, k) for k in
                                                ("n_layer", "n_head", "n_embd", "n_bins", "max_transitions")},
        "dropout": model.cfg.dropout, "attn_dropout": model.blocks[0].attn.dropout,
        "obs_dim": ds.obs_dim, "act_dim": ds.act_dim, "device": str(device),
        "amp_bf16": bool(cfg.amp and device.type == "cuda"), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"TT training: {tokens_per_s:,.0f} tokens/s  (batch {batch} x {seq} tokens, p50 step "
              f"{result['step_s_p50']:.3f} s over {len(times)} steps, {result['params']:,} params, device {device}, "
              f"{result['threads']} thread(s), bf16 {result['amp_bf16']})")
    return 0
