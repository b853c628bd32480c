"""Shared containers: episodes, value-to-go, normalised scores, checkpoint files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ros_seqplanner.data.episodes import DatasetError, Episode, EpisodeDataset, value_to_go
from ros_seqplanner.data.scores import normalized_score
from ros_seqplanner.nets.checkpoint import CheckpointError, load_checkpoint, load_state_into, save_checkpoint


def _episode(t: int, o: int = 3, a: int = 2, terminated: bool = False, seed: int = 0) -> Episode:
    rng = np.random.default_rng(seed)
    return Episode(rng.normal(size=(t, o)), rng.uniform(-1, 1, size=(t, a)), rng.normal(size=t),
                   terminated=terminated, truncated=not terminated, final_observation=rng.normal(size=o))


def test_value_to_go_hand_computed():
    # V_t = sum_{k>=1} gamma^(k-1) r_{t+k}
    v = value_to_go(np.array([1.0, 2.0, 3.0]), gamma=0.5)
    assert v == pytest.approx([2.0 + 0.5 * 3.0, 3.0, 0.0])


def test_flat_round_trip_keeps_boundaries_and_flags():
    ds = EpisodeDataset([_episode(5, terminated=True, seed=1), _episode(3, seed=2), _episode(4, seed=3)],
                        env_id="HalfCheetah-v5")
    back = EpisodeDataset.from_flat(ds.to_flat())
    assert [len(e) for e in back] == [5, 3, 4]
    assert [(e.terminated, e.truncated) for e in back] == [(True, False), (False, True), (False, True)]
    for a, b in zip(ds, back):
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.rewards, b.rewards)
        np.testing.assert_array_equal(a.final_observation, b.final_observation)


def test_flat_errors_are_clear():
    flat = EpisodeDataset([_episode(4)]).to_flat()
    with pytest.raises(DatasetError, match="missing keys"):
        EpisodeDataset.from_flat({k: v for k, v in flat.items() if k != "rewards"})
    bad = dict(flat, actions=flat["actions"][:-1])
    with pytest.raises(DatasetError, match="inconsistent array lengths"):
        EpisodeDataset.from_flat(bad)


def test_normalized_score_golden():
    assert normalized_score("HalfCheetah-v5", 5009) == pytest.approx(42.6, abs=0.05)
    assert normalized_score("hopper", -20.272305) == pytest.approx(0.0)
    assert normalized_score("walker2d-medium", 4592.3) == pytest.approx(100.0)
    with pytest.raises(KeyError):
        normalized_score("ant", 1.0)


def test_checkpoint_round_trip_and_clear_errors(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    js = save_checkpoint(tmp_path / "m", net.state_dict(), {"kind": "bc", "obs_dim": 3})
    tensors, meta = load_checkpoint(tmp_path / "m.json", kind="bc")
    assert meta["obs_dim"] == 3 and meta["format_version"] == 1
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    load_state_into(other, tensors)
    x = torch.randn(5, 3)
    assert torch.equal(net(x), other(x))

    with pytest.raises(CheckpointError, match="expected 'dt'"):
        load_checkpoint(tmp_path / "m", kind="dt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    wrong = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_state_into(wrong, tensors)
    weights = tmp_path / "m.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "m")
    js.write_text(json.dumps({"kind": "bc"})[:-3])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path / "m")
