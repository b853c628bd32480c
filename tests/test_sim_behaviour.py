"""SAC behaviour training (tiny run): medium checkpoint + replay HDF5, resume, actor export parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ros_seqplanner.data.d4rl_hdf5 import load_d4rl_hdf5
from ros_seqplanner.nets.checkpoint import CheckpointError
from ros_seqplanner.policies.behaviour import BehaviourPolicy
from ros_seqplanner.policies.factory import load_policy
from ros_seqplanner.sim import behaviour
from ros_seqplanner.sim.behaviour import RunConfig, SACConfig, export_actor, train_behaviour


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Hopper, 300 steps (gradient updates after 250), eval every 100 steps; medium band forced open."""
    run = tmp_path_factory.mktemp("behaviour")
    mp = pytest.MonkeyPatch()
    mp.setitem(behaviour.MEDIUM_BANDS, "Hopper-v5", (-1e9, 1e9))  # first eval counts as "medium"
    sac = SACConfig(buffer_size=2_000, learning_starts=250, batch_size=32, net_arch=(16, 16))
    cfg = RunConfig(env_id="hopper", seed=1, total_steps=200, eval_freq=100, eval_episodes=2, checkpoint_freq=100)
    first = train_behaviour(run, cfg, sac)
    cfg2 = RunConfig(env_id="hopper", seed=1, total_steps=300, eval_freq=100, eval_episodes=2, checkpoint_freq=100)
    second = train_behaviour(run, cfg2, sac)  # resumes from the 200-step checkpoint
    mp.undo()
    return run, first, second


def test_run_writes_medium_checkpoint_and_replay(tiny_run):
    run, first, _ = tiny_run
    assert first["medium_step"] == 100 and first["final_step"] == 200
    evals = [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [100, 200, 300]
    pol = BehaviourPolicy.from_checkpoint(run / "actor_medium")
    assert pol.meta["steps"] == 100 and pol.meta["tag"] == "medium" and pol.env_id == "Hopper-v5"
    replay = load_d4rl_hdf5(run / "medium_replay.hdf5")
    assert replay.num_transitions == 100  # the buffer up to the medium checkpoint
    # random hopper falls: every episode but the snapshot-cut last one is terminated
    assert all(ep.terminated for ep in replay.episodes[:-1]) and replay.episodes[-1].truncated
    for ep in replay.episodes:  # boundaries are consistent: next obs of step t is obs of t+1
        np.testing.assert_array_equal(ep.next_observations()[:-1], ep.observations[1:])


def test_resume_continues_step_count(tiny_run):
    run, _, second = tiny_run
    assert second["final_step"] == 300 and second["medium_step"] == 100
    assert BehaviourPolicy.from_checkpoint(run / "actor_last").meta["steps"] == 300
    best = BehaviourPolicy.from_checkpoint(run / "actor_best").meta
    evals = [json.loads(x)["mean_return"] for x in (run / "evals.jsonl").read_text().splitlines()]
    assert best["eval_mean_return"] == max(evals)


def test_exported_actor_matches_sb3(tiny_run, tmp_path):
    from stable_baselines3 import SAC

    run, *_ = tiny_run
    model = SAC.load(run / "resume" / "model.zip", device="cpu")
    export_actor(model, tmp_path / "actor", "Hopper-v5")
    pol = load_policy(tmp_path / "actor")
    obs = np.random.default_rng(0).normal(size=(7, 11)).astype(np.float32)
    expected = model.predict(obs, deterministic=True)[0]
    np.testing.assert_allclose(pol.act_batch(obs), expected, atol=1e-5)
    np.testing.assert_allclose(pol.act(obs[0], None), expected[0], atol=1e-5)
    with torch.no_grad():  # the policy's own tanh-Gaussian: same mean as SB3's distribution
        mean, _, _ = model.actor.get_action_dist_params(torch.as_tensor(obs))
    noisy = BehaviourPolicy.from_checkpoint(tmp_path / "actor", noise="policy", seed=3)
    a1 = noisy.act_batch(obs)
    noisy.reset(seed=3)
    np.testing.assert_array_equal(noisy.act_batch(obs), a1)  # seeded
    assert not np.allclose(a1, expected) and np.all(np.abs(a1) <= 1)
    assert np.allclose(np.tanh(mean.numpy()), expected, atol=1e-5)


def test_behaviour_policy_errors(tiny_run):
    run, *_ = tiny_run
    pol = BehaviourPolicy.from_checkpoint(run / "actor_last")
    with pytest.raises(ValueError, match="shape"):
        pol.act(np.zeros(5), None)
    with pytest.raises(ValueError, match="noise must be one of"):
        BehaviourPolicy.from_checkpoint(run / "actor_last", noise="loud")
    with pytest.raises(ValueError, match="unknown behaviour-policy options"):
        load_policy(run / "actor_last", preset="fast")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(run / "nothing")


def test_export_models_copies_medium(tiny_run, tmp_path):
    from ros_seqplanner.sim.behaviour import export_models

    run, *_ = tiny_run
    out = export_models(run, tmp_path / "models", expert_min_gain=1e9)  # best is never "expert" here
    assert set(out) == {"medium"}
    pol = load_policy(tmp_path / "models" / "hopper-medium")
    assert pol.meta["tag"] == "medium"
    out = export_models(run, tmp_path / "models", expert_min_gain=0.0)
    assert load_policy(out["expert"]).meta["tag"] == "best"


def test_stop_at_medium_keeps_the_full_replay(tmp_path, monkeypatch):
    monkeypatch.setitem(behaviour.MEDIUM_BANDS, "Hopper-v5", (-1e9, 1e9))
    sac = SACConfig(buffer_size=500, learning_starts=400, batch_size=32, net_arch=(8,))
    cfg = RunConfig(env_id="hopper", seed=2, total_steps=400, eval_freq=50, eval_episodes=1, checkpoint_freq=400,
                    stop_at_medium=True)
    state = train_behaviour(tmp_path / "run", cfg, sac)
    assert state["medium_step"] == 50 and state["final_step"] == 51  # stopped right after the dump
    assert load_d4rl_hdf5(tmp_path / "run" / "medium_replay.hdf5").num_transitions == 50
