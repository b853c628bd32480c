"""``seqplanner bench plan``: TT beam-search planning latency (one plan = one receding-horizon decision).

Random weights and a random context by default (latency does not depend on the weights); a checkpoint
can be given instead. Prints p50/p99 over ``--plans`` timed plans after ``--warmup`` untimed ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="halfcheetah-medium",
                        help="planning preset (ros_seqplanner.planning.presets), e.g. walker2d-medium")
    parser.add_argument("--checkpoint", default=None, help="TT checkpoint (default: random weights)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--plans", type=int, default=20, help="timed plans")
    parser.add_argument("--warmup", type=int, default=2, help="untimed plans first")
    parser.add_argument("--horizon", type=int, default=None, help="override the preset's horizon")
    parser.add_argument("--beam-width", type=int, default=None, help="override the preset's beam width")
    parser.add_argument("--n-embd", type=int, default=128, help="random model width (official TT: 128)")
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--n-bins", type=int, default=100)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="decoder dtype; auto = bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--kernel", default="auto", choices=["auto", "c", "torch"],
                        help="decoder: fused C step (CPU fp32), torch ops, or auto (C where it applies)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def machine_gflops(seconds: float = 0.3) -> float:
    """fp32 GEMM throughput of this thread right now (64 x 128 x 512, the planner's MLP shape): a yardstick
    for comparing plan latencies taken at different times on a shared machine."""
    import time

    import torch

    a, b = torch.randn(64, 512), torch.randn(512, 128)
    torch.mm(a, b)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        n += 1
    return 2 * 64 * 512 * 128 * n / (time.perf_counter() - t0) / 1e9


def run(args: argparse.Namespace) -> int:
    import time
    from dataclasses import replace

    import numpy as np
    import torch

    from ros_seqplanner.nets.discretizer import Discretizer
    from ros_seqplanner.nets.tt import TrajectoryTransformer, TTConfig, load_tt
    from ros_seqplanner.planning.beam import BeamPlanner, plan_flops
    from ros_seqplanner.planning.presets import env_dims, get_preset
    from ros_seqplanner.training.common import pick_device

    load0 = os.getloadavg()[0]
    torch.set_num_threads(max(1, args.threads))
    device = pick_device(args.device)
    gemm0 = machine_gflops() if device.type == "cpu" else None
    cfg = get_preset(args.preset)
    if args.horizon:
        cfg = replace(cfg, horizon=args.horizon)
    if args.beam_width:
        cfg = replace(cfg, beam_width=args.beam_width)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    if args.checkpoint:
        model, disc, _ = load_tt(args.checkpoint, device)
        obs_dim, act_dim = model.cfg.obs_dim, model.cfg.act_dim
    else:
        obs_dim, act_dim = env_dims(args.preset)
        mc = TTConfig(obs_dim=obs_dim, act_dim=act_dim, n_bins=args.n_bins, n_layer=args.n_layer,
                      n_head=args.n_head, n_embd=args.n_embd,
                      max_transitions=cfg.max_context_transitions + cfg.horizon)
        model = TrajectoryTransformer(mc).to(device).eval()
        disc = Discretizer.fit(rng.standard_normal((2000, mc.transition_dim)), args.n_bins, "quantile")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(args.dtype)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    planner = BeamPlanner(model, disc, cfg, dtype=dtype, kernel=args.kernel)
    mcfg = model.cfg
    d, n = mcfg.transition_dim, mcfg.n_bins
    n_ctx = planner.context_transitions
    bins = rng.integers(0, n, size=n_ctx * d + obs_dim)
    dims = np.concatenate([np.tile(np.arange(d), n_ctx), np.arange(obs_dim)])
    prefix = torch.as_tensor(bins + n * dims, device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(max(0, args.warmup)):
        planner.plan(prefix, gen)
    sync()
    times, cpu = [], []
    for _ in range(max(1, args.plans)):
        t0, c0 = time.perf_counter(), time.process_time()
        planner.plan(prefix, gen)
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    ts = np.asarray(times)
    gflop = plan_flops(mcfg, cfg, prefix.numel()) / 1e9
    out = {
        "benchmark": "plan", "preset": args.preset, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "threads": torch.get_num_threads(), "dtype": str(dtype).replace("torch.", ""), "kernel": planner.kernel,
        "p50_ms": float(np.percentile(ts, 50)), "p99_ms": float(np.percentile(ts, 99)),
        "mean_ms": float(ts.mean()), "min_ms": float(ts.min()), "plans": len(times),
        # CPU time of this process per plan: less sensitive than wall time to other jobs on a shared box.
        "cpu_ms_p50": float(np.percentile(cpu, 50)),
        "decode_steps": planner.decode_steps(), "gflop_per_plan": round(gflop, 3),
        "gflops_achieved": round(gflop / (np.percentile(ts, 50) / 1e3), 2),
        "beams": cfg.beam_width, "candidates": cfg.beam_width * cfg.n_expand, "horizon": cfg.horizon,
        "context_transitions": n_ctx, "prefix_tokens": int(prefix.numel()), "window_moves": planner.reencode,
        "model": {"n_layer": mcfg.n_layer, "n_head": mcfg.n_head, "n_embd": mcfg.n_embd, "n_bins": n,
                  "obs_dim": obs_dim, "act_dim": act_dim, "checkpoint": args.checkpoint},
        "loadavg_1m": os.getloadavg()[0], "loadavg_start_1m": load0, "torch": torch.__version__,
        # the same GEMM yardstick before and after the plans: how fast this (possibly shared) machine was
        "machine_gemm_gflops": [round(gemm0, 1), round(machine_gflops(), 1)] if gemm0 is not None else None,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.preset} on {device} ({out['threads']} thread(s), {out['dtype']}): p50 {out['p50_ms']:.1f} ms, "
              f"p99 {out['p99_ms']:.1f} ms over {len(times)} plans; {out['decode_steps']} decode steps, "
              f"{gflop:.2f} GFLOP/plan; {out['kernel']} decoder{' (window moves)' if planner.reencode else ''}; "
              f"load {out['loadavg_1m']:.2f}")
    return 0
