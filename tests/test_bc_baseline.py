"""Behaviour-cloning baseline: model bounds, training, policy interface, checkpoints, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from dtbc_synthetic import HIGH, LOW, synthetic_dataset

from ros_seqplanner.cli import main
from ros_seqplanner.nets.bc import BCConfig, BCModel, save_bc
from ros_seqplanner.nets.checkpoint import CheckpointError
from ros_seqplanner.policies.base import Policy
from ros_seqplanner.policies.bc import BCPolicy
from ros_seqplanner.training.bc import BCTrainConfig, fit_bc, train_bc

TINY = dict(hidden=64, n_layer=2, batch_size=64, lr=3e-3, warmup_steps=10, device="cpu", progress=False,
            log_every=10)


def test_model_outputs_stay_within_bounds_and_are_deterministic():
    torch.manual_seed(0)
    model = BCModel(BCConfig(obs_dim=4, act_dim=2, hidden=16, action_low=tuple(LOW), action_high=tuple(HIGH)))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 3.0)
        out = model(torch.randn(256, 4) * 100)
        assert torch.all(out >= torch.tensor(LOW)) and torch.all(out <= torch.tensor(HIGH))
        assert out[:, 0].min() < -1.0  # scaled to the bounds, not squashed into [-1, 1]
        model.eval()
        x = torch.randn(3, 4)
        assert torch.equal(model(x), model(x))


def test_training_reduces_the_loss_and_the_policy_imitates_the_expert(tmp_path):
    ds = synthetic_dataset()
    path = train_bc(ds, BCTrainConfig(steps=300, seed=0, **TINY), tmp_path / "bc")
    meta = json.loads(path.read_text())
    assert meta["kind"] == "bc" and meta["action_low"] == LOW.tolist()
    history = meta["training"]["loss_history"]
    assert np.mean([v for _, v in history[-3:]]) < 0.1 * history[0][1], history
    policy = BCPolicy.from_checkpoint(path)
    assert isinstance(policy, Policy)
    policy.reset(target_return=123.0, seed=1)  # accepted and ignored
    obs, acts = ds.concat("observations"), ds.concat("actions")
    pred = np.stack([policy.act(o, None) for o in obs[:100]])
    assert pred.dtype == np.float32
    baseline = np.abs(acts - acts.mean(0)).mean()
    assert np.abs(pred - acts[:100]).mean() < 0.25 * baseline


def test_training_is_seeded():
    ds = synthetic_dataset(n_episodes=3)
    m1, _ = fit_bc(ds, BCTrainConfig(steps=5, seed=4, **TINY))
    m2, _ = fit_bc(ds, BCTrainConfig(steps=5, seed=4, **TINY))
    for v1, v2 in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(v1, v2)


def _save_random(path) -> BCPolicy:
    torch.manual_seed(1)
    model = BCModel(BCConfig(obs_dim=4, act_dim=2, hidden=16, action_low=tuple(LOW), action_high=tuple(HIGH)))
    mean, std = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 0.5, 2.0, 1.0])
    save_bc(path, model, {"obs_mean": mean, "obs_std": std})
    return BCPolicy(model, mean, std)


def test_checkpoint_round_trip_and_normalisation(tmp_path):
    policy = _save_random(tmp_path / "bc")
    loaded = BCPolicy.from_checkpoint(tmp_path / "bc.safetensors")
    rng = np.random.default_rng(0)
    for _ in range(5):
        o = rng.normal(size=4)
        np.testing.assert_array_equal(policy.act(o, None), loaded.act(o, 1.0))
    o = np.array([1.5, 2.5, 3.5, 4.5])
    with torch.no_grad():
        ref = policy.model(torch.tensor([[0.5, 1.0, 0.25, 0.5]]))[0].numpy()
    np.testing.assert_allclose(loaded.act(o, None), ref, rtol=0, atol=1e-6)


def test_bad_inputs_and_files(tmp_path):
    policy = _save_random(tmp_path / "bc")
    with pytest.raises(ValueError, match="shape"):
        policy.act(np.zeros(3), None)
    with pytest.raises(ValueError, match="NaN"):
        policy.act(np.array([0.0, np.inf, 0.0, 0.0]), None)
    with pytest.raises(CheckpointError, match="does not exist"):
        BCPolicy.from_checkpoint(tmp_path / "nope")
    meta = json.loads((tmp_path / "bc.json").read_text())
    (tmp_path / "bc.json").write_text(json.dumps({**meta, "kind": "dt"}))
    with pytest.raises(CheckpointError, match="expected 'bc'"):
        BCPolicy.from_checkpoint(tmp_path / "bc")
    (tmp_path / "bc.json").write_text(json.dumps({**meta, "obs_mean": [0.0]}))
    with pytest.raises(CheckpointError, match="obs_mean"):
        BCPolicy.from_checkpoint(tmp_path / "bc")
    (tmp_path / "bc.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        BCPolicy.from_checkpoint(tmp_path / "bc")


def test_cli_train_bc_from_hdf5(tmp_path, capsys):
    from ros_seqplanner.data.d4rl_hdf5 import save_d4rl_hdf5

    data = save_d4rl_hdf5(synthetic_dataset(n_episodes=3), tmp_path / "d.hdf5")
    rc = main(["train", "bc", "--dataset", str(data), "--out", str(tmp_path / "m" / "bc"), "--steps", "3",
               "--hidden", "8", "--device", "cpu", "--no-progress"])
    assert rc == 0
    assert BCPolicy.from_checkpoint(tmp_path / "m" / "bc").act(np.zeros(4), None).shape == (2,)
    rc = main(["train", "bc", "--dataset", str(tmp_path / "missing.hdf5"), "--out", str(tmp_path / "x")])
    assert rc == 1 and "does not exist" in capsys.readouterr().err
