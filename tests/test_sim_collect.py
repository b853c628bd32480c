"""Vectorised dataset collection: reproducible for a seed, terminated vs truncated kept apart, float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ros_seqplanner.data.loading import load_dataset
from ros_seqplanner.nets.checkpoint import save_checkpoint
from ros_seqplanner.sim.collect import collect_dataset, save_dataset


@pytest.fixture(scope="module")
def actor(tmp_path_factory):
    """A random tanh-Gaussian actor checkpoint for Hopper (kind 'behaviour')."""
    g = torch.Generator().manual_seed(0)
    shapes = {"hidden.0": (8, 11), "hidden.1": (8, 8), "mu": (3, 8), "log_std": (3, 8)}
    tensors = {}
    for k, (o, i) in shapes.items():
        tensors[f"{k}.weight"] = torch.randn(o, i, generator=g) * 0.5
        tensors[f"{k}.bias"] = torch.zeros(o)
    path = tmp_path_factory.mktemp("actor") / "hopper-medium"
    save_checkpoint(path, tensors, {"kind": "behaviour", "env_id": "Hopper-v5", "steps": 0,
                                    "action_low": [-1.0] * 3, "action_high": [1.0] * 3})
    return path


def arrays(ds):
    flat = ds.to_flat()
    return {k: v for k, v in flat.items()}


def test_random_collection_is_reproducible_and_typed():
    a = collect_dataset("hopper", "random", num_steps=150, num_envs=3, seed=5, progress=False)
    b = collect_dataset("hopper", "random", num_steps=150, num_envs=3, seed=5, progress=False)
    c = collect_dataset("hopper", "random", num_steps=150, num_envs=3, seed=6, progress=False)
    fa, fb = arrays(a), arrays(b)
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k])
    assert not np.array_equal(fa["observations"][:50], arrays(c)["observations"][:50])
    assert a.num_transitions >= 150 and all(ep.terminated for ep in a)  # random hoppers fall
    assert fa["observations"].dtype == fa["actions"].dtype == fa["rewards"].dtype == np.float32
    assert a.env_id == "Hopper-v5" and a.dataset_id == "hopper-random-v5" and a.metadata["seed"] == 5


def test_time_limit_gives_truncated_not_terminated():
    ds = collect_dataset("halfcheetah", "random", num_steps=40, num_envs=2, seed=0, progress=False,
                         max_episode_steps=20)
    assert [len(e) for e in ds] == [20, 20] and all(e.truncated and not e.terminated for e in ds)
    flat = ds.to_flat()
    assert flat["timeouts"].sum() == 2 and flat["terminals"].sum() == 0


def test_policy_collection_reproducible_and_roundtrips(actor, tmp_path):
    kw = dict(num_steps=120, num_envs=4, seed=1, policy_path=actor, progress=False, max_episode_steps=30)
    a = collect_dataset("hopper", "medium", **kw)
    b = collect_dataset("hopper", "medium", **kw)
    for k, v in arrays(a).items():
        np.testing.assert_array_equal(v, arrays(b)[k])
    det = collect_dataset("hopper", "medium", noise="none", **kw)
    assert not np.array_equal(arrays(det)["actions"], arrays(a)["actions"])  # policy noise is on by default
    path = save_dataset(a, "hdf5", out=tmp_path / "m.hdf5")
    back = load_dataset(path)
    for k, v in arrays(a).items():
        np.testing.assert_array_equal(v, arrays(back)[k])
    with pytest.raises(FileExistsError):
        save_dataset(a, "hdf5", out=path)
    mixed = collect_dataset("hopper", "medium-expert", expert_path=actor, **kw)
    assert {"medium_policy", "expert_policy"} <= set(mixed.metadata)
    with pytest.raises(ValueError, match="trained on Hopper-v5, not Walker2d-v5"):
        collect_dataset("walker2d", "medium", **kw)
    with pytest.raises(ValueError, match="unknown dataset kind"):
        collect_dataset("hopper", "best", num_steps=10)


def test_cli_collect_writes_both_formats(tmp_path, capsys):
    import json

    from ros_seqplanner.cli import main

    out = tmp_path / "r.hdf5"
    assert main(["collect", "--env", "hopper", "--kind", "random", "--steps", "30", "--num-envs", "2",
                 "--format", "both", "--out", str(out), "--data-dir", str(tmp_path / "minari"), "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["num_steps"] >= 30 and len(report["datasets"]) == 2
    a, b = load_dataset(out), load_dataset(report["datasets"][1])
    for k, v in arrays(a).items():
        np.testing.assert_array_equal(v, arrays(b)[k])
    with pytest.raises(SystemExit, match=r"--out FILE\.hdf5 is required"):
        main(["collect", "--kind", "random", "--format", "hdf5"])
