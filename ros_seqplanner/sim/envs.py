"""Gymnasium v5 MuJoCo environments (HalfCheetah, Hopper, Walker2d) behind one factory.

Besides :func:`make_env`, this module reads the joint structure straight from the live MuJoCo model
(:func:`joint_info`, :func:`observation_layout`) so the ROS bridge can name every observation entry
(``<joint>/pos`` or ``<joint>/vel``) and every action entry (the actuated joint, in action order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ENV_IDS: dict[str, str] = {
    "halfcheetah": "HalfCheetah-v5",
    "hopper": "Hopper-v5",
    "walker2d": "Walker2d-v5",
}


# gymnasium v5 Hopper / Walker2d clip the observed qvel to [-10, 10]; HalfCheetah does not.
VELOCITY_CLIP: dict[str, float | None] = {"HalfCheetah-v5": None, "Hopper-v5": 10.0, "Walker2d-v5": 10.0}


def canonical_env_id(name_or_id: str) -> str:
    """'halfcheetah', 'HalfCheetah-v5', 'halfcheetah-medium-v2' -> 'HalfCheetah-v5'."""
    key = str(name_or_id).strip().split("/")[-1].lower().split("-")[0]
    if key not in ENV_IDS:
        raise ValueError(f"unknown environment {name_or_id!r}; supported: {sorted(ENV_IDS)} "
                         f"or their ids {sorted(ENV_IDS.values())}")
    return ENV_IDS[key]


def env_name(name_or_id: str) -> str:
    """'HalfCheetah-v5' -> 'halfcheetah'."""
    return canonical_env_id(name_or_id).split("-")[0].lower()


def make_env(name_or_id: str, seed: int | None = None, render_mode: str | None = None, **kwargs: Any) -> Any:
    """Create a gymnasium v5 MuJoCo env; if ``seed`` is given, seed the reset RNG and the action space.

    ``kwargs`` go to ``gymnasium.make`` (e.g. ``max_episode_steps``, ``width``/``height`` for rendering).
    """
    import gymnasium as gym

    env = gym.make(canonical_env_id(name_or_id), render_mode=render_mode, **kwargs)
    if seed is not None:
        env.reset(seed=int(seed))
        env.action_space.seed(int(seed))
    return env


@dataclass
class JointInfo:
    """Joints of a MuJoCo model. ``actuated`` is in action order; positions/velocities index qpos/qvel."""

    names: list[str]  # all joints, model order (one dof each for these planar robots)
    actuated: list[str]  # action index i drives actuated[i]
    gears: list[float]  # actuator gear (torque = gear * action)
    root: list[str]  # unactuated root joints (rootx, rootz, rooty)


def joint_info(env: Any) -> JointInfo:
    """Read joint and actuator names from the env's MuJoCo model."""
    import mujoco

    m = env.unwrapped.model
    names = [mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j) for j in range(m.njnt)]
    planar = (int(mujoco.mjtJoint.mjJNT_SLIDE), int(mujoco.mjtJoint.mjJNT_HINGE))
    if any(int(m.jnt_type[j]) not in planar for j in range(m.njnt)):
        raise ValueError("only planar robots with 1-dof slide/hinge joints are supported")
    actuated = [names[int(m.actuator_trnid[a, 0])] for a in range(m.nu)]
    return JointInfo(names=names, actuated=actuated, gears=[float(g) for g in m.actuator_gear[:, 0]],
                     root=[n for n in names if n not in actuated])


def observation_layout(env: Any) -> list[dict[str, Any]]:
    """Which observation index is which joint position / velocity.

    The v5 locomotion envs observe ``concat(qpos[k:], qvel)`` where ``k`` is 1 when
    ``exclude_current_positions_from_observation`` (the default: the x position of the root is
    excluded). Each entry: ``{"index", "joint", "quantity" ("pos"|"vel"), "qpos"|"qvel" address}``;
    excluded coordinates appear with ``index = None``.
    """
    import mujoco

    u = env.unwrapped
    m = u.model
    exclude = 1 if getattr(u, "_exclude_current_positions_from_observation", True) else 0
    layout: list[dict[str, Any]] = []
    idx = 0
    for j in range(m.njnt):
        name = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j)
        adr = int(m.jnt_qposadr[j])
        obs_index = None if adr < exclude else idx
        layout.append({"index": obs_index, "joint": name, "quantity": "pos", "qpos": adr})
        if obs_index is not None:
            idx += 1
    for j in range(m.njnt):
        name = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j)
        layout.append({"index": idx, "joint": name, "quantity": "vel", "qvel": int(m.jnt_dofadr[j])})
        idx += 1
    if idx != env.observation_space.shape[0]:
        raise ValueError(f"layout has {idx} entries but the observation has {env.observation_space.shape[0]}")
    return layout


def observation_names(env: Any) -> list[str]:
    """['rootz/pos', 'rooty/pos', ..., 'rootx/vel', ...] in observation order."""
    return [f"{e['joint']}/{e['quantity']}" for e in observation_layout(env) if e["index"] is not None]


def env_description(name_or_id: str) -> dict[str, Any]:
    """Everything a scenario file records, read from the live env (used to write and test sim/*.yaml)."""
    env = make_env(name_or_id)
    try:
        info = joint_info(env)
        layout = observation_layout(env)
        return {
            "name": env_name(name_or_id),
            "env_id": canonical_env_id(name_or_id),
            "dt": float(env.unwrapped.dt),
            "frame_skip": int(env.unwrapped.frame_skip),
            "max_episode_steps": int(env.spec.max_episode_steps),
            "obs_dim": int(env.observation_space.shape[0]),
            "act_dim": int(env.action_space.shape[0]),
            "action_low": [float(x) for x in env.action_space.low],
            "action_high": [float(x) for x in env.action_space.high],
            "velocity_clip": VELOCITY_CLIP[canonical_env_id(name_or_id)],
            "joints": info.names,
            "root_joints": info.root,
            "actuated_joints": info.actuated,
            "actuator_gears": info.gears,
            "observation": [{k: v for k, v in e.items() if k in ("index", "joint", "quantity")} for e in layout],
        }
    finally:
        env.close()
