"""Open-loop rollout machinery on tiny random models: shapes, determinism, causality, cache parity, windows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ros_seqplanner.data.episodes import Episode
from ros_seqplanner.nets.discretizer import Discretizer
from ros_seqplanner.nets.dynamics import DynamicsConfig, MLPDynamics
from ros_seqplanner.nets.tt import TrajectoryTransformer, TTConfig
from ros_seqplanner.planning.rollout import TokenStream, pick_bin
from ros_seqplanner.sim.long_horizon import (
    compare,
    horizon_error,
    main,
    mlp_open_loop,
    plot,
    start_steps,
    tt_open_loop,
)

OD, AD, N = 3, 2, 8


def tiny_tt(max_transitions: int = 3, seed: int = 0) -> tuple[TrajectoryTransformer, Discretizer]:
    torch.manual_seed(seed)
    cfg = TTConfig(obs_dim=OD, act_dim=AD, n_bins=N, n_layer=2, n_head=2, n_embd=16, max_transitions=max_transitions)
    model = TrajectoryTransformer(cfg).eval()
    with torch.no_grad():  # larger random weights so greedy choices actually depend on the input
        model.tok_emb.weight.normal_(0.0, 1.0)
        model.head.normal_(0.0, 1.0)
    rng = np.random.default_rng(seed)
    disc = Discretizer.fit(rng.normal(size=(500, OD + AD + 2)), n_bins=N)
    return model, disc


def tiny_mlp(seed: int = 0) -> MLPDynamics:
    torch.manual_seed(seed)
    return MLPDynamics(DynamicsConfig(OD, AD, hidden=16, n_layer=2)).eval()


def reference_rollout(model, disc, obs0, actions, decode="greedy"):
    """Slow reference: full forward pass over the cropped window for every token (no cache)."""
    cfg = model.cfg
    d, block = cfg.transition_dim, cfg.block_size
    seq = (disc.encode_dims(obs0.astype(np.float64), 0, OD) + N * np.arange(OD)).tolist()
    preds = []

    def next_bin(seq):
        start = max(0, int(np.ceil((len(seq) - block) / d)) * d)
        logits, _ = model(torch.tensor([seq[start:]]))
        if decode == "greedy":
            return int(torch.argmax(logits[0, -1, :N]))
        p = torch.softmax(logits[0, -1, :N].double(), -1).detach().numpy()  # median: first bin with P(bin <= k) >= 1/2
        return int(np.flatnonzero(np.cumsum(p) >= 0.5)[0])

    for a in actions:
        seq += (disc.encode_dims(a.astype(np.float64), OD, OD + AD) + N * np.arange(OD, OD + AD)).tolist()
        r = next_bin(seq)
        seq.append(r + N * (OD + AD))
        seq.append(next_bin(seq) + N * (OD + AD + 1))
        bins = []
        for j in range(OD):
            bins.append(next_bin(seq))
            seq.append(bins[-1] + N * j)
        preds.append(disc.decode_dims(np.array(bins), 0, OD))
    return np.array(preds)


def test_mlp_rollout_feeds_its_own_predictions():
    m = tiny_mlp()
    rng = np.random.default_rng(1)
    obs0, acts = rng.normal(size=OD).astype(np.float32), rng.uniform(-1, 1, (6, AD)).astype(np.float32)
    states, rewards = mlp_open_loop(m, obs0, acts)
    assert states.shape == (6, OD) and rewards.shape == (6,)
    s = torch.from_numpy(obs0)[None]
    with torch.no_grad():
        for t in range(6):
            s, r = m(s, torch.from_numpy(acts[t])[None])
            np.testing.assert_allclose(states[t], s[0].numpy(), rtol=1e-6)
            np.testing.assert_allclose(rewards[t], r[0].numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="expected obs0"):
        mlp_open_loop(m, obs0[:2], acts)


@pytest.mark.parametrize("decode", ["greedy", "median"])
@pytest.mark.parametrize("horizon", [2, 7])  # 7 transitions > block of 3: sliding window re-encodes
def test_tt_rollout_matches_uncached_reference(horizon, decode):
    model, disc = tiny_tt()
    rng = np.random.default_rng(2)
    obs0, acts = rng.normal(size=OD), rng.normal(size=(horizon, AD))
    states, rewards, info = tt_open_loop(model, disc, obs0, acts, decode=decode)
    assert states.shape == (horizon, OD) and rewards.shape == (horizon,)
    np.testing.assert_array_equal(states, reference_rollout(model, disc, obs0, acts, decode))
    assert (info["reencodes"] > 0) == (horizon >= model.cfg.max_transitions)
    # Predictions are bin midpoints of the tokenizer.
    mids = disc.midpoints_np
    for j in range(OD):
        assert np.isin(states[:, j], mids[j]).all()


def test_pick_bin_argmax_and_median_differ_where_they_should():
    probs = torch.tensor([0.30, 0.10, 0.15, 0.45, 0.0])  # last entry: the stop token
    logits = torch.log(probs.clamp_min(1e-12))
    logits[-1] = 50.0  # a huge stop logit must not count for either rule
    assert pick_bin(logits, 4, "greedy") == 3
    assert pick_bin(logits, 4, "median") == 2  # cumulative 0.30, 0.40, 0.55: the median bin is 2
    assert pick_bin(torch.tensor([5.0, 0.0, 0.0, 0.0, 0.0]), 4, "median") == 0
    with pytest.raises(ValueError, match="unknown decode"):
        pick_bin(logits, 4, "sample")
    model, disc = tiny_tt()
    with pytest.raises(ValueError, match="unknown decode"):
        tt_open_loop(model, disc, np.zeros(OD), np.zeros((2, AD)), decode="mean")


def test_tt_median_rollout_differs_from_greedy_on_broad_predictions():
    model, disc = tiny_tt()
    with torch.no_grad():
        model.head.mul_(0.2)  # flatter next-token distributions, where the mode and the median part
    rng = np.random.default_rng(6)
    obs0, acts = rng.normal(size=OD), rng.normal(size=(5, AD))
    greedy = tt_open_loop(model, disc, obs0, acts, decode="greedy")[0]
    median = tt_open_loop(model, disc, obs0, acts, decode="median")[0]
    assert not np.array_equal(greedy, median)


def test_tt_rollout_is_deterministic_and_causal_in_the_actions():
    model, disc = tiny_tt(max_transitions=4)
    rng = np.random.default_rng(3)
    obs0, acts = rng.normal(size=OD), rng.normal(size=(6, AD))
    s1, r1, _ = tt_open_loop(model, disc, obs0, acts)
    s2, r2, _ = tt_open_loop(model, disc, obs0, acts)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(r1, r2)
    k = 3
    changed = acts.copy()
    changed[k:] = -changed[k:] + 3.0  # different bins from step k on
    s3, r3, _ = tt_open_loop(model, disc, obs0, changed)
    np.testing.assert_array_equal(s3[:k], s1[:k])  # s_1..s_k only depend on a_0..a_{k-1}
    np.testing.assert_array_equal(r3[:k], r1[:k])
    assert not np.array_equal(s3, s1)  # ...and the later ones do react to the new actions


def test_token_stream_keeps_transition_alignment():
    model, _ = tiny_tt(max_transitions=2)
    d = model.cfg.transition_dim
    stream = TokenStream(model)
    for p in range(5 * d):
        assert stream.next_dim == p % d
        logits = stream.feed([p % d * N])
        assert logits.shape == (N + 1,)
        assert len(stream.seq) <= model.cfg.block_size and len(stream.seq) % d == (p + 1) % d
    assert stream.reencodes >= 3


def test_errors_starts_and_compare_json(tmp_path):
    assert start_steps(10, 4, 3) == [0, 3, 6]
    assert start_steps(3, 4, 3) == []
    np.testing.assert_allclose(horizon_error(np.ones((2, 2)), np.zeros((2, 2)), np.array([1.0, 2.0])), [0.75, 0.75])
    rng = np.random.default_rng(4)
    eps = []
    for _ in range(2):
        obs = rng.normal(size=(12, OD)).astype(np.float32)
        eps.append(Episode(observations=obs, actions=rng.normal(size=(12, AD)).astype(np.float32),
                           rewards=np.zeros(12, np.float32), truncated=True, final_observation=obs[-1] + 1))
    res = compare(eps, horizon=5, starts_per_episode=2, tt=tiny_tt(), mlp=tiny_mlp(), progress=False)
    assert res["kind"] == "long_horizon" and res["horizons"] == [1, 2, 3, 4, 5] and res["num_starts"] == 4
    assert set(res["models"]) == {"constant", "data_median", "mlp_dynamics", "tt_greedy", "tt_tokenizer_floor"}
    both = compare(eps, horizon=5, starts_per_episode=2, tt=tiny_tt(), progress=False,
                   tt_decodes=("greedy", "median"))
    assert set(both["models"]) == {"constant", "data_median", "tt_greedy", "tt_median", "tt_tokenizer_floor"}
    assert both["models"]["tt_greedy"]["error"] == res["models"]["tt_greedy"]["error"]
    with pytest.raises(ValueError, match="tt_decodes"):
        compare(eps, horizon=5, tt=tiny_tt(), progress=False, tt_decodes=("mode",))
    # The constant predictor at h=1 is |s_{t0+1} - s_t0| / std, recomputed here.
    scale = np.concatenate([e.observations for e in eps]).std(0) + 1e-6
    expect = np.mean([np.mean(np.abs(e.next_observations()[t] - e.observations[t]) / scale)
                      for e in eps for t in (0, 7)])
    assert res["models"]["constant"]["error"][0] == pytest.approx(expect, rel=1e-5)
    med = np.median(np.concatenate([e.observations for e in eps]), 0)  # data_median at h=2, recomputed
    expect = np.mean([np.mean(np.abs(e.next_observations()[t + 1] - med) / scale) for e in eps for t in (0, 7)])
    assert res["models"]["data_median"]["error"][1] == pytest.approx(expect, rel=1e-5)
    json.dumps(res)
    assert plot(res, tmp_path / "lh.png").stat().st_size > 0
    with pytest.raises(ValueError, match="longer than the horizon"):
        compare(eps, horizon=50, tt=None, mlp=None, progress=False)


def test_main_writes_json_and_plot(tmp_path):
    from ros_seqplanner.data.d4rl_hdf5 import save_d4rl_hdf5
    from ros_seqplanner.data.episodes import EpisodeDataset
    from ros_seqplanner.nets.dynamics import save_dynamics

    rng = np.random.default_rng(5)
    obs = rng.normal(size=(10, OD)).astype(np.float32)
    ds = EpisodeDataset([Episode(observations=obs, actions=rng.normal(size=(10, AD)).astype(np.float32),
                                 rewards=np.zeros(10, np.float32), truncated=True, final_observation=obs[-1])],
                        env_id="Synthetic-v0")
    save_d4rl_hdf5(ds, tmp_path / "d.hdf5")
    save_dynamics(tmp_path / "dyn", tiny_mlp())
    out, png = tmp_path / "lh.json", tmp_path / "lh.png"
    assert main(["--dataset", str(tmp_path / "d.hdf5"), "--mlp", str(tmp_path / "dyn"), "--horizon", "4",
                 "--out", str(out), "--plot", str(png)]) == 0
    res = json.loads(out.read_text())
    assert set(res["models"]) == {"constant", "data_median", "mlp_dynamics"} and png.is_file()
