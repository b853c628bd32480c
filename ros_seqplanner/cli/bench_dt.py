"""``seqplanner bench dt``: latency of one Decision Transformer action step through ``DTPolicy.act``.

Batch 1, K = 20, HalfCheetah sizes (obs 17, act 6) and the official DT model size (3 layers, 1 head,
width 128) unless a checkpoint is given. ``--compare-hf`` also times Hugging Face transformers'
``DecisionTransformerModel`` of the same size in the same process, alternating with ours in blocks of
``--block`` calls so both see the same machine load. The HF figure is its bare forward on pre-built
(1, K) tensors (no input bookkeeping), i.e. favourable to HF; ours includes the whole ``act`` call.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.add_argument("--checkpoint", default=None, help="bench this DT checkpoint instead of a random-init model")
    p.add_argument("--steps", type=int, default=2000, help="timed act() calls")
    p.add_argument("--warmup", type=int, default=100, help="untimed act() calls first")
    p.add_argument("--block", type=int, default=100,
                   help="with --compare-hf: alternate ours/HF every BLOCK calls so both see the same load")
    p.add_argument("--compare-hf", action="store_true",
                   help="also time transformers.DecisionTransformerModel "
                        "(pip install -r scripts/requirements-bench.txt)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _make_policy(args: argparse.Namespace):
    import numpy as np
    import torch

    from ros_seqplanner.nets.dt import DecisionTransformer, DTConfig
    from ros_seqplanner.policies.dt import DTPolicy

    if args.checkpoint:
        return DTPolicy.from_checkpoint(args.checkpoint, device=args.device)
    torch.manual_seed(args.seed)
    model = DecisionTransformer(DTConfig(obs_dim=17, act_dim=6)).to(args.device)
    return DTPolicy(model, np.zeros(17), np.ones(17), rtg_scale=1000.0, target_returns=[6000.0])


def _hf_forward(cfg, device: str):
    """A callable running HF's DecisionTransformerModel forward on a full (1, K) window."""
    import torch
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    hc = DecisionTransformerConfig(state_dim=cfg.obs_dim, act_dim=cfg.act_dim, hidden_size=cfg.n_embd,
                                   n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=4 * cfg.n_embd,
                                   activation_function="relu", max_ep_len=cfg.max_ep_len, action_tanh=True,
                                   resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout)
    model = DecisionTransformerModel(hc).to(device).eval()
    k = cfg.context
    g = torch.Generator().manual_seed(0)
    inputs = {
        "states": torch.randn(1, k, cfg.obs_dim, generator=g).to(device),
        "actions": torch.randn(1, k, cfg.act_dim, generator=g).to(device),
        "rewards": torch.zeros(1, k, 1, device=device),
        "returns_to_go": torch.randn(1, k, 1, generator=g).to(device),
        "timesteps": torch.arange(k, device=device)[None],
        "attention_mask": torch.ones(1, k, dtype=torch.long, device=device),
    }

    def forward():
        with torch.inference_mode():
            out = model(**inputs)
            return out.action_preds[0, -1]

    return forward


def run(args: argparse.Namespace) -> int:
    import json
    import os
    import platform
    import sys
    import time

    import numpy as np
    import torch

    if args.compare_hf:
        try:
            import transformers
        except ImportError:
            print("error: --compare-hf needs Hugging Face transformers, a bench-only dependency: "
                  ".venv/bin/pip install -r scripts/requirements-bench.txt", file=sys.stderr)
            return 2
        transformers.logging.set_verbosity_error()
    if args.steps < 1 or args.block < 1:
        print("error: --steps and --block must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    policy = _make_policy(args)
    cfg = policy.model.cfg
    rng = np.random.default_rng(args.seed)
    observations = rng.normal(size=(1000, cfg.obs_dim)).astype(np.float32)
    rewards = rng.normal(size=1000)
    sync = torch.cuda.synchronize if policy.device.type == "cuda" else (lambda: None)
    state = {"t": 0}

    def act_once() -> None:
        t = state["t"]
        if t == 0 or policy.t >= cfg.max_ep_len:
            policy.reset()
        policy.act(observations[t % 1000], None if policy.t == 0 else float(rewards[t % 1000]))
        state["t"] = t + 1

    def timed(fn, n: int, cpu: list[float]) -> list[float]:
        """Wall ms per call; appends process CPU ms per call (insensitive to preemption) to ``cpu``."""
        out = []
        for _ in range(n):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            sync()
            out.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
        return out

    hf = _hf_forward(cfg, args.device) if args.compare_hf else None
    for _ in range(max(args.warmup, cfg.context)):  # fill the context first
        act_once()
    if hf is not None:
        for _ in range(args.warmup):
            hf()
    ours, theirs, ours_cpu, theirs_cpu = [], [], [], []
    block = args.block if hf is not None else args.steps
    while len(ours) < args.steps:
        ours += timed(act_once, min(block, args.steps - len(ours)), ours_cpu)
        if hf is not None:
            theirs += timed(hf, block, theirs_cpu)
    res = {
        "p50_ms": float(np.percentile(ours, 50)), "p99_ms": float(np.percentile(ours, 99)),
        "mean_ms": float(np.mean(ours)), "cpu_p50_ms": float(np.percentile(ours_cpu, 50)),
        "steps": len(ours), "threads": torch.get_num_threads(),
        "device": str(policy.device), "context": cfg.context, "obs_dim": cfg.obs_dim, "act_dim": cfg.act_dim,
        "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd, "path": "DTPolicy.act",
        "torch": torch.__version__, "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }
    if hf is not None:
        import transformers

        res.update({
            "hf_p50_ms": float(np.percentile(theirs, 50)), "hf_p99_ms": float(np.percentile(theirs, 99)),
            "hf_cpu_p50_ms": float(np.percentile(theirs_cpu, 50)),
            "hf_path": "DecisionTransformerModel.forward on pre-built (1, K) tensors",
            "transformers": transformers.__version__,
        })
        res["speedup_p50"] = res["hf_p50_ms"] / res["p50_ms"]
        res["speedup_p99"] = res["hf_p99_ms"] / res["p99_ms"]
        res["speedup_cpu_p50"] = res["hf_cpu_p50_ms"] / res["cpu_p50_ms"]
        res["speedup"] = res["speedup_p50"]
    if args.json:
        print(json.dumps(res))
    else:
        print(f"DT act (batch 1, K {cfg.context}, obs {cfg.obs_dim}, act {cfg.act_dim}, {res['threads']} thread(s), "
              f"{res['device']}): p50 {res['p50_ms']:.3f} ms  p99 {res['p99_ms']:.3f} ms  "
              f"(CPU p50 {res['cpu_p50_ms']:.3f} ms) over {res['steps']} steps")
        if hf is not None:
            print(f"HF DecisionTransformerModel forward: p50 {res['hf_p50_ms']:.3f} ms  p99 {res['hf_p99_ms']:.3f} ms"
                  f"  (CPU p50 {res['hf_cpu_p50_ms']:.3f} ms) -> speedup {res['speedup_p50']:.2f}x (p50), "
                  f"{res['speedup_p99']:.2f}x (p99), {res['speedup_cpu_p50']:.2f}x (CPU p50)")
        print(f"load average {res['load_avg']}")
    return 0
