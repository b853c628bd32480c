"""Single-step MLP dynamics model: normalisation, training on a learnable system, checkpoints, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ros_seqplanner.cli import main
from ros_seqplanner.data.d4rl_hdf5 import save_d4rl_hdf5
from ros_seqplanner.data.episodes import Episode, EpisodeDataset
from ros_seqplanner.nets.checkpoint import CheckpointError, save_checkpoint
from ros_seqplanner.nets.dynamics import DynamicsConfig, MLPDynamics, load_dynamics, save_dynamics
from ros_seqplanner.training.dynamics import DynamicsTrainConfig, fit_dynamics, transition_arrays

OD, AD = 3, 2
B_MAT = np.array([[0.5, 0.0], [0.0, -0.3], [0.2, 0.2]], dtype=np.float32)


def linear_dataset(n_episodes: int = 10, length: int = 30, seed: int = 0) -> EpisodeDataset:
    """s' = 0.9 s + B a + 1, r = sum(a); episodes keep their final observation."""
    rng = np.random.default_rng(seed)
    eps = []
    for _ in range(n_episodes):
        s = [rng.normal(size=OD).astype(np.float32)]
        acts = rng.uniform(-1, 1, size=(length, AD)).astype(np.float32)
        for a in acts:
            s.append((0.9 * s[-1] + B_MAT @ a + 1.0).astype(np.float32))
        eps.append(Episode(observations=np.array(s[:-1]), actions=acts, rewards=acts.sum(1).astype(np.float32),
                           truncated=True, final_observation=s[-1]))
    return EpisodeDataset(eps, env_id="Synthetic-v0", dataset_id="linear")


def test_transition_pairs_follow_episodes():
    ds = linear_dataset(3, 5)
    obs, act, nxt, rew = transition_arrays(ds)
    assert obs.shape == (15, OD) and nxt.shape == (15, OD) and rew.shape == (15,)
    np.testing.assert_allclose(nxt, 0.9 * obs + act @ B_MAT.T + 1.0, rtol=1e-5, atol=1e-5)
    ds.episodes[0].final_observation = None  # last step of that episode has no successor any more
    assert transition_arrays(ds)[0].shape == (14, OD)


def test_stats_are_applied_in_raw_units():
    m = MLPDynamics(DynamicsConfig(OD, AD, hidden=8, n_layer=1))
    torch.nn.init.zeros_(m.net[-1].weight)
    torch.nn.init.zeros_(m.net[-1].bias)
    m.set_stats(delta_mean=[1.0, 2.0, 3.0], rew_mean=[0.5], rew_std=[2.0])
    s = torch.randn(4, OD)
    nxt, r = m(s, torch.randn(4, AD))
    torch.testing.assert_close(nxt, s + torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(r, torch.full((4,), 0.5))
    with pytest.raises(ValueError, match="positive"):
        m.set_stats(obs_std=[1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="expected obs"):
        m(torch.randn(2, OD + 1), torch.randn(2, AD))


def test_training_learns_a_linear_system_and_roundtrips(tmp_path):
    torch.set_num_threads(1)
    ds = linear_dataset()
    cfg = DynamicsTrainConfig(hidden=32, n_layer=2, steps=400, batch_size=64, lr=3e-3, warmup_steps=20,
                              val_fraction=0.2, device="cpu", progress=False, log_every=50)
    model, meta = fit_dynamics(ds, cfg)
    tr = meta["training"]
    assert tr["final_loss"] < 0.1 * tr["loss_history"][0][1]
    assert tr["final_val_loss"] < 0.1 * tr["val_history"][0][1]
    assert len(meta["val_episode_indices"]) == 2
    obs, act, nxt, _ = transition_arrays(ds)
    with torch.no_grad():
        pred, _ = model(torch.from_numpy(obs), torch.from_numpy(act))
    assert np.mean(np.abs(pred.numpy() - nxt)) < 0.2 * np.mean(np.abs(obs - nxt))
    path = save_dynamics(tmp_path / "dyn", model, meta)
    loaded, meta2 = load_dynamics(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(torch.from_numpy(obs), torch.from_numpy(act))[0], pred)
    assert meta2["kind"] == "mlp_dynamics"


def test_load_rejects_other_kinds(tmp_path):
    save_checkpoint(tmp_path / "bc", {"w": torch.zeros(2)}, {"kind": "bc"})
    with pytest.raises(CheckpointError, match="expected 'mlp_dynamics'"):
        load_dynamics(tmp_path / "bc")


def test_cli_trains_a_checkpoint(tmp_path, capsys):
    data = tmp_path / "lin.hdf5"
    save_d4rl_hdf5(linear_dataset(4, 10), data)
    out = tmp_path / "dyn"
    rc = main(["train", "dynamics", "--dataset", str(data), "--out", str(out), "--steps", "20", "--hidden", "16",
               "--threads", "1", "--device", "cpu", "--no-progress"])
    assert rc == 0
    model, meta = load_dynamics(out)
    assert model.cfg.hidden == 16 and meta["training"]["steps"] == 20
    assert main(["train", "dynamics", "--dataset", str(tmp_path / "nope.hdf5"), "--out", str(out)]) == 1
