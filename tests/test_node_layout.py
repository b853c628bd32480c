"""Observation layout (ROS-free): the built-in table reproduces the real gymnasium v5 observations."""

from __future__ import annotations

import numpy as np
import pytest

from ros_seqplanner.nodes.obs_layout import (
    LayoutError,
    ObservationLayout,
    actuated_joints,
    builtin_layout,
    joint_table,
    parse_name_map,
)


@pytest.mark.parametrize("env_id", ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5"])
def test_builtin_layout_matches_env(env_id):
    mujoco = pytest.importorskip("mujoco")
    from ros_seqplanner.sim.envs import make_env

    env = make_env(env_id, seed=0)
    obs, _ = env.reset(seed=0)
    for _ in range(5):  # move away from the reset pose; big velocities exercise Hopper's clip
        obs, *_ = env.step(env.action_space.sample())
    env.unwrapped.data.qvel[3] = 25.0  # beyond the +-10 clip for Hopper / Walker2d
    obs = env.unwrapped._get_obs()
    model, data = env.unwrapped.model, env.unwrapped.data
    table = joint_table(model)
    names = [n for n, _, _ in table]
    layout = builtin_layout(env_id)
    got, why = layout.from_joint_state(names, [data.qpos[a] for _, a, _ in table], [data.qvel[d] for _, _, d in table])
    assert why == "", why
    np.testing.assert_allclose(got, obs, rtol=1e-6, atol=1e-6)
    act_names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, model.actuator_trnid[i, 0])
                 for i in range(model.nu)]
    assert list(actuated_joints(env_id)) == act_names


def test_reordered_renamed_and_missing():
    layout = ObservationLayout.parse(["pos:b", "vel:a", "vel:b"])
    obs, why = layout.from_joint_state(["x_b", "a"], [2.0, 1.0], [20.0, 10.0], {"x_b": "b"})
    assert why == "" and obs.tolist() == [2.0, 10.0, 20.0]
    obs, why = layout.from_joint_state(["a"], [1.0], [10.0])
    assert obs is None and "lacks joints ['b']" in why
    obs, why = layout.from_joint_state(["a", "b"], [1.0, 2.0], [])
    assert obs is None and "velocities" in why
    obs, why = layout.from_joint_state(["a", "b"], [1.0, np.nan], [1.0, 2.0])
    assert obs is None and "NaN" in why


def test_bad_specs_raise():
    with pytest.raises(LayoutError, match="pos:<joint>"):
        ObservationLayout.parse(["position:a"])
    with pytest.raises(LayoutError, match="no built-in"):
        builtin_layout("ant")
    with pytest.raises(LayoutError, match="incoming_name:model_name"):
        parse_name_map(["nocolon"])
    assert parse_name_map(["r/a:a"]) == {"r/a": "a"}
