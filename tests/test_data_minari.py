"""Minari native store: round-trip, lookup by id and by folder, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ros_seqplanner.data.episodes import DatasetError, Episode, EpisodeDataset
from ros_seqplanner.data.loading import load_dataset
from ros_seqplanner.data.minari_io import load_minari, save_minari


def make_dataset() -> EpisodeDataset:
    rng = np.random.default_rng(1)
    spec = [(6, False), (3, True), (5, False)]
    eps = [Episode(rng.normal(size=(t, 11)), rng.uniform(-1, 1, size=(t, 3)), rng.normal(size=t),
                   terminated=term, truncated=not term, final_observation=rng.normal(size=11)) for t, term in spec]
    return EpisodeDataset(eps, env_id="Hopper-v5", dataset_id="hopper-toy-v5", action_low=-np.ones(3),
                          action_high=np.ones(3), metadata={"policy": "toy", "seed": 7})


def test_minari_roundtrip_preserves_everything(tmp_path):
    ds = make_dataset()
    folder = save_minari(ds, "seqplanner/hopper-toy-v0", data_dir=tmp_path / "minari")
    assert (folder / "data").is_dir()
    meta = json.loads((folder / "data" / "metadata.json").read_text())
    assert meta["ref_min_score"] == pytest.approx(-20.272305) and meta["ref_max_score"] == pytest.approx(3234.3)
    for back in (load_minari("seqplanner/hopper-toy-v0", data_dir=tmp_path / "minari"), load_dataset(folder)):
        assert back.env_id == "Hopper-v5" and back.dataset_id == "hopper-toy-v5"
        assert back.metadata["policy"] == "toy" and back.metadata["seed"] == 7
        np.testing.assert_array_equal(back.action_high, np.ones(3, np.float32))
        assert len(back) == len(ds)
        for a, b in zip(ds, back):
            assert (a.terminated, a.truncated) == (b.terminated, b.truncated)
            for k in ("observations", "actions", "rewards", "final_observation"):
                np.testing.assert_array_equal(getattr(a, k), getattr(b, k))


def test_minari_errors(tmp_path):
    ds = make_dataset()
    save_minari(ds, "toy-v0", data_dir=tmp_path)
    with pytest.raises(DatasetError, match="already exists"):
        save_minari(ds, "toy-v0", data_dir=tmp_path)
    save_minari(ds, "toy-v0", data_dir=tmp_path, overwrite=True)  # explicit overwrite is fine
    with pytest.raises(DatasetError, match="invalid Minari dataset id"):
        load_dataset("no version here", data_dir=tmp_path)
    with pytest.raises(DatasetError, match="no Minari dataset 'other-v0'"):
        load_dataset("other-v0", data_dir=tmp_path)
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError, match="not a Minari dataset"):
        load_dataset(tmp_path / "plain")
