"""Trajectory Transformer GPT: masks (causal + value), K/V-cache parity with the full forward, loss weights."""

from __future__ import annotations

import pytest
import torch

from ros_seqplanner.nets.tt import TrajectoryTransformer, TTConfig
from ros_seqplanner.training.common import adamw_param_groups


def small_model(goal: bool = False, seed: int = 0, **kw) -> TrajectoryTransformer:
    torch.manual_seed(seed)
    cfg = TTConfig(obs_dim=3, act_dim=2, n_bins=10, n_layer=2, n_head=2, n_embd=32, max_transitions=6,
                   goal_conditioned=goal, **kw)
    return TrajectoryTransformer(cfg).eval()


def random_tokens(cfg: TTConfig, b: int, t: int, gen: torch.Generator) -> torch.Tensor:
    """Valid trajectory tokens: the bin of dimension p % D, offset by N * (p % D)."""
    dims = torch.arange(t) % cfg.transition_dim
    return torch.randint(0, cfg.n_bins, (b, t), generator=gen) + cfg.n_bins * dims


def random_goal(cfg: TTConfig, b: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, cfg.n_bins, (b, cfg.obs_dim), generator=gen) + cfg.n_bins * torch.arange(cfg.obs_dim)


def test_config_properties_and_validation():
    cfg = TTConfig(obs_dim=3, act_dim=2, n_bins=10, max_transitions=6)
    assert cfg.transition_dim == 7 and cfg.block_size == 42 and cfg.vocab_size == 71 and cfg.stop_token == 70
    assert TTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="divisible"):
        TTConfig(obs_dim=3, act_dim=2, n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="obs_dim"):
        TTConfig(obs_dim=0, act_dim=2)
    with pytest.raises(ValueError, match="attn_dropout"):
        TTConfig(obs_dim=3, act_dim=2, attn_dropout=1.5)
    no_attn = TTConfig(obs_dim=3, act_dim=2, n_embd=16, attn_dropout=0.0)
    assert TrajectoryTransformer(no_attn).blocks[0].attn.dropout == 0.0
    assert TrajectoryTransformer(TTConfig(obs_dim=3, act_dim=2, n_embd=16)).blocks[0].attn.dropout == 0.1
    with pytest.raises(ValueError, match="unknown"):
        TTConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_head_weights_are_decayed_and_indexed_per_dimension():
    m = small_model()
    decay = {id(p) for p in adamw_param_groups(m, 0.1)[0]["params"]}
    assert id(m.head) in decay and m.head.shape == (7, 32, 11)
    assert id(m.pos_emb) not in decay and id(m.tok_emb.weight) not in decay
    assert [m.head_dim_for_position(p) for p in (0, 5, 6, 7)] == [1, 6, 0, 1]


@pytest.mark.parametrize("goal", [False, True])
def test_causality_later_tokens_never_change_earlier_logits(goal):
    m = small_model(goal)
    cfg, gen = m.cfg, torch.Generator().manual_seed(1)
    toks = random_tokens(cfg, 2, cfg.block_size, gen)
    g = random_goal(cfg, 2, gen) if goal else None
    ref, _ = m(toks, goal=g)
    for j in (1, 9, 20, cfg.block_size - 1):
        if j % cfg.transition_dim == cfg.transition_dim - 1:
            continue
        changed = toks.clone()
        changed[:, j] = (changed[:, j] - cfg.n_bins * (j % cfg.transition_dim) + 3) % cfg.n_bins \
            + cfg.n_bins * (j % cfg.transition_dim)
        out, _ = m(changed, goal=g)
        torch.testing.assert_close(out[:, :j], ref[:, :j], rtol=0, atol=1e-6)
        assert (out[:, j:] - ref[:, j:]).abs().max() > 1e-4  # the change is visible from j on


