"""TT attention-map extraction (sim/attention.py) on a tiny random model."""

from __future__ import annotations

import torch

from ros_seqplanner.nets.tt import TrajectoryTransformer, TTConfig
from ros_seqplanner.sim.attention import attention_maps, plot_attention


def tiny() -> TrajectoryTransformer:
    torch.manual_seed(0)
    return TrajectoryTransformer(TTConfig(obs_dim=2, act_dim=1, n_bins=5, n_layer=2, n_head=2, n_embd=16,
                                          max_transitions=3)).eval()


def tokens(model: TrajectoryTransformer, t: int) -> torch.Tensor:
    d, n = model.cfg.transition_dim, model.cfg.n_bins
    return (torch.arange(t) * 7 % n + n * (torch.arange(t) % d))[None]


def test_maps_reproduce_the_attention_output_and_respect_the_mask():
    model = tiny()
    x_tok = tokens(model, 11)
    maps = attention_maps(model, x_tok)
    assert maps.shape == (2, 2, 11, 11)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 11))
    # Re-applying the maps to the values reproduces each layer's attention output.
    x, _ = model._embed(x_tok, None)
    mask = model._attn_mask(11, 0, x.device)
    for li, block in enumerate(model.blocks):
        with torch.no_grad():
            _, _, v = block.attn.split(block.ln1(x))
            expect, _, _ = block.attn(block.ln1(x), mask)
            torch.testing.assert_close(block.attn.merge(maps[li][None] @ v), expect)
            x, _, _ = block(x, mask)
    assert (maps[:, :, ~mask] == 0).all()  # future and value keys get no weight
    d = model.cfg.transition_dim
    assert (maps[..., d - 1] == 0).all()


def test_plot_writes_png(tmp_path):
    model = tiny()
    out = plot_attention(attention_maps(model, tokens(model, 8)), model.cfg.transition_dim, tmp_path / "a.png", "t")
    assert out.stat().st_size > 1000
