"""Attention maps of a trained Trajectory Transformer over one context window (paper Fig. 3 style).

The probabilities are recomputed from the block weights (``ln1`` -> ``qkv`` -> masked softmax), using the
model's own attention mask, so nets/tt.py needs no hook; :func:`attention_maps` is checked against the
module's output in the tests. Rows are queries, columns keys; dotted lines mark transition boundaries.

Run: ``python -m ros_seqplanner.sim.attention --tt models/tt_x --dataset episodes.hdf5 --out docs/attention.png``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from ros_seqplanner.nets.tt import TrajectoryTransformer


@torch.no_grad()
def attention_maps(model: TrajectoryTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """tokens (1, T) -> attention probabilities (n_layer, n_head, T, T) of the (eval-mode) model."""
    if tokens.ndim != 2 or tokens.shape[0] != 1:
        raise ValueError(f"expected one window (1, T), got {tuple(tokens.shape)}")
    if model.cfg.goal_conditioned:
        raise ValueError("attention maps are implemented for non-goal-conditioned models only")
    x, g = model._embed(tokens, None)
    mask = model._attn_mask(tokens.shape[1], g, tokens.device)
    maps = []
    for block in model.blocks:
        q, k, _ = block.attn.split(block.ln1(x))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        maps.append(torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)[0])
        x, _, _ = block(x, mask)
    return torch.stack(maps)


def plot_attention(maps: torch.Tensor, transition_dim: int, path: str | Path, title: str = "", dpi: int = 80) -> Path:
    """Grid of layers x heads; colour = attention probability (square root, to show small weights)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_layer, n_head, t, _ = maps.shape
    fig, axes = plt.subplots(n_layer, n_head, figsize=(2.6 * n_head, 2.6 * n_layer), squeeze=False)
    for li in range(n_layer):
        for hi in range(n_head):
            ax = axes[li][hi]
            ax.imshow(maps[li, hi].sqrt().cpu().numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            for b in range(transition_dim, t, transition_dim):
                ax.axhline(b - 0.5, color="w", lw=0.3, ls=":")
                ax.axvline(b - 0.5, color="w", lw=0.3, ls=":")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"layer {li} head {hi}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="render a TT's attention maps over one context window")
    p.add_argument("--tt", required=True, help="TT checkpoint")
    p.add_argument("--dataset", required=True, help="episodes to take the window from (.hdf5 / Minari)")
    p.add_argument("--episode", type=int, default=0)
    p.add_argument("--start", type=int, default=100, help="first transition of the window")
    p.add_argument("--out", default="docs/attention.png")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from ros_seqplanner.data.episodes import EpisodeDataset
    from ros_seqplanner.data.loading import load_dataset
    from ros_seqplanner.nets.tokens import TrajectoryWindows
    from ros_seqplanner.nets.tt import load_tt

    model, disc, meta = load_tt(args.tt)
    data = load_dataset(args.dataset)
    ep = data.episodes[args.episode]
    windows = TrajectoryWindows(EpisodeDataset([ep], env_id=data.env_id), disc, model.cfg.max_transitions,
                                gamma=float(meta.get("gamma", 0.99)),
                                termination_penalty=float(meta.get("termination_penalty", -100.0)))
    start = int(np.clip(args.start, 0, max(0, len(ep) - model.cfg.max_transitions)))
    x = windows.batch(np.array([start]))[0]
    maps = attention_maps(model, x)
    plot_attention(maps, model.cfg.transition_dim, args.out,
                   f"{Path(args.tt).name}: episode {args.episode}, transitions {start}.."
                   f"{start + model.cfg.max_transitions - 1} (sqrt of attention probability)")
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
