"""Env factory, joint names and observation layout read from the live MuJoCo model."""

from __future__ import annotations

import numpy as np
import pytest

from ros_seqplanner.sim.envs import (
    VELOCITY_CLIP,
    canonical_env_id,
    joint_info,
    make_env,
    observation_layout,
    observation_names,
)


@pytest.mark.parametrize("name,env_id,obs,act,dt", [
    ("halfcheetah", "HalfCheetah-v5", 17, 6, 0.05),
    ("Hopper-v5", "Hopper-v5", 11, 3, 0.008),
    ("walker2d", "Walker2d-v5", 17, 6, 0.008),
])
def test_make_env_dims(name, env_id, obs, act, dt):
    env = make_env(name, seed=0)
    assert env.spec.id == env_id == canonical_env_id(name)
    assert env.observation_space.shape == (obs,) and env.action_space.shape == (act,)
    assert env.unwrapped.dt == pytest.approx(dt)
    env.close()


def test_unknown_env_is_rejected():
    with pytest.raises(ValueError, match="unknown environment 'ant'"):
        make_env("ant")


def test_seeded_resets_are_reproducible():
    a, b = make_env("hopper", seed=3), make_env("hopper", seed=3)
    np.testing.assert_array_equal(a.reset(seed=3)[0], b.reset(seed=3)[0])
    assert not np.array_equal(a.reset(seed=4)[0], b.reset(seed=3)[0])


@pytest.mark.parametrize("name", ["halfcheetah", "walker2d"])
def test_layout_names_the_true_qpos_qvel(name):
    env = make_env(name, seed=0)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    for _ in range(5):  # move the robot so every coordinate differs
        obs, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape))
    data = env.unwrapped.data
    layout = observation_layout(env)
    clip = VELOCITY_CLIP[env.spec.id] or np.inf
    for e in layout:
        if e["index"] is None:
            assert e["quantity"] == "pos" and e["joint"] == "rootx"  # excluded root x position
            continue
        src = data.qpos[e["qpos"]] if e["quantity"] == "pos" else data.qvel[e["qvel"]]
        if e["quantity"] == "vel":
            src = np.clip(src, -clip, clip)
        assert obs[e["index"]] == pytest.approx(src, abs=1e-6), e
    names = observation_names(env)
    assert len(names) == env.observation_space.shape[0] and names[0] == "rootz/pos"
    info = joint_info(env)
    assert len(info.actuated) == env.action_space.shape[0] and info.root == ["rootx", "rootz", "rooty"]


def test_halfcheetah_actuated_joint_order():
    info = joint_info(make_env("halfcheetah"))
    assert info.actuated == ["bthigh", "bshin", "bfoot", "fthigh", "fshin", "ffoot"]
    assert info.gears == [120.0, 90.0, 60.0, 120.0, 60.0, 30.0]
