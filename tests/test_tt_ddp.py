"""DDP smoke test: `torchrun --nproc_per_node 2` on CPU (gloo), a few steps, one checkpoint from rank 0."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import pytest
import torch

from ros_seqplanner.nets.tt import load_tt
from ros_seqplanner.training.tt import toy_dataset


@pytest.mark.timeout(90)
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch built without gloo")
def test_torchrun_two_cpu_processes(tmp_path):
    ds = toy_dataset(n_episodes=3, length=12, seed=6)
    with h5py.File(tmp_path / "toy.hdf5", "w") as f:
        for k, v in ds.to_flat().items():
            f.create_dataset(k, data=v)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ros_seqplanner.cli", "train", "tt", "--dataset", str(tmp_path / "toy.hdf5"),
           "--out", str(tmp_path / "ddp"), "--steps", "3", "--batch-size", "4", "--n-bins", "8",
           "--max-transitions", "3", "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
           "--device", "cpu", "--threads", "1", "--no-progress", "--checkpoint-every", "2"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=80)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("wrote ") == 1  # only rank 0 writes
    model, _, meta = load_tt(tmp_path / "ddp")
    assert meta["world_size"] == 2 and meta["step"] == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert (tmp_path / "ddp.state.json").is_file()
