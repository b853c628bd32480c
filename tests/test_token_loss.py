"""Per-group token cross-entropy of a TT (``seqplanner token-loss``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ros_seqplanner.cli import main as cli_main
from ros_seqplanner.data.d4rl_hdf5 import save_d4rl_hdf5
from ros_seqplanner.data.episodes import Episode, EpisodeDataset
from ros_seqplanner.nets.discretizer import Discretizer
from ros_seqplanner.nets.tokens import dataset_transitions, fit_discretizer
from ros_seqplanner.nets.tt import TrajectoryTransformer, TTConfig, load_tt
from ros_seqplanner.training.token_loss import (
    GROUPS,
    action_entropy_floor,
    start_token_losses,
    token_losses,
    uniform_cross_entropy,
    value_fit,
)
from ros_seqplanner.training.tt import TTTrainConfig, toy_dataset, train_tt


@pytest.mark.parametrize("goal_conditioned", [False, True])
def test_a_model_that_predicts_nothing_scores_the_uniform_baseline(goal_conditioned):
    ds = toy_dataset(n_episodes=6, length=30, obs_dim=3, act_dim=2, seed=2)
    disc = fit_discretizer(ds, 12, "quantile", 0.99, -100.0)
    model = TrajectoryTransformer(TTConfig(obs_dim=3, act_dim=2, n_bins=12, n_layer=1, n_head=2, n_embd=16,
                                           max_transitions=4, goal_conditioned=goal_conditioned))
    with torch.no_grad():
        model.head.zero_()  # every logit 0: a uniform prediction over the 12 bins + stop
    out = token_losses(model, disc, ds, gamma=0.99, termination_penalty=-100.0, windows=50, batch_size=16)
    assert tuple(out) == GROUPS
    for g in out.values():
        assert g.cross_entropy == pytest.approx(math.log(13), abs=1e-5) == pytest.approx(uniform_cross_entropy(12))
    # every real transition in a window contributes one reward, one value and all its action tokens
    rew = out["reward"].tokens
    assert rew > 0 and out["value"].tokens == rew and out["action"].tokens == 2 * rew
    assert rew * 3 - 50 <= out["observation"].tokens <= rew * 3  # a window's first observation token is an input
    # A uniform prediction puts the expected value at the mean of the value bins' midpoints, for every token.
    vf = value_fit(model, disc, ds, gamma=0.99, termination_penalty=-100.0, windows=50, batch_size=16)
    assert vf.tokens == rew and math.isnan(vf.r)
    assert vf.fall_predicted == pytest.approx(float(disc.midpoints_np[3 + 2 + 1].mean()), rel=1e-5)
    assert vf.falls == sum(ep.terminated for ep in ds) > 0
    assert vf.fall_target < vf.mean_target  # the termination penalty pulls the last values down
    # ...over exactly the last 4 (= max_transitions) transitions of each terminated episode, quantised
    vd = 3 + 2 + 1
    last = np.concatenate([tr[-4:, vd] for tr, ep in zip(dataset_transitions(ds, 0.99, -100.0), ds) if ep.terminated])
    expect = disc.decode_dims(disc.encode_dims(last[:, None], vd, vd + 1), vd, vd + 1)
    assert vf.fall_target == pytest.approx(float(expect.mean()), rel=1e-6)
    # the episode-start check: one value token per episode, its target the quantised value of the first transition
    firsts = np.array([tr[0, vd] for tr in dataset_transitions(ds, 0.99, -100.0)])
    assert vf.starts == len(ds)
    assert vf.start_target == pytest.approx(float(disc.decode_dims(disc.encode_dims(firsts[:, None], vd, vd + 1), vd,
                                                                    vd + 1).mean()), rel=1e-6)
    assert vf.start_predicted == pytest.approx(vf.fall_predicted, rel=1e-6)  # uniform: the same expectation
    never_falls = toy_dataset(n_episodes=6, length=30, obs_dim=3, act_dim=2, seed=2, terminate_fraction=0.0)
    vf = value_fit(model, disc, never_falls, gamma=0.99, termination_penalty=-100.0, windows=50, batch_size=16)
    assert vf.falls == 0 and vf.fall_profile == () and vf.fall_target is None and vf.fall_predicted is None
    with pytest.raises(ValueError, match="do not match the model"):
        token_losses(model, disc, toy_dataset(obs_dim=4), gamma=0.99, termination_penalty=-100.0)


def test_start_windows_score_only_each_episodes_first_steps():
    ds = toy_dataset(n_episodes=6, length=30, obs_dim=3, act_dim=2, seed=2)
    disc = fit_discretizer(ds, 12, "quantile", 0.99, -100.0)
    torch.manual_seed(0)
    model = TrajectoryTransformer(TTConfig(obs_dim=3, act_dim=2, n_bins=12, n_layer=1, n_head=2, n_embd=16,
                                           max_transitions=4))
    # the same episodes with every step after the first 5 shuffled (a window of 4 transitions also predicts the
    # first observation token of the 5th): the start windows do not see the change (value targets do: they sum
    # the rewards to come), random windows do
    rng = np.random.default_rng(0)
    tails = EpisodeDataset([Episode(np.r_[ep.observations[:5], rng.permutation(ep.observations[5:])],
                                    np.r_[ep.actions[:5], rng.permutation(ep.actions[5:])], ep.rewards,
                                    terminated=ep.terminated, truncated=ep.truncated) for ep in ds])
    kw = dict(gamma=0.99, termination_penalty=-100.0, windows=50, batch_size=16)
    a, b = start_token_losses(model, disc, ds, **kw), start_token_losses(model, disc, tails, **kw)
    for g in ("observation", "action", "reward"):
        assert a[g].cross_entropy == pytest.approx(b[g].cross_entropy, rel=1e-6), g
    assert a["reward"].tokens == 6 * 4 and a["action"].tokens == 6 * 4 * 2  # every episode, its first 4 steps
    ra, rb = token_losses(model, disc, ds, **kw), token_losses(model, disc, tails, **kw)
    assert ra["observation"].cross_entropy != pytest.approx(rb["observation"].cross_entropy, rel=1e-6)
    assert start_token_losses(model, disc, ds, **{**kw, "windows": 2})["reward"].tokens == 2 * 4  # 2 episodes
    with pytest.raises(ValueError, match="windows must be >= 1"):
        start_token_losses(model, disc, ds, **{**kw, "windows": 0})


def test_training_lowers_every_group_and_the_cli_reports_it(tmp_path, capsys):
    ds = toy_dataset(n_episodes=8, length=40, seed=1)
    tiny = dict(n_bins=10, max_transitions=4, n_layer=1, n_head=2, n_embd=32, batch_size=32, progress=False,
                dropout=0.0, lr=1e-2, seed=1)
    start = train_tt(ds, TTTrainConfig(**tiny, max_steps=1), tmp_path / "start")
    trained = train_tt(ds, TTTrainConfig(**tiny, max_steps=200), tmp_path / "trained")
    before, after = ({k: v.cross_entropy for k, v in token_losses(
        *load_tt(p)[:2], ds, gamma=0.99, termination_penalty=-100.0, windows=64).items()} for p in (start, trained))
    for name in ("observation", "action", "reward"):
        assert after[name] < 0.8 * before[name], (name, before, after)
    v0, v1 = (value_fit(*load_tt(p)[:2], ds, gamma=0.99, termination_penalty=-100.0, windows=64)
              for p in (start, trained))
    assert v0.fall_target == v1.fall_target < v1.mean_target  # same windows, pulled down by the penalty
    assert v1.r > 0.6 and v1.r > v0.r + 0.2, (v0, v1)
    assert abs(v1.fall_predicted - v1.fall_target) < 0.6 * abs(v0.fall_predicted - v0.fall_target), (v0, v1)
    save_d4rl_hdf5(ds, tmp_path / "toy.hdf5")
    rc = cli_main(["token-loss", str(tmp_path / "trained"), "--dataset", str(tmp_path / "toy.hdf5"),
                   "--windows", "64", "--out", str(tmp_path / "tl.json")])
    assert rc == 0
    printed = capsys.readouterr().out
    res = json.loads((tmp_path / "tl.json").read_text())
    assert res["step"] == 200 and res["uniform_cross_entropy"] == pytest.approx(math.log(11))
    assert res["groups"]["observation"]["cross_entropy"] == pytest.approx(after["observation"], rel=1e-6)
    assert f"{after['action']:.3f}" in printed
    at_start = start_token_losses(*load_tt(tmp_path / "trained")[:2], ds, gamma=0.99, termination_penalty=-100.0,
                                  windows=64)
    assert res["start_groups"]["action"]["cross_entropy"] == pytest.approx(at_start["action"].cross_entropy, rel=1e-6)
    assert "windows that start an episode (8 episodes, 32 transitions)" in printed
    got, want = res["value_fit"], json.loads(json.dumps(v1.to_dict()))
    assert got["r"] == pytest.approx(want["r"], rel=1e-6) and got["falls"] == want["falls"] == 2
    assert [f["first"] for f in got["fall_profile"]] == [1, 9, 17]  # 0, 2 and 4 windows of 4 before the end
    for g, w in zip(got["fall_profile"], want["fall_profile"], strict=True):
        assert g == pytest.approx(w, rel=1e-6)
    assert f"r {v1.r:.3f}" in printed and "17-20 steps before a termination (2 episodes)" in printed
    assert got["starts"] == 8 and got["start_error"] == pytest.approx(v1.start_error, rel=1e-6)
    assert f"first transition of an episode (8 episodes): mean target {v1.start_target:.1f}" in printed
    assert v1.start_error < 0.6 * v0.start_error, (v0, v1)  # the trained model knows what a start is worth
    save_d4rl_hdf5(toy_dataset(n_episodes=2, length=10, obs_dim=5), tmp_path / "other.hdf5")
    assert cli_main(["token-loss", str(tmp_path / "trained"), "--dataset", str(tmp_path / "other.hdf5")]) == 2
    assert "do not match the model" in capsys.readouterr().err


class _Fixed:
    def act_batch(self, observations, rng=None):
        return np.tile([0.3, -0.7], (len(observations), 1))


class _Uniform:
    def act_batch(self, observations, rng=None):
        return rng.uniform(-1.0, 1.0, size=(len(observations), 2))


def test_action_entropy_floor_is_zero_for_a_deterministic_policy_and_log_n_for_a_uniform_one():
    # transition = 3 obs + 2 act + reward + value; uniform bins over [-1, 1] for every dimension
    corners = np.array([[-1.0] * 7, [1.0] * 7])
    disc = Discretizer.fit(np.concatenate([corners, np.random.default_rng(0).uniform(-1, 1, (500, 7))]), 10,
                           "uniform")
    obs = np.random.default_rng(1).normal(size=(50, 3))
    assert action_entropy_floor(disc, 3, 2, _Fixed(), obs, states=5, samples=200) == 0.0
    floor = action_entropy_floor(disc, 3, 2, _Uniform(), obs, states=20, samples=4000)
    assert floor == pytest.approx(math.log(10), abs=0.01)
    with pytest.raises(ValueError, match=r"\(N, 3\) array"):
        action_entropy_floor(disc, 3, 2, _Fixed(), np.zeros((4, 2)))
