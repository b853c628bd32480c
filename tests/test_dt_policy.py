"""DTPolicy: ring buffer over long episodes, return-to-go bookkeeping, checkpoints, input checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ros_seqplanner.nets.checkpoint import CheckpointError
from ros_seqplanner.nets.dt import DecisionTransformer, DTConfig, save_dt
from ros_seqplanner.policies.base import Policy, PolicyTimings
from ros_seqplanner.policies.dt import DTPolicy

LOW, HIGH = (-1.0, 0.0), (1.0, 2.0)
MEAN = np.array([1.0, -2.0, 0.5], dtype=np.float32)
STD = np.array([2.0, 0.5, 1.0], dtype=np.float32)


def make_policy(context: int = 4, max_ep_len: int = 50, scale: float = 100.0, targets=(300.0, 150.0)) -> DTPolicy:
    torch.manual_seed(0)
    cfg = DTConfig(obs_dim=3, act_dim=2, context=context, max_ep_len=max_ep_len, n_layer=2, n_head=1,
                   n_embd=16, action_low=LOW, action_high=HIGH)
    model = DecisionTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return DTPolicy(model, MEAN, STD, rtg_scale=scale, target_returns=list(targets))


def reference_action(policy: DTPolicy, obs: list, acts: list, rtgs: list, t: int) -> np.ndarray:
    """Recompute the action at step t from scratch over the last K steps with the full forward."""
    k, max_len = policy.model.cfg.context, policy.model.cfg.max_ep_len
    lo = max(0, t - k + 1)
    s = torch.tensor((np.array(obs[lo:t + 1]) - MEAN) / STD, dtype=torch.float32)[None]
    a = torch.tensor(np.array([*acts[lo:t], np.zeros(2)]), dtype=torch.float32)[None]
    r = torch.tensor(np.array(rtgs[lo:t + 1]) / policy.rtg_scale, dtype=torch.float32)[None]
    ts = torch.arange(lo, t + 1).clamp(max=max_len - 1)[None]
    with torch.no_grad():
        return policy.model(s, a, r, ts)[0, -1].numpy()


def stepper_state_size(policy: DTPolicy) -> int:
    """Elements held in the stepper's tensors (ring buffers, work buffers, tables)."""
    return sum(v.numel() for v in vars(policy._stepper).values() if isinstance(v, torch.Tensor))


def test_implements_policy_protocol():
    policy = make_policy()
    assert isinstance(policy, Policy)
    assert policy.obs_dim == 3 and policy.act_dim == 2
    np.testing.assert_array_equal(policy.action_low, LOW)


def test_ring_buffer_over_1000_steps_matches_recompute_from_last_k_steps():
    policy = make_policy(context=4, max_ep_len=50)
    policy.reset(target_return=250.0)
    state_size = stepper_state_size(policy)
    rng = np.random.default_rng(0)
    obs_hist, act_hist, rtg_hist = [], [], []
    reward, rtg = None, 250.0
    for t in range(1000):
        obs = rng.normal(size=3).astype(np.float32) * STD + MEAN
        if reward is not None:
            rtg -= reward
        obs_hist.append(obs)
        rtg_hist.append(rtg)
        action = policy.act(obs, reward)
        act_hist.append(action)
        if t in (0, 1, 3, 4, 49, 50, 51, 500, 998, 999):  # short context, full window, clamped timesteps
            np.testing.assert_allclose(action, reference_action(policy, obs_hist, act_hist, rtg_hist, t),
                                       rtol=0, atol=2e-5)
        reward = float(rng.normal())
    assert stepper_state_size(policy) == state_size  # fixed-size state: O(K), not O(t)
    assert policy.t == 1000
    assert policy.return_to_go == pytest.approx(rtg_hist[-1])


def test_catch_up_matches_recompute_with_the_executed_actions():
    """Steps the robot took without asking the policy (``observe``) and an executed action other than the
    returned one (``correct_last_action``) enter the context exactly: the next action equals the full
    forward over the states, return-to-go and actions the robot really went through."""
    policy = make_policy(context=4, max_ep_len=50)
    policy.reset(target_return=250.0)
    rng = np.random.default_rng(1)
    obs_hist, act_hist, rtg_hist = [], [], []
    reward, rtg = None, 250.0
    for t in range(9):
        obs = rng.normal(size=3).astype(np.float32) * STD + MEAN
        if reward is not None:
            rtg -= reward
        obs_hist.append(obs)
        rtg_hist.append(rtg)
        executed = rng.uniform(LOW, HIGH).astype(np.float32)
        if t % 3 == 1:  # skipped by a slow planner: the robot executed `executed`
            policy.observe(obs, reward, executed)
        else:
            action = policy.act(obs, reward)
            np.testing.assert_allclose(action, reference_action(policy, obs_hist, act_hist, rtg_hist, t),
                                       rtol=0, atol=2e-5)
            if t % 3 == 2:  # a late plan: the robot kept executing something else
                policy.correct_last_action(executed)
            else:
                executed = action
        act_hist.append(executed)
        reward = float(rng.normal())
    assert policy.t == 9
    with pytest.raises(ValueError, match="action must be"):
        policy.observe(obs_hist[-1], 0.0, np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="action must be"):
        policy.correct_last_action(np.zeros(3))
    assert policy.t == 9


