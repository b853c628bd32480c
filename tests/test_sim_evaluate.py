"""In-process evaluation of every policy kind through load_policy + the Policy interface."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ros_seqplanner.cli import main
from ros_seqplanner.data.episodes import Episode, EpisodeDataset
from ros_seqplanner.nets.checkpoint import CheckpointError, save_checkpoint
from ros_seqplanner.policies.factory import load_policy
from ros_seqplanner.sim.evaluate import evaluate_checkpoint


def tiny_dataset() -> EpisodeDataset:
    rng = np.random.default_rng(0)
    eps = [Episode(rng.normal(size=(30, 11)), rng.uniform(-1, 1, size=(30, 3)), rng.normal(size=30),
                   terminated=bool(i % 2), truncated=not i % 2, final_observation=rng.normal(size=11))
           for i in range(4)]
    return EpisodeDataset(eps, env_id="Hopper-v5", dataset_id="hopper-medium-v5",
                          action_low=-np.ones(3), action_high=np.ones(3))


def make_behaviour(path):
    g = torch.Generator().manual_seed(0)
    t = {"hidden.0.weight": torch.randn(8, 11, generator=g), "hidden.0.bias": torch.zeros(8),
         "mu.weight": torch.randn(3, 8, generator=g), "mu.bias": torch.zeros(3),
         "log_std.weight": torch.zeros(3, 8), "log_std.bias": torch.zeros(3)}
    save_checkpoint(path, t, {"kind": "behaviour", "env_id": "Hopper-v5", "action_low": [-1] * 3,
                              "action_high": [1] * 3})
    return path


def make_bc(path):
    from ros_seqplanner.training.bc import BCTrainConfig, train_bc

    return train_bc(tiny_dataset(), BCTrainConfig(hidden=16, steps=3, batch_size=8, device="cpu", progress=False,
                                                  warmup_steps=1), path)


def make_dt(path):
    from ros_seqplanner.training.dt import DTTrainConfig, train_dt

    cfg = DTTrainConfig(context=4, n_layer=1, n_head=1, n_embd=16, steps=2, batch_size=4, warmup_steps=1,
                        device="cpu", progress=False, max_ep_len=1000)
    return train_dt(tiny_dataset(), cfg, path)


def make_tt(path):
    from ros_seqplanner.training.tt import TTTrainConfig, train_tt

    cfg = TTTrainConfig(n_bins=8, n_layer=1, n_head=1, n_embd=16, max_transitions=6, max_steps=2, batch_size=4,
                        device="cpu", amp=False, progress=False)
    return train_tt(tiny_dataset(), cfg, path)


MAKERS = {"behaviour": make_behaviour, "bc": make_bc, "dt": make_dt, "tt": make_tt}
OPTIONS = {"tt": {"beam_width": 2, "horizon": 2, "max_context_transitions": 2}}


@pytest.mark.parametrize("kind", ["behaviour", "bc", "dt", "tt"])
def test_evaluate_each_policy_kind(kind, tmp_path):
    ckpt = MAKERS[kind](tmp_path / kind)
    res = evaluate_checkpoint(ckpt, episodes=2, seeds=(0, 1), max_steps=5, policy_options=OPTIONS.get(kind),
                              progress=False)
    assert res.kind == kind and res.env_id == "Hopper-v5"
    s = res.summary
    assert s["num_episodes"] == 4 and 1 <= s["length_mean"] <= 5
    assert s["num_steps"] == sum(e.length for e in res.episodes)
    assert s["score_label"] == "D4RL refs, v5 env" and np.isfinite(s["score_mean"])
    assert 0 < s["act_ms_p50"] <= s["act_ms_p99"]
    assert "seed_return_std" in s
    again = evaluate_checkpoint(ckpt, episodes=2, seeds=(0, 1), max_steps=5, policy_options=OPTIONS.get(kind),
                                progress=False)
    assert [e.ret for e in again.episodes] == [e.ret for e in res.episodes]  # seeded, reproducible
    if kind == "tt":  # the effective planner: hopper-medium preset (beam 128, plan_freq 5) under the options
        assert {k: res.config["planner"][k] for k in ("beam_width", "horizon", "plan_freq", "n_expand")} == {
            "beam_width": 2, "horizon": 2, "plan_freq": 5, "n_expand": 2}
    else:
        assert "planner" not in res.config


def test_cli_evaluate_json_and_plot(tmp_path, capsys):
    ckpt = make_behaviour(tmp_path / "b")
    out, plot = tmp_path / "e.json", tmp_path / "r.png"
    threads = torch.get_num_threads()
    try:
        assert main(["evaluate", str(ckpt), "--episodes", "2", "--max-steps", "4", "--out", str(out),
                     "--plot", str(plot), "--no-progress"]) == 0
        assert torch.get_num_threads() == 1  # the default: one thread, as the C planner
    finally:
        torch.set_num_threads(threads)
    data = json.loads(out.read_text())
    assert data["kind"] == "behaviour" and len(data["episodes"]) == 2
    assert data["config"]["torch_threads"] == 1  # recorded with the latency it explains
    assert plot.stat().st_size > 1000 and "score" in capsys.readouterr().out
    assert main(["evaluate", str(ckpt), "--threads", "-1"]) == 2 and "--threads must be >= 0" in capsys.readouterr().err


def test_factory_and_video_errors(tmp_path):
    save_checkpoint(tmp_path / "dyn", {"w": torch.zeros(2)}, {"kind": "mlp_dynamics"})
    with pytest.raises(CheckpointError, match="not a policy"):
        load_policy(tmp_path / "dyn")
    ckpt = make_behaviour(tmp_path / "b")
    with pytest.raises(ValueError, match="unsupported video format"):
        evaluate_checkpoint(ckpt, episodes=1, max_steps=2, video=tmp_path / "v.txt", progress=False)
    with pytest.raises(ValueError, match="do not match"):
        evaluate_checkpoint(ckpt, env="halfcheetah", episodes=1, max_steps=2, progress=False)


def test_evaluate_with_modelled_planning_latency(tmp_path, capsys):
    from ros_seqplanner.sim.report import parse_eval_result

    ckpt = make_tt(tmp_path / "tt")
    lock = evaluate_checkpoint(ckpt, episodes=1, seeds=(0,), max_steps=6, policy_options=OPTIONS["tt"],
                               progress=False)
    late = evaluate_checkpoint(ckpt, episodes=1, seeds=(0,), max_steps=6, policy_options=OPTIONS["tt"],
                               progress=False, latency_steps=1)
    assert late.config["latency_steps"] == 1 and late.config["catch_up"] is True
    assert late.config["planner"] == lock.config["planner"]  # the wrapped TT's planner is still recorded
    assert "latency_steps" not in lock.config
    assert late.episodes[0].ret != lock.episodes[0].ret  # the first step ran the safe action, not the plan
    row = parse_eval_result(late.to_json(), "late.json")
    assert "catch_up=yes" in row.name and "latency_steps=1" in row.name and "compensate" not in row.name
    ahead = evaluate_checkpoint(ckpt, episodes=1, seeds=(0,), max_steps=6, policy_options=OPTIONS["tt"],
                                progress=False, latency_steps=1, compensate=True)
    assert ahead.config["compensate"] is True and ahead.episodes[0].length == 6
    assert "compensate=yes" in parse_eval_result(ahead.to_json(), "ahead.json").name
    assert main(["evaluate", str(ckpt), "--latency-steps", "-1"]) == 2
    assert "--latency-steps must be >= 0" in capsys.readouterr().err
