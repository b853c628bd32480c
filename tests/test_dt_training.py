"""DT training: window sampling (left padding, rtg, length-proportional), loss reduction, checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from dtbc_synthetic import synthetic_dataset

from ros_seqplanner.data.episodes import Episode, EpisodeDataset
from ros_seqplanner.policies.dt import DTPolicy
from ros_seqplanner.training.dt import (
    DTTrainConfig,
    WindowSampler,
    action_loss,
    default_target_returns,
    fit_dt,
    returns_to_go,
    train_dt,
)

TINY = dict(context=5, n_layer=2, n_head=1, n_embd=32, dropout=0.0, max_ep_len=64, batch_size=32,
            lr=1e-3, warmup_steps=20, rtg_scale=10.0, device="cpu", progress=False, log_every=10)


def test_returns_to_go_include_the_current_reward():
    np.testing.assert_allclose(returns_to_go(np.array([1.0, 2.0, 3.0])), [6.0, 5.0, 3.0])


def test_sampler_left_pads_and_matches_episode_data():
    eps = [Episode(observations=np.arange(t * 2, dtype=np.float32).reshape(t, 2) + 100 * i,
                   actions=np.full((t, 1), 0.1 * i, dtype=np.float32),
                   rewards=np.ones(t, dtype=np.float32) * (i + 1)) for i, t in enumerate((3, 30))]
    ds = EpisodeDataset(episodes=eps, action_low=[-1.0], action_high=[1.0])
    mean, std = np.zeros(2, np.float32), np.ones(2, np.float32)
    sampler = WindowSampler(ds, context=6, max_ep_len=20, rtg_scale=2.0, obs_mean=mean, obs_std=std,
                            device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    s, a, r, ts, mask = sampler.sample(4000)
    assert s.shape == (4000, 6, 2) and a.shape == (4000, 6, 1) and r.shape == (4000, 6) and ts.shape == (4000, 6)
    # padding is on the left, padded entries are zero
    n = mask.sum(1)
    assert torch.equal(mask, torch.arange(6)[None] >= (6 - n)[:, None])
    assert (s[~mask] == 0).all() and (ts[~mask] == 0).all() and (r[~mask] == 0).all()
    for b in range(50):
        ep = 1 if s[b, -1, 0] >= 100 else 0
        t = ts[b, mask[b]]
        raw_t = ((s[b, mask[b], 0] - 100 * ep) / 2).long()  # observation encodes the step index
        assert torch.equal(t, raw_t.clamp(max=19))  # timesteps clamp at max_ep_len - 1
        assert torch.all(raw_t[1:] - raw_t[:-1] == 1)
        length = (3, 30)[ep]
        torch.testing.assert_close(r[b, mask[b]], (length - raw_t).float() * (ep + 1) / 2.0)
        assert torch.allclose(a[b, mask[b]], torch.tensor(0.1 * ep))
    # episodes are drawn in proportion to their length (3 vs 30 steps)
    frac_long = (s[:, -1, 0] >= 100).float().mean().item()
    assert abs(frac_long - 30 / 33) < 0.03


def test_training_reduces_the_action_loss_and_writes_a_usable_checkpoint(tmp_path):
    ds = synthetic_dataset()
    cfg = DTTrainConfig(steps=250, seed=0, target_returns=(40.0,), **TINY)
    path = train_dt(ds, cfg, tmp_path / "dt")
    meta = json.loads(path.read_text())
    history = meta["training"]["loss_history"]
    first, last = history[0][1], np.mean([v for _, v in history[-3:]])
    assert last < 0.2 * first, history
    assert meta["rtg_scale"] == 10.0 and meta["context"] == 5 and meta["target_returns"] == [40.0]
    np.testing.assert_allclose(meta["obs_mean"], ds.concat("observations").mean(0), rtol=1e-4, atol=1e-4)
    # The policy rebuilt from the checkpoint imitates the expert on a training episode.
    policy = DTPolicy.from_checkpoint(path)
    ep = ds.episodes[0]
    policy.reset()
    errs = []
    for t in range(len(ep)):
        a = policy.act(ep.observations[t], None if t == 0 else float(ep.rewards[t - 1]))
        errs.append(np.abs(a - ep.actions[t]).mean())
    untrained_err = np.abs(ds.concat("actions") - ds.concat("actions").mean(0)).mean()
    assert np.mean(errs) < 0.5 * untrained_err


def test_training_is_seeded():
    ds = synthetic_dataset(n_episodes=4)
    cfg = DTTrainConfig(steps=5, seed=3, **TINY)
    m1, meta1 = fit_dt(ds, cfg)
    m2, meta2 = fit_dt(ds, cfg)
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(v1, v2), k
    assert meta1["training"]["loss_history"] == meta2["training"]["loss_history"]


def test_loss_ignores_padded_positions():
    ds = synthetic_dataset(n_episodes=3)
    model, _ = fit_dt(ds, DTTrainConfig(steps=1, **TINY))
    s, a, r, ts, mask = (x[:1] for x in (torch.randn(1, 5, 4), torch.rand(1, 5, 2), torch.randn(1, 5),
                                         torch.arange(5)[None], torch.tensor([[False, False, True, True, True]])))
    base = action_loss(model, (s, a, r, ts, mask))
    a2 = a.clone()
    a2[0, :2] = 50.0  # targets at padded positions must not enter the loss
    torch.testing.assert_close(action_loss(model, (s, a2, r, ts, mask)), base)


def test_default_targets_follow_the_dt_paper():
    ds = synthetic_dataset(n_episodes=2)
    assert default_target_returns(ds) == (pytest.approx(float(ds.returns().max())),)
    ds.env_id = "HalfCheetah-v5"
    assert default_target_returns(ds) == (6000.0, 12000.0)
    ds.env_id = "Hopper-v5"
    assert default_target_returns(ds) == (3600.0, 1800.0)