def test_return_to_go_is_decremented_by_rewards_and_scaled():
    policy = make_policy(scale=100.0)
    policy.reset(target_return=300.0)
    obs = [np.array([1.0, -2.0, 0.5]), np.array([0.0, 1.0, 2.0]), np.array([3.0, -1.0, 0.0])]
    rewards = [None, 12.5, -3.0]
    acts = []
    for o, r in zip(obs, rewards):
        acts.append(policy.act(o, r))
    assert policy.return_to_go == pytest.approx(300.0 - 12.5 + 3.0)
    np.testing.assert_allclose(acts[-1], reference_action(policy, obs, acts, [300.0, 287.5, 290.5], 2),
                               rtol=0, atol=2e-5)
    # the conditioning matters: another target gives another first action
    policy.reset(target_return=-500.0)
    assert not np.allclose(policy.act(obs[0], None), acts[0])


def test_missing_reward_leaves_return_to_go_unchanged_and_is_counted():
    policy = make_policy()
    policy.reset(target_return=100.0)
    policy.act(np.zeros(3), None)
    policy.act(np.ones(3), None)  # a late reward: treated as 0, counted
    policy.act(np.ones(3), 7.0)
    assert policy.return_to_go == 93.0
    assert policy.missing_rewards == 1 and policy.timings.extra["missing_rewards"] == 1.0
    policy.reset()
    assert policy.missing_rewards == 0


def test_reset_defaults_to_the_checkpoint_target_and_restarts_the_episode():
    policy = make_policy(targets=(300.0, 150.0))
    policy.reset()
    first = policy.act(np.zeros(3), None)
    policy.act(np.ones(3), 5.0)
    policy.reset(seed=3)  # seed is accepted; the policy is deterministic
    assert policy.t == 0 and policy.return_to_go == 300.0
    np.testing.assert_array_equal(policy.act(np.zeros(3), None), first)
    policy.reset(target_return=150.0)
    assert policy.return_to_go == 150.0


def test_actions_are_float32_within_bounds_and_timed():
    policy = make_policy()
    policy.reset()
    rng = np.random.default_rng(1)
    for t in range(20):
        a = policy.act(rng.normal(size=3) * 100, None if t == 0 else float(rng.normal() * 1e4))
        assert a.dtype == np.float32 and a.shape == (2,)
        assert np.all(a >= np.array(LOW)) and np.all(a <= np.array(HIGH))
    assert isinstance(policy.timings, PolicyTimings) and policy.timings.act_ms > 0


def test_bad_inputs_give_clear_errors():
    policy = make_policy()
    policy.reset()
    with pytest.raises(ValueError, match="shape"):
        policy.act(np.zeros(4), None)
    with pytest.raises(ValueError, match="NaN"):
        policy.act(np.array([0.0, np.nan, 0.0]), None)
    policy.act(np.zeros(3), None)
    with pytest.raises(ValueError, match="finite"):
        policy.act(np.zeros(3), float("inf"))
    with pytest.raises(ValueError, match="finite"):
        policy.reset(target_return=float("nan"))


def save_policy(policy: DTPolicy, path) -> None:
    save_dt(path, policy.model, {"obs_mean": MEAN, "obs_std": STD, "rtg_scale": policy.rtg_scale,
                                 "target_returns": policy.target_returns})


def test_checkpoint_round_trip_gives_identical_actions(tmp_path):
    policy = make_policy()
    save_policy(policy, tmp_path / "dt")
    meta = json.loads((tmp_path / "dt.json").read_text())
    assert meta["kind"] == "dt" and meta["context"] == 4 and meta["max_ep_len"] == 50
    assert meta["action_low"] == list(LOW) and meta["target_returns"] == [300.0, 150.0]
    loaded = DTPolicy.from_checkpoint(tmp_path / "dt.json", target_return=150.0)
    assert loaded.return_to_go == 150.0
    policy.reset(target_return=150.0)
    rng = np.random.default_rng(2)
    for t in range(12):
        o, r = rng.normal(size=3), None if t == 0 else float(rng.normal())
        np.testing.assert_array_equal(policy.act(o, r), loaded.act(o, r))


def test_bad_checkpoint_files_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        DTPolicy.from_checkpoint(tmp_path / "missing")
    policy = make_policy()
    save_policy(policy, tmp_path / "dt")
    # truncated weights
    weights = tmp_path / "dt.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated|corrupt|cannot be read"):
        DTPolicy.from_checkpoint(tmp_path / "dt")
    # wrong kind
    save_policy(policy, tmp_path / "dt2")
    meta = json.loads((tmp_path / "dt2.json").read_text())
    (tmp_path / "dt2.json").write_text(json.dumps({**meta, "kind": "bc"}))
    with pytest.raises(CheckpointError, match="expected 'dt'"):
        DTPolicy.from_checkpoint(tmp_path / "dt2")
    # metadata that does not fit the weights / lacks the normalisation
    save_policy(policy, tmp_path / "dt3")
    meta = json.loads((tmp_path / "dt3.json").read_text())
    meta["config"]["n_embd"] = 32
    (tmp_path / "dt3.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not fit"):
        DTPolicy.from_checkpoint(tmp_path / "dt3")
    meta["config"]["n_embd"] = 16
    del meta["obs_std"]
    (tmp_path / "dt3.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="obs_std"):
        DTPolicy.from_checkpoint(tmp_path / "dt3")
