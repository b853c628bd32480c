"""`seqplanner train dt` and `seqplanner bench dt` end to end on tiny inputs."""

from __future__ import annotations

import json

import numpy as np
from dtbc_synthetic import synthetic_dataset

from ros_seqplanner.cli import main
from ros_seqplanner.policies.dt import DTPolicy


def test_cli_train_dt_from_hdf5(tmp_path, capsys):
    from ros_seqplanner.data.d4rl_hdf5 import save_d4rl_hdf5

    data = save_d4rl_hdf5(synthetic_dataset(n_episodes=3), tmp_path / "d.hdf5")
    out = tmp_path / "m" / "dt"
    rc = main(["train", "dt", "--dataset", str(data), "--out", str(out), "--steps", "3", "-K", "4",
               "--n-embd", "16", "--n-layer", "1", "--rtg-scale", "50", "--target-return", "40",
               "--target-return", "20", "--device", "cpu", "--no-progress"])
    assert rc == 0
    meta = json.loads((tmp_path / "m" / "dt.json").read_text())
    assert meta["target_returns"] == [40.0, 20.0] and meta["rtg_scale"] == 50.0 and meta["context"] == 4
    policy = DTPolicy.from_checkpoint(out)
    assert policy.return_to_go == 40.0
    assert policy.act(np.zeros(4), None).shape == (2,)
    rc = main(["train", "dt", "--dataset", str(tmp_path / "nope.hdf5"), "--out", str(tmp_path / "x")])
    assert rc == 1 and "does not exist" in capsys.readouterr().err


def test_cli_bench_dt_prints_json(capsys):
    rc = main(["bench", "dt", "--threads", "1", "--json", "--steps", "30", "--warmup", "5"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert 0 < res["p50_ms"] <= res["p99_ms"]
    assert res["context"] == 20 and res["obs_dim"] == 17 and res["act_dim"] == 6


def test_cli_bench_dt_compare_hf_without_transformers_fails_clearly(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` raise ImportError
    assert main(["bench", "dt", "--compare-hf", "--steps", "5"]) == 2
    assert "requirements-bench.txt" in capsys.readouterr().err


def test_cli_bench_dt_compare_hf_reports_both(capsys):
    import pytest

    pytest.importorskip("transformers")
    rc = main(["bench", "dt", "--threads", "1", "--json", "--compare-hf", "--steps", "10", "--warmup", "2",
               "--block", "5"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["hf_p50_ms"] > 0 and res["speedup"] == res["hf_p50_ms"] / res["p50_ms"]
