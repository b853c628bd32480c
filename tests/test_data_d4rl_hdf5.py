"""D4RL-style HDF5 import/export and the load_dataset dispatcher."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from ros_seqplanner.data.d4rl_hdf5 import load_d4rl_hdf5, save_d4rl_hdf5
from ros_seqplanner.data.episodes import DatasetError, Episode, EpisodeDataset
from ros_seqplanner.data.loading import load_dataset


def make_dataset(seed: int = 0) -> EpisodeDataset:
    rng = np.random.default_rng(seed)
    spec = [(5, True), (7, False), (1, True), (4, False)]  # (length, terminated); the rest truncated
    eps = [Episode(rng.normal(size=(t, 3)), rng.uniform(-1, 1, size=(t, 2)), rng.normal(size=t),
                   terminated=term, truncated=not term, final_observation=rng.normal(size=3)) for t, term in spec]
    return EpisodeDataset(eps, env_id="Hopper-v5", dataset_id="toy-v0", action_low=-np.ones(2),
                          action_high=np.ones(2), metadata={"policy": "toy", "seed": seed})


def assert_same(a: EpisodeDataset, b: EpisodeDataset) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.terminated == y.terminated and x.truncated == y.truncated
        for k in ("observations", "actions", "rewards", "final_observation"):
            assert getattr(y, k).dtype == np.float32
            np.testing.assert_array_equal(getattr(x, k), getattr(y, k))


def test_roundtrip_preserves_arrays_and_boundaries(tmp_path):
    ds = make_dataset()
    path = save_d4rl_hdf5(ds, tmp_path / "toy.hdf5")
    back = load_d4rl_hdf5(path)
    assert_same(ds, back)
    assert back.env_id == "Hopper-v5" and back.dataset_id == "toy-v0"
    assert back.metadata["policy"] == "toy" and back.metadata["seed"] == 0
    np.testing.assert_array_equal(back.action_low, -np.ones(2, np.float32))
    with h5py.File(path) as f:  # the D4RL layout itself
        assert f["terminals"].dtype == bool and f["timeouts"].dtype == bool
        np.testing.assert_array_equal(np.flatnonzero(f["terminals"][()]), [4, 12])
        np.testing.assert_array_equal(np.flatnonzero(f["timeouts"][()]), [11, 16])
        assert f["observations"].shape == (17, 3) and f["next_observations"].shape == (17, 3)
    assert_same(ds, load_dataset(path))  # dispatcher: .hdf5 -> D4RL


def test_trailing_unflagged_steps_become_truncated_episode(tmp_path):
    n = 6
    with h5py.File(tmp_path / "cut.h5", "w") as f:
        f["observations"] = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
        f["actions"] = np.zeros((n, 1), np.float32)
        f["rewards"] = np.ones(n, np.float32)
        f["terminals"] = np.array([0, 0, 1, 0, 0, 0], bool)
        f["timeouts"] = np.zeros(n, bool)
    ds = load_dataset(tmp_path / "cut.h5")
    assert [len(e) for e in ds] == [3, 3]
    assert (ds.episodes[0].terminated, ds.episodes[1].truncated) == (True, True)


def test_missing_keys_are_named(tmp_path):
    with h5py.File(tmp_path / "bad.hdf5", "w") as f:
        f["observations"] = np.zeros((3, 2), np.float32)
        f["actions"] = np.zeros((3, 1), np.float32)
    with pytest.raises(DatasetError, match=r"missing D4RL keys \['rewards', 'terminals'\]"):
        load_d4rl_hdf5(tmp_path / "bad.hdf5")


def test_inconsistent_lengths_are_reported(tmp_path):
    with h5py.File(tmp_path / "bad.hdf5", "w") as f:
        f["observations"] = np.zeros((4, 2), np.float32)
        f["actions"] = np.zeros((4, 1), np.float32)
        f["rewards"] = np.zeros(3, np.float32)
        f["terminals"] = np.zeros(4, bool)
    with pytest.raises(DatasetError, match=r"inconsistent array lengths.*'rewards': 3"):
        load_d4rl_hdf5(tmp_path / "bad.hdf5")


def test_nan_and_unreadable_files_are_rejected(tmp_path):
    with h5py.File(tmp_path / "nan.hdf5", "w") as f:
        f["observations"] = np.full((2, 2), np.nan, np.float32)
        f["actions"] = np.zeros((2, 1), np.float32)
        f["rewards"] = np.zeros(2, np.float32)
        f["terminals"] = np.zeros(2, bool)
    with pytest.raises(DatasetError, match="NaN"):
        load_dataset(tmp_path / "nan.hdf5")
    (tmp_path / "junk.hdf5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DatasetError, match="not a readable HDF5"):
        load_dataset(tmp_path / "junk.hdf5")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "absent.hdf5")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DatasetError, match="unsupported dataset file type"):
        load_dataset(tmp_path / "data.csv")