@pytest.mark.parametrize("goal", [False, True])
def test_value_tokens_are_invisible_to_every_other_position(goal):
    """No query attends to a value key: changing the value token at p only changes the logits at p itself
    (its own residual stream), never any other position, before or after."""
    m = small_model(goal)
    cfg, gen = m.cfg, torch.Generator().manual_seed(2)
    d = cfg.transition_dim
    toks = random_tokens(cfg, 2, cfg.block_size, gen)
    g = random_goal(cfg, 2, gen) if goal else None
    ref, _ = m(toks, goal=g)
    for p in (d - 1, 3 * d - 1):
        changed = toks.clone()
        changed[:, p] = cfg.n_bins * (d - 1) + (toks[:, p] - cfg.n_bins * (d - 1) + 5) % cfg.n_bins
        out, _ = m(changed, goal=g)
        others = torch.ones(cfg.block_size, dtype=torch.bool)
        others[p] = False
        torch.testing.assert_close(out[:, others], ref[:, others], rtol=0, atol=1e-6)
        assert (out[:, p] - ref[:, p]).abs().max() > 1e-4


def test_goal_changes_trajectory_logits():
    m = small_model(goal=True)
    cfg, gen = m.cfg, torch.Generator().manual_seed(3)
    toks = random_tokens(cfg, 1, 10, gen)
    g1, g2 = random_goal(cfg, 1, gen), random_goal(cfg, 1, gen)
    assert not torch.equal(g1, g2)
    assert (m(toks, goal=g1)[0] - m(toks, goal=g2)[0]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="goal-conditioned"):
        m(toks)
    with pytest.raises(ValueError, match="not goal-conditioned"):
        small_model()(toks, goal=g1)


def _decode_all(m, prefix_tokens, rest, goal, static, chunks=None):
    prefix = m.prefill(prefix_tokens, goal=goal)
    cache = m.new_cache(rest.shape[0], rest.shape[1], static_shapes=static)
    if chunks is None:
        out = torch.stack([m.decode(rest[:, i], prefix, cache) for i in range(rest.shape[1])], dim=1)
    else:
        parts, i = [], 0
        for c in chunks:
            parts.append(m.decode_many(rest[:, i:i + c], prefix, cache))
            i += c
        out = torch.cat(parts, dim=1)
    return prefix, cache, out


