"""DT and BC checkpoints in the shared evaluator: factory loading + closed-loop MuJoCo HalfCheetah-v5."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ros_seqplanner.nets.bc import BCConfig, BCModel, save_bc
from ros_seqplanner.nets.dt import DecisionTransformer, DTConfig, save_dt
from ros_seqplanner.policies.bc import BCPolicy
from ros_seqplanner.policies.dt import DTPolicy
from ros_seqplanner.policies.factory import load_policy

pytest.importorskip("mujoco")


def _checkpoints(tmp_path):
    torch.manual_seed(0)
    dt = DecisionTransformer(DTConfig(obs_dim=17, act_dim=6, n_layer=1, n_embd=16, context=4))
    stats = {"obs_mean": np.zeros(17), "obs_std": np.ones(17), "env_id": "HalfCheetah-v5"}
    save_dt(tmp_path / "dt", dt, {**stats, "rtg_scale": 1000.0, "target_returns": [6000.0, 12000.0]})
    save_bc(tmp_path / "bc", BCModel(BCConfig(obs_dim=17, act_dim=6, hidden=16)), stats)
    return tmp_path / "dt", tmp_path / "bc"


def test_factory_dispatches_dt_and_bc(tmp_path):
    dt_path, bc_path = _checkpoints(tmp_path)
    assert isinstance(load_policy(dt_path, target_return=12000.0), DTPolicy)
    assert load_policy(dt_path, target_return=12000.0).return_to_go == 12000.0
    assert isinstance(load_policy(bc_path), BCPolicy)


def test_closed_loop_episodes_in_halfcheetah(tmp_path):
    from ros_seqplanner.sim.evaluate import evaluate_checkpoint

    dt_path, bc_path = _checkpoints(tmp_path)
    for path, opts in ((dt_path, {"target_return": 3000.0}), (bc_path, {})):
        res = evaluate_checkpoint(path, episodes=1, max_steps=25, reset_options=opts, progress=False)
        assert res.env_id.startswith("HalfCheetah") and len(res.episodes) == 1
        ep = res.episodes[0]
        assert ep.length == 25 and np.isfinite(ep.ret) and ep.act_ms_p50 > 0
