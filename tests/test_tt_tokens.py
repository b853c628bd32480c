"""Discretizer and trajectory tokenization (value-to-go, termination, stop token, windows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ros_seqplanner.data.episodes import Episode, EpisodeDataset
from ros_seqplanner.nets.discretizer import Discretizer
from ros_seqplanner.nets.tokens import (
    TrajectoryWindows,
    bins_to_tokens,
    episode_transitions,
    fit_discretizer,
    tokens_to_bins,
)


def test_uniform_round_trip_within_half_a_bin():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(5000, 4)) * np.array([1.0, 10.0, 0.01, 3.0]) + np.array([0, 5, -2, 100])
    disc = Discretizer.fit(data, n_bins=50, strategy="uniform")
    bins = disc.encode(data)
    assert bins.dtype == np.int64 and bins.min() == 0 and bins.max() == 49
    width = (data.max(0) - data.min(0)) / 50
    err = np.abs(disc.decode(bins) - data)
    assert np.all(err <= width / 2 + 1e-5 * np.abs(data).max(0))
    # torch path agrees with numpy
    t = torch.as_tensor(data, dtype=torch.float32)
    assert torch.equal(disc.encode(t), torch.as_tensor(disc.encode(t.numpy())))
    np.testing.assert_allclose(disc.decode(torch.as_tensor(bins)).numpy(), disc.decode(bins))
    # out-of-range values clip to the end bins
    assert disc.encode(np.array([[-1e9, -1e9, -1e9, -1e9]])).tolist() == [[0, 0, 0, 0]]
    assert disc.encode(np.array([[1e9, 1e9, 1e9, 1e9]])).tolist() == [[49, 49, 49, 49]]


def test_quantile_edges_monotone_and_equal_mass():
    rng = np.random.default_rng(1)
    data = np.stack([rng.exponential(size=10000), rng.normal(size=10000) ** 3], axis=1)
    disc = Discretizer.fit(data, n_bins=20, strategy="quantile")
    assert np.all(np.diff(disc.edges, axis=1) >= 0)
    assert disc.edges[:, 0].tolist() == data.min(0).tolist() and disc.edges[:, -1].tolist() == data.max(0).tolist()
    counts = np.stack([np.bincount(disc.encode(data)[:, d], minlength=20) for d in range(2)])
    assert counts.min() >= 0.9 * 500 and counts.max() <= 1.1 * 500  # ~equal mass per bin
    assert np.all(np.diff(disc.midpoints_np, axis=1) >= 0)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_degenerate_and_point_mass_dimensions(strategy):
    rng = np.random.default_rng(2)
    n = 1000
    data = np.stack([np.full(n, 3.5), rng.normal(size=n), np.where(rng.random(n) < 0.9, 0.0, -100.0)], axis=1)
    disc = Discretizer.fit(data, n_bins=10, strategy=strategy)
    rec = disc.decode(disc.encode(data))
    assert np.all(rec[:, 0] == 3.5)  # constant dimension decodes exactly
    assert np.all(np.isfinite(rec))
    if strategy == "quantile":
        assert np.all(rec[data[:, 2] == 0.0, 2] == 0.0)  # the point mass at the top is reproduced exactly


def test_discretizer_bad_input_and_serialisation():
    with pytest.raises(ValueError, match="NaN"):
        Discretizer.fit(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="non-empty"):
        Discretizer.fit(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="strategy"):
        Discretizer.fit(np.zeros((4, 3)), strategy="kmeans")
    with pytest.raises(ValueError, match="non-decreasing"):
        Discretizer(np.array([[0.0, 2.0, 1.0]]))
    disc = Discretizer.fit(np.random.default_rng(3).normal(size=(100, 3)), n_bins=7)
    again = Discretizer.from_dict(disc.to_dict())
    assert np.array_equal(again.edges, disc.edges) and again.strategy == disc.strategy
    x = np.random.default_rng(4).normal(size=(5, 3))
    assert np.array_equal(disc.encode_dims(x[:, 1:], 1, 3), disc.encode(x)[:, 1:])
    with pytest.raises(ValueError, match="expected 2"):
        disc.encode_dims(x, 1, 3)


def test_value_to_go_and_termination_penalty_on_hand_computed_episode():
    obs = np.arange(6, dtype=np.float32).reshape(3, 2)
    acts = np.ones((3, 1), dtype=np.float32)
    ep = Episode(obs, acts, np.array([1.0, 2.0, 3.0]), terminated=True)
    tr = episode_transitions(ep, gamma=0.5, termination_penalty=-100.0)
    # rewards after the penalty: [1, 2, -97]; V_t = sum_{k>=1} 0.5^(k-1) r_{t+k}
    np.testing.assert_allclose(tr[:, 3], [1.0, 2.0, -97.0])
    np.testing.assert_allclose(tr[:, 4], [2.0 + 0.5 * -97.0, -97.0, 0.0])
    np.testing.assert_allclose(tr[:, :2], obs)
    trunc = Episode(obs, acts, np.array([1.0, 2.0, 3.0]), truncated=True)
    tr2 = episode_transitions(trunc, gamma=0.5, termination_penalty=-100.0)
    np.testing.assert_allclose(tr2[:, 3], [1.0, 2.0, 3.0])  # no penalty on a time limit
    np.testing.assert_allclose(tr2[:, 4], [2.0 + 1.5, 3.0, 0.0])  # bootstrap 0 at the cut (as official)


def _tiny_dataset():
    rng = np.random.default_rng(5)
    eps = [Episode(rng.normal(size=(4, 2)), rng.normal(size=(4, 1)), rng.normal(size=4), terminated=True),
           Episode(rng.normal(size=(6, 2)), rng.normal(size=(6, 1)), rng.normal(size=6), truncated=True)]
    return EpisodeDataset(eps)


def test_windows_tokens_stop_target_and_padding_mask():
    ds = _tiny_dataset()
    disc = fit_discretizer(ds, n_bins=8, gamma=0.9)
    d = 5
    win = TrajectoryWindows(ds, disc, max_transitions=3, gamma=0.9)
    assert len(win) == 10 and win.seq_len == 15 and win.stop_token == 40
    x, y, mask = win.batch(np.arange(len(win)))
    assert x.shape == y.shape == mask.shape == (10, 15)
    assert torch.equal(x[:, 1:], y[:, :-1])
    # tokens of a full window are per-dimension bins offset by N * dim
    expect = bins_to_tokens(disc.encode(episode_transitions(ds.episodes[1], 0.9)), 8)
    assert torch.equal(x[4], torch.as_tensor(expect[:3].reshape(-1)))
    assert torch.equal(y[4, -1], torch.as_tensor(expect[3, 0]))  # last target: next transition's obs_0
    assert mask[4].sum() == 15
    assert np.array_equal(tokens_to_bins(expect, 8), disc.encode(episode_transitions(ds.episodes[1], 0.9)))
    # terminated episode: window starting at its last transition -> D real tokens, then STOP as a target
    assert x[3, :d].tolist() == bins_to_tokens(disc.encode(episode_transitions(ds.episodes[0], 0.9)), 8)[3].tolist()
    assert y[3, d - 1] == 40 and mask[3, d - 1] == 1
    assert mask[3, d:].sum() == 0 and mask[3, : d - 1].sum() == d - 1
    # truncated episode: the end is padding only, no STOP target
    assert mask[9, : d - 1].sum() == d - 1 and mask[9, d - 1:].sum() == 0
    # windows never cross episodes
    assert (x[2, 2 * d:] == 40).all() and mask[2, 2 * d:].sum() == 0 and mask[2, 2 * d - 1] == 1
    item = win[3]
    assert all(torch.equal(a, b[3]) for a, b in zip(item, (x, y, mask)))
    with pytest.raises(IndexError):
        win.batch(np.array([10]))


def test_goal_windows_use_final_observation():
    ds = _tiny_dataset()
    disc = fit_discretizer(ds, n_bins=8)
    win = TrajectoryWindows(ds, disc, max_transitions=2, goal_conditioned=True)
    *_, goal = win.batch(np.array([0, 5]))
    last_obs = ds.episodes[1].observations[-1]  # no final_observation stored -> last observation
    assert goal[1].tolist() == bins_to_tokens(disc.encode_dims(last_obs[None], 0, 2), 8)[0].tolist()


def _hopper_like(n_eps: int = 40, seed: int = 0) -> EpisodeDataset:
    """Episodes that start slowly (reward ~0.5) and mostly end by falling, like hopper-medium."""
    rng = np.random.default_rng(seed)
    eps = []
    for i in range(n_eps):
        t = int(rng.integers(30, 60))
        rewards = np.r_[rng.uniform(0.4, 0.9, 3), rng.uniform(2.0, 4.0, t - 3)]
        eps.append(Episode(rng.normal(size=(t, 2)), rng.normal(size=(t, 1)), rewards,
                           terminated=i % 4 != 0, truncated=i % 4 == 0))
    return EpisodeDataset(eps)


def test_terminal_rewards_get_their_own_bin():
    ds = _hopper_like()
    disc = fit_discretizer(ds, n_bins=20, gamma=0.9, termination_penalty=-100.0)
    r = 3  # obs 2 + act 1
    rows = np.concatenate([episode_transitions(ep, 0.9, -100.0) for ep in ds])
    last = np.cumsum([len(ep.rewards) for ep in ds]) - 1
    terminal = np.zeros(len(rows), dtype=bool)
    terminal[last[[ep.terminated for ep in ds]]] = True
    bins = disc.encode(rows)[:, r]
    assert np.all(bins[terminal] == 0) and np.all(bins[~terminal] >= 1)  # bin 0 holds exactly the terminal steps
    # the slow start decodes near its true value, not near penalty / 2 as with plain quantile bins
    start = rows[[0 if i == 0 else last[i - 1] + 1 for i in range(len(ds))], r]
    assert np.abs(disc.decode(disc.encode(rows))[~terminal, r] - rows[~terminal, r]).max() < 1.0
    plain = Discretizer.fit(rows, n_bins=20)
    assert np.abs(plain.decode(plain.encode(rows))[~terminal, r] - rows[~terminal, r]).max() > 40
    assert plain.midpoints_np[r, 0] < -40 and plain.encode(rows)[:, r][terminal].max() == 0
    assert np.any(plain.encode(rows)[:, r][~terminal] == 0)  # the bug this fixes: ordinary steps in the penalty bin
    assert np.all(disc.decode(disc.encode(rows))[:, r][~terminal] > 0) and start.max() < 1.0
    # other columns and strategies are the plain fit
    np.testing.assert_array_equal(np.delete(disc.edges, r, axis=0), np.delete(plain.edges, r, axis=0))
    uni = fit_discretizer(ds, n_bins=20, strategy="uniform", gamma=0.9)
    np.testing.assert_array_equal(uni.edges, Discretizer.fit(rows, n_bins=20, strategy="uniform").edges)
    # no terminations, or a penalty that does not separate them: plain quantiles
    for kwargs in ({"termination_penalty": 0.0}, {"termination_penalty": 1.0}):
        rows_k = np.concatenate([episode_transitions(ep, 0.9, kwargs["termination_penalty"]) for ep in ds])
        np.testing.assert_array_equal(fit_discretizer(ds, n_bins=20, gamma=0.9, **kwargs).edges,
                                      Discretizer.fit(rows_k, n_bins=20).edges)