@pytest.mark.parametrize("goal", [False, True])
@pytest.mark.parametrize("static", [False, True])
def test_cache_parity_beams_sharing_a_prefix(goal, static):
    """Token-by-token decoding of B=4 beams after one shared prefix == full forward, fp32."""
    m = small_model(goal)
    cfg, gen = m.cfg, torch.Generator().manual_seed(4)
    b, t0 = 4, 2 * cfg.transition_dim + 3  # prefix ends mid-transition, past two value tokens
    pre = random_tokens(cfg, 1, t0, gen)
    rest = (random_tokens(cfg, b, cfg.block_size, gen))[:, t0:]
    g = random_goal(cfg, 1, gen) if goal else None
    ref, _ = m(torch.cat([pre.expand(b, -1), rest], 1), goal=None if g is None else g.expand(b, -1))
    prefix, cache, out = _decode_all(m, pre, rest, g, static)
    torch.testing.assert_close(prefix.last_logits, ref[:1, t0 - 1], rtol=0, atol=1e-5)
    torch.testing.assert_close(out, ref[:, t0:], rtol=0, atol=1e-5)
    assert cache.length == rest.shape[1] and int(cache.length_t) == rest.shape[1]
    assert prefix.k[0].shape == (1, cfg.n_head, t0 + (cfg.obs_dim if goal else 0), cfg.n_embd // cfg.n_head)
    # decode_many in uneven chunks gives the same as single decodes
    _, _, many = _decode_all(m, pre, rest, g, static, chunks=[1, 5, rest.shape[1] - 6])
    torch.testing.assert_close(many, out, rtol=0, atol=1e-5)


def test_cache_reorder_selects_and_duplicates_beams():
    m = small_model()
    cfg, gen = m.cfg, torch.Generator().manual_seed(5)
    b, t0, k1, k2 = 3, 5, 6, 8
    pre = random_tokens(cfg, 1, t0, gen)
    body = random_tokens(cfg, b, t0 + k1 + k2, gen)[:, t0:]
    prefix = m.prefill(pre)
    cache = m.new_cache(b, k1 + k2)
    m.decode_many(body[:, :k1], prefix, cache)
    index = torch.tensor([2, 0, 2])  # beam 2 duplicated, beam 1 dropped
    cache.reorder(index)
    out = m.decode_many(body[index, k1:], prefix, cache)
    seqs = torch.cat([pre.expand(b, -1), body[:, :k1][index], body[index, k1:]], 1)
    ref, _ = m(seqs)
    torch.testing.assert_close(out, ref[:, t0 + k1:], rtol=0, atol=1e-5)
    cache.reset()
    assert cache.length == 0


def test_decode_errors_are_clear():
    m = small_model()
    cfg, gen = m.cfg, torch.Generator().manual_seed(6)
    prefix = m.prefill(random_tokens(cfg, 1, cfg.block_size - 2, gen))
    cache = m.new_cache(2, 4)
    with pytest.raises(ValueError, match="beams"):
        m.decode(torch.zeros(3, dtype=torch.long), prefix, cache)
    m.decode_many(torch.zeros(2, 2, dtype=torch.long), prefix, cache)
    with pytest.raises(ValueError, match="block size"):
        m.decode(torch.zeros(2, dtype=torch.long), prefix, cache)
    with pytest.raises(ValueError, match="exceeds block size"):
        m(torch.zeros(1, cfg.block_size + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="prefill"):
        m.prefill(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="shared prefix"):  # a batched prefill is no shared prefix
        m.decode(torch.zeros(2, dtype=torch.long), m.prefill(torch.zeros(2, 3, dtype=torch.long)), cache)


def test_loss_weights_actions_and_respects_mask():
    """CE at each target is weighted by its dimension (action x5) and the mask; padding is ignored."""
    m = small_model(action_weight=5.0)
    cfg, gen = m.cfg, torch.Generator().manual_seed(7)
    t, d = 3 * cfg.transition_dim, cfg.transition_dim
    seq = random_tokens(cfg, 2, t + 1, gen)
    x, y = seq[:, :-1], seq[:, 1:]
    logits, loss = m(x, y)
    tgt_dim = torch.arange(1, t + 1) % d
    local = y - cfg.n_bins * tgt_dim
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.n_bins + 1), local.reshape(-1),
                                           reduction="none").view(2, t)
    w = torch.where((tgt_dim >= cfg.obs_dim) & (tgt_dim < cfg.obs_dim + cfg.act_dim), 5.0, 1.0)
    torch.testing.assert_close(loss, (ce * w).mean())
    mask = torch.ones(2, t)
    mask[:, t // 2:] = 0
    garbage = y.clone()
    garbage[:, t // 2:] = cfg.stop_token  # masked targets may hold anything
    _, masked = m(x, garbage, mask)
    torch.testing.assert_close(masked, (ce * w)[:, : t // 2].sum() / mask.sum())
    # stop targets score class N
    stop_y = y.clone()
    stop_y[:, 0] = cfg.stop_token
    one = torch.zeros(2, t)
    one[:, 0] = 1
    _, stop_loss = m(x, stop_y, one)
    expect = torch.nn.functional.cross_entropy(logits[:, 0], torch.full((2,), cfg.n_bins), reduction="sum") / 2
    torch.testing.assert_close(stop_loss, expect * w[0])
    with pytest.raises(ValueError, match="wrong dimension"):
        m(x, x)  # unshifted targets: every id belongs to the previous dimension


def test_bf16_autocast_forward_and_decode_run():
    m = small_model()
    cfg, gen = m.cfg, torch.Generator().manual_seed(8)
    toks = random_tokens(cfg, 2, 12, gen)
    ref, _ = m(toks)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = m(toks)
        prefix = m.prefill(toks[:1, :10])
        cache = m.new_cache(2, 2)
        dec = m.decode_many(toks[:, 10:], prefix, cache)
    assert out.dtype == torch.float32 and torch.isfinite(dec).all()
    assert (out - ref).abs().max() < 0.1
