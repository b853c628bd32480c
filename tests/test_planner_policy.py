"""TTPolicy (receding-horizon control around the beam planner), presets and the bench command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ros_seqplanner.nets.discretizer import Discretizer
from ros_seqplanner.nets.tt import TrajectoryTransformer, TTConfig, save_tt
from ros_seqplanner.planning.beam import PlannerConfig
from ros_seqplanner.planning.presets import PRESETS, get_preset, normalize_name, preset_names
from ros_seqplanner.policies.base import Policy
from ros_seqplanner.policies.tt import TTPolicy

OD, AD, NB = 4, 2, 16


def make(goal=False, seed=0, **cfg_kw):
    torch.manual_seed(seed)
    mc = TTConfig(obs_dim=OD, act_dim=AD, n_bins=NB, n_layer=1, n_head=2, n_embd=16, dropout=0.0,
                  max_transitions=6, goal_conditioned=goal)
    model = TrajectoryTransformer(mc).eval()
    rng = np.random.default_rng(seed)
    data = rng.uniform(-2, 2, size=(500, mc.transition_dim))
    disc = Discretizer.fit(data, NB, "uniform")
    kw = {"horizon": 3, "beam_width": 3, "n_expand": 2, "max_context_transitions": 2, **cfg_kw}
    if goal:
        kw["mode"] = "goal"
    return model, disc, PlannerConfig(**kw)


def obs(rng):
    return rng.uniform(-1, 1, OD)


def test_act_returns_bounded_float32_actions_and_plan():
    model, disc, cfg = make()
    low, high = np.array([-0.5, -0.2]), np.array([0.5, 0.1])  # tighter than the discretizer's range
    pol = TTPolicy(model, disc, cfg, low, high)
    assert isinstance(pol, Policy)
    rng = np.random.default_rng(0)
    pol.reset(seed=1)
    r = None
    for _ in range(5):
        a = pol.act(obs(rng), r)
        r = 0.5
        assert a.dtype == np.float32 and a.shape == (AD,)
        assert np.all(a >= low.astype(np.float32)) and np.all(a <= high.astype(np.float32))
        assert pol.timings.planned and pol.timings.act_ms > 0
    p = pol.last_plan
    assert p.observations.shape == (3, OD) and p.actions.shape == (3, AD)
    assert p.rewards.shape == (3,) and p.values.shape == (3,)
    np.testing.assert_array_equal(a, np.clip(p.actions[0], low, high).astype(np.float32))


def test_plan_freq_reuses_the_current_plan():
    model, disc, cfg = make(plan_freq=2)
    pol = TTPolicy(model, disc, cfg)
    rng = np.random.default_rng(1)
    planned, r = [], None
    for k in range(6):
        a = pol.act(obs(rng), r)
        r = 0.0
        planned.append(pol.timings.planned)
        np.testing.assert_array_equal(a, np.clip(pol.last_plan.actions[k % 2], -1, 1).astype(np.float32))
    assert planned == [True, False, True, False, True, False]
    # plan_freq beyond the horizon: replans when the plan runs out of actions
    model, disc, cfg = make(plan_freq=10, horizon=2)
    pol = TTPolicy(model, disc, cfg)
    planned = []
    for k in range(5):
        pol.act(obs(rng), None if k == 0 else 0.0)
        planned.append(pol.timings.planned)
    assert planned == [True, False, True, False, True]


def test_context_bookkeeping():
    model, disc, cfg = make()
    pol = TTPolicy(model, disc, cfg)
    rng = np.random.default_rng(2)
    history = []
    o = obs(rng)
    a = pol.act(o, None)
    assert pol.context_transitions == 0
    for k in range(4):
        r = float(k) - 1.5
        history.append((o, a, r))
        o = obs(rng)
        a = pol.act(o, r)
        assert pol.context_transitions == min(k + 1, 2)
    toks = pol.context_tokens(o)
    d = OD + AD + 2
    assert toks.shape == (2 * d + OD,)
    for i, (oo, aa, rr) in enumerate(history[-2:]):
        expect = disc.encode(np.concatenate([oo, aa, [rr, 0.0]]))
        expect[-1] = NB - 1  # value placeholder: the top bin, as the official 1e6 placeholder
        np.testing.assert_array_equal(toks[i * d:(i + 1) * d], expect + NB * np.arange(d))
    np.testing.assert_array_equal(toks[-OD:], disc.encode_dims(o.astype(np.float32), 0, OD) + NB * np.arange(OD))
    pol.reset()
    assert pol.context_transitions == 0 and pol.last_plan is None


def _transition_tokens(disc, o, a, r):
    d = OD + AD + 2
    expect = disc.encode(np.concatenate([o, a, [r, 0.0]]))
    expect[-1] = NB - 1
    return expect + NB * np.arange(d)


def test_catch_up_keeps_one_transition_per_control_period():
    """A realtime node whose plan outlasts the control period tells the policy what the robot executed at the
    planned state and which states it passed meanwhile: the context then holds exactly those transitions."""
    model, disc, cfg = make()
    low, high = np.array([-0.5, -0.2]), np.array([0.5, 0.1])
    pol = TTPolicy(model, disc, cfg, low, high)
    rng = np.random.default_rng(3)
    s0, s1, s2 = obs(rng), obs(rng), obs(rng)
    pol.correct_last_action(np.zeros(AD))  # before the first act: nothing to correct
    a0 = pol.act(s0, None)
    x0, x1 = np.array([0.3, -0.1]), np.array([0.9, 0.05])  # x1 beyond the bounds: clipped like an act
    assert not np.allclose(x0, a0)
    pol.correct_last_action(x0)
    pol.observe(s1, 0.5, x1)
    assert pol.context_transitions == 1
    pol.act(s2, -0.25)
    assert pol.context_transitions == 2
    toks = pol.context_tokens(s2)
    d = OD + AD + 2
    np.testing.assert_array_equal(toks[:d], _transition_tokens(disc, s0, x0, 0.5))
    np.testing.assert_array_equal(toks[d:2 * d], _transition_tokens(disc, s1, np.clip(x1, low, high), -0.25))
    # Bad input: a clear error and the context is unchanged.
    before = pol.context_tokens(s2)
    for bad in (np.array([np.nan, 0.0]), np.zeros(AD + 1)):
        with pytest.raises(ValueError, match="action must be"):
            pol.observe(s1, 0.5, bad)
        with pytest.raises(ValueError, match="action must be"):
            pol.correct_last_action(bad)
    with pytest.raises(ValueError, match="reward for the previous action"):
        pol.observe(s1, None, x0)
    with pytest.raises(ValueError, match="NaN"):
        pol.observe(np.full(OD, np.nan), 0.5, x0)
    np.testing.assert_array_equal(pol.context_tokens(s2), before)


def test_act_ahead_plans_from_the_models_prediction_of_the_committed_steps():
    """Latency compensation: the planner's prefix is the observation, the committed action with the predicted
    reward, then the predicted next observation -- the same point predictions as the open-loop rollout of the
    long-horizon study (whose value token is the model's, here the context placeholder: value tokens are
    masked out of attention, so the predictions agree). The context keeps only what was executed."""
    from ros_seqplanner.sim.long_horizon import tt_open_loop

    model, disc, cfg = make()
    pol = TTPolicy(model, disc, cfg)
    rng = np.random.default_rng(4)
    s0, s1, s2 = obs(rng), obs(rng), obs(rng)
    committed = np.array([[0.4, -0.3]], np.float32)
    seen = []
    plan = pol.planner.plan
    pol.planner.plan = lambda prefix, *a: (seen.append(prefix.numpy().copy()), plan(prefix, *a))[1]
    a = pol.act_ahead(s0, None, committed)
    np.testing.assert_array_equal(a, np.clip(pol.last_plan.actions[0], -1, 1).astype(np.float32))
    states, rewards, _ = tt_open_loop(model, disc, s0, committed, decode="median")
    d = OD + AD + 2
    prefix = seen[0]
    assert prefix.shape == (d + OD,)
    off = NB * np.arange(d)
    np.testing.assert_array_equal(prefix[:OD], disc.encode_dims(s0.astype(np.float32), 0, OD) + off[:OD])
    np.testing.assert_array_equal(prefix[OD:OD + AD], disc.encode_dims(committed[0].astype(np.float64), OD, OD + AD)
                                  + off[OD:OD + AD])
    np.testing.assert_array_equal(prefix[OD + AD], disc.encode_dims(rewards[:1].astype(np.float64), OD + AD,
                                                                    OD + AD + 1)[0] + off[OD + AD])
    assert prefix[d - 1] == NB - 1 + off[d - 1]  # the context's value placeholder
    np.testing.assert_array_equal(prefix[d:], disc.encode_dims(states[0].astype(np.float64), 0, OD) + off[:OD])
    # The context: s0 with the committed (executed) action; the step after comes with observe().
    pol.observe(s1, 0.5, np.array([0.1, 0.2]))
    pol.act(s2, -1.0)
    toks = pol.context_tokens(s2)
    np.testing.assert_array_equal(toks[:d], _transition_tokens(disc, s0, committed[0], 0.5))
    np.testing.assert_array_equal(toks[d:2 * d], _transition_tokens(disc, s1, np.array([0.1, 0.2]), -1.0))
    # No committed steps: the same plan as act() from the same RNG state.
    pol.reset(seed=7)
    ahead = pol.act_ahead(s0, None, np.zeros((0, AD)))
    pol.reset(seed=7)
    np.testing.assert_array_equal(ahead, pol.act(s0, None))
    with pytest.raises(ValueError, match="action must be"):
        pol.act_ahead(s1, 0.0, np.array([[np.nan, 0.0]]))


def test_time_budget_shortens_the_plan_not_the_first_action():
    model, disc, cfg = make(horizon=3, time_budget_ms=1e-6)  # spent before the first transition ends
    pol = TTPolicy(model, disc, cfg)
    a = pol.act(np.zeros(OD), None)
    assert pol.last_plan.actions.shape == (1, AD) and pol.timings.extra["horizon_planned"] == 1
    np.testing.assert_array_equal(a, np.clip(pol.last_plan.actions[0], -1, 1).astype(np.float32))
    model, disc, cfg = make(horizon=3, time_budget_ms=60_000.0)
    pol = TTPolicy(model, disc, cfg)
    pol.act(np.zeros(OD), None)
    assert pol.last_plan.actions.shape == (3, AD) and pol.timings.extra["horizon_planned"] == 3


def test_bad_inputs_raise_clear_errors():
    model, disc, cfg = make()
    pol = TTPolicy(model, disc, cfg)
    with pytest.raises(ValueError, match="shape"):
        pol.act(np.zeros(OD + 1), None)
    with pytest.raises(ValueError, match="NaN"):
        pol.act(np.array([0.0, np.nan, 0.0, 0.0]), None)
    pol.act(np.zeros(OD), None)
    with pytest.raises(ValueError, match="reward for the previous action"):
        pol.act(np.zeros(OD), None)
    with pytest.raises(ValueError, match="finite"):
        pol.act(np.zeros(OD), float("inf"))
    with pytest.raises(ValueError, match="bounds"):
        TTPolicy(model, disc, cfg, np.zeros(3), np.ones(3))


def test_seed_reproducibility():
    model, disc, cfg = make()
    pol = TTPolicy(model, disc, cfg)
    rng = np.random.default_rng(3)
    seq = [obs(rng) for _ in range(3)]

    def run(seed):
        pol.reset(seed=seed)
        return [pol.act(o, None if i == 0 else 1.0) for i, o in enumerate(seq)]

    a1, a2 = run(5), run(5)
    for x, y in zip(a1, a2):
        np.testing.assert_array_equal(x, y)


def test_goal_mode_needs_a_goal():
    model, disc, cfg = make(goal=True)
    pol = TTPolicy(model, disc, cfg)
    with pytest.raises(ValueError, match="needs a goal"):
        pol.act(np.zeros(OD), None)
    pol.reset(goal=np.full(OD, 0.5))
    a = pol.act(np.zeros(OD), None)
    assert a.shape == (AD,)
    with pytest.raises(ValueError, match="shape"):
        pol.reset(goal=np.zeros(OD + 2))


def test_from_checkpoint_uses_preset_gamma_and_overrides(tmp_path):
    torch.manual_seed(0)
    mc = TTConfig(obs_dim=OD, act_dim=AD, n_bins=NB, n_layer=1, n_head=2, n_embd=16, max_transitions=20)
    model = TrajectoryTransformer(mc)
    disc = Discretizer.fit(np.random.default_rng(0).normal(size=(300, mc.transition_dim)), NB)
    path = tmp_path / "tt"
    save_tt(path, model, disc, {"gamma": 0.95, "dataset_id": "hopper-medium-v2",
                                "action_low": [-0.3, -0.3], "action_high": [0.3, 0.3]})
    pol = TTPolicy.from_checkpoint(path, beam_width=2, horizon=2)
    assert pol.config.plan_freq == 5  # hopper-medium preset
    assert pol.config.discount == 0.95 and pol.config.beam_width == 2 and pol.config.horizon == 2
    a = pol.act(np.zeros(OD), None)
    assert np.all(np.abs(a) <= 0.3 + 1e-6)
    pol2 = TTPolicy.from_checkpoint(path, preset="walker2d-medium-expert", beam_width=2)
    assert pol2.config.horizon == 5 and pol2.config.plan_freq == 1
    with pytest.raises(ValueError, match=r"planner options: unknown \['beam'\]"):
        TTPolicy.from_checkpoint(path, beam=3)
    long = TTPolicy.from_checkpoint(path, horizon=21, beam_width=2)  # longer than the block of 20: window moves
    assert long.planner.reencode and long.act(np.zeros(OD), None).shape == (AD,)
    assert TTPolicy.from_checkpoint(path, beam_width=2).config.horizon == 15  # the preset's, fits 20
    # a checkpoint can ship its own planner settings: they beat the preset, the caller's beat them
    meta_path = tmp_path / "tt.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "planner": {"horizon": 3, "beam_width": 4}}))
    shipped = TTPolicy.from_checkpoint(path)
    assert (shipped.config.horizon, shipped.config.beam_width, shipped.config.plan_freq) == (3, 4, 5)
    assert TTPolicy.from_checkpoint(path, horizon=2).config.horizon == 2
    for bad, why in (({"beam": 4}, r"'planner': unknown \['beam'\]"), ({"horizon": "3"}, "horizon must be int"),
                     ([3], "'planner' must be an object"), ({"cdf_act": 1.5}, r"cdf_act must be in \[0, 1\)")):
        meta_path.write_text(json.dumps({**meta, "planner": bad}))
        with pytest.raises(ValueError, match=why):
            TTPolicy.from_checkpoint(path)


def test_presets_follow_the_official_config():
    assert len(preset_names()) == 9
    base = PRESETS["walker2d-medium"]
    assert (base.horizon, base.beam_width, base.n_expand, base.cdf_act, base.k_obs, base.max_context_transitions,
            base.plan_freq, base.discount) == (15, 128, 2, 0.6, 1, 5, 1, 0.99)
    for q in ("medium", "medium-replay", "medium-expert"):
        hc = PRESETS[f"halfcheetah-{q}"]
        assert (hc.horizon, hc.beam_width) == (5, 32)
    assert PRESETS["hopper-medium"].plan_freq == 5 and PRESETS["hopper-medium-replay"].plan_freq == 1
    assert PRESETS["walker2d-medium-expert"].horizon == 5 and PRESETS["walker2d-medium-replay"].horizon == 15
    assert normalize_name("halfcheetah-medium-expert-v2") == "halfcheetah-medium-expert"
    assert normalize_name("mujoco/walker2d/medium-replay-v0") == "walker2d-medium-replay"
    assert normalize_name("Hopper-v5") is None
    assert get_preset("hopper_medium", beam_width=8).beam_width == 8
    with pytest.raises(ValueError, match="no planning preset"):
        get_preset("ant-medium")


def test_bench_plan_cli_prints_json(capsys):
    from ros_seqplanner.cli import main

    rc = main(["bench", "plan", "--preset", "hopper-medium", "--plans", "2", "--warmup", "0", "--horizon", "2",
               "--beam-width", "2", "--n-embd", "32", "--n-layer", "1", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("p50_ms", "p99_ms", "plans", "decode_steps", "gflop_per_plan", "device", "preset"):
        assert key in out
    assert out["plans"] == 2 and out["preset"] == "hopper-medium" and out["device"] == "cpu"
    assert out["decode_steps"] == 2 * (11 + 3 + 2) - 11 - 1
    assert out["p50_ms"] > 0 and out["gflop_per_plan"] > 0


def test_imitation_mode_policy_scores_by_log_probability():
    model, disc, cfg = make(mode="imitation")
    pol = TTPolicy(model, disc, cfg)
    a = pol.act(np.zeros(OD), None)
    assert a.shape == (AD,) and np.isfinite(a).all()
    assert pol.last_plan.score < 0  # a sum of log-probabilities
