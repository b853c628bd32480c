"""Observation layout: how a ``sensor_msgs/JointState`` maps onto a model's observation vector.

ROS-free (plain lists in, numpy out) so it is unit-testable and shared by both nodes. A layout is a
sequence of entries ``"pos:<joint>"`` / ``"vel:<joint>"``; the gymnasium v5 locomotion envs observe
``qpos[1:]`` (every joint position except the root x slide) followed by all of ``qvel`` (Hopper and
Walker2d clip velocities to [-10, 10]). The built-in table below is checked against the real env in
tests/test_node_layout.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_ROOT = ("rootx", "rootz", "rooty")
_JOINTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], float | None]] = {
    # env family -> (all joints in MuJoCo order, actuated joints in action order, velocity clip)
    "halfcheetah": ((*_ROOT, "bthigh", "bshin", "bfoot", "fthigh", "fshin", "ffoot"),
                    ("bthigh", "bshin", "bfoot", "fthigh", "fshin", "ffoot"), None),
    "hopper": ((*_ROOT, "thigh_joint", "leg_joint", "foot_joint"),
               ("thigh_joint", "leg_joint", "foot_joint"), 10.0),
    "walker2d": ((*_ROOT, "thigh_joint", "leg_joint", "foot_joint", "thigh_left_joint", "leg_left_joint",
                  "foot_left_joint"),
                 ("thigh_joint", "leg_joint", "foot_joint", "thigh_left_joint", "leg_left_joint",
                  "foot_left_joint"), 10.0),
}


class LayoutError(ValueError):
    """A layout string or a joint-name mapping that cannot be used."""


def _family(env: str) -> str:
    key = str(env).strip().split("/")[-1].lower().split("-")[0]
    if key not in _JOINTS:
        raise LayoutError(f"no built-in observation layout for {env!r}; known: {sorted(_JOINTS)} "
                          "(or set the observation_layout parameter explicitly)")
    return key


@dataclass(frozen=True)
class ObservationLayout:
    """``entries``: ((kind, joint), ...) with kind 'pos' or 'vel'; ``vel_clip``: |v| clip or None."""

    entries: tuple[tuple[str, str], ...]
    vel_clip: float | None = None

    @property
    def dim(self) -> int:
        return len(self.entries)

    @property
    def joints(self) -> tuple[str, ...]:
        """Joints the layout needs, in first-use order."""
        return tuple(dict.fromkeys(j for _, j in self.entries))

    @classmethod
    def parse(cls, entries: Sequence[str], vel_clip: float | None = None) -> ObservationLayout:
        out = []
        for e in entries:
            kind, sep, joint = str(e).partition(":")
            if not sep or kind not in ("pos", "vel") or not joint:
                raise LayoutError(f"layout entry {e!r} must look like 'pos:<joint>' or 'vel:<joint>'")
            out.append((kind, joint))
        if not out:
            raise LayoutError("observation layout is empty")
        return cls(tuple(out), vel_clip if vel_clip and vel_clip > 0 else None)

    def to_strings(self) -> list[str]:
        return [f"{k}:{j}" for k, j in self.entries]

    def from_joint_state(self, names: Sequence[str], positions: Sequence[float], velocities: Sequence[float],
                         name_map: dict[str, str] | None = None) -> tuple[np.ndarray | None, str]:
        """(observation float32 (dim,), "") or (None, reason). Joints may come in any order;
        ``name_map`` renames incoming joints to the layout's names. Never raises."""
        if len(positions) != len(names):
            return None, f"JointState has {len(names)} names but {len(positions)} positions"
        if self.needs_velocities and len(velocities) != len(names):
            return None, f"JointState has {len(names)} names but {len(velocities)} velocities (needed)"
        gather, reason = self.gather(names, name_map)
        if gather is None:
            return None, reason
        return gather.apply(positions, velocities)

    @property
    def needs_velocities(self) -> bool:
        return any(k == "vel" for k, _ in self.entries)

    def gather(self, names: Sequence[str], name_map: dict[str, str] | None = None) -> tuple[JointGather | None, str]:
        """The precomputed mapping for messages whose joints come in the order ``names`` (after
        ``name_map``), or (None, reason) if joints the layout needs are missing. A repeated name maps
        to its last occurrence."""
        name_map = name_map or {}
        mapped = [name_map.get(n, n) for n in names]
        index = {n: i for i, n in enumerate(mapped)}
        missing = [j for j in self.joints if j not in index]
        if missing:
            return None, f"JointState lacks joints {missing} (has {list(mapped)})"
        slots = {kind: [k for k, (kd, _) in enumerate(self.entries) if kd == kind] for kind in ("pos", "vel")}
        src = {kind: [index[self.entries[k][1]] for k in slots[kind]] for kind in ("pos", "vel")}
        as_idx = lambda xs: np.asarray(xs, dtype=np.intp)  # noqa: E731
        return JointGather(len(mapped), self.dim, as_idx(slots["pos"]), as_idx(src["pos"]), as_idx(slots["vel"]),
                           as_idx(src["vel"]), self.vel_clip), ""


@dataclass(frozen=True, eq=False)
class JointGather:
    """One incoming joint order mapped onto a layout as fancy-index gathers: the planner node builds it
    once per name order and applies it to every message (no per-message dict or Python loop)."""

    n_names: int
    dim: int
    pos_slots: np.ndarray  # observation indices filled from positions ...
    pos_index: np.ndarray  # ... taken from these message indices
    vel_slots: np.ndarray
    vel_index: np.ndarray
    vel_clip: float | None = None

    def apply(self, positions: Sequence[float], velocities: Sequence[float]) -> tuple[np.ndarray | None, str]:
        """(observation float32 (dim,), "") or (None, reason) for one message in this order. Never raises."""
        n = self.n_names
        if len(positions) != n:
            return None, f"JointState has {n} names but {len(positions)} positions"
        obs = np.empty(self.dim, dtype=np.float64)
        obs[self.pos_slots] = np.asarray(positions, dtype=np.float64)[self.pos_index]
        if self.vel_slots.size:
            if len(velocities) != n:
                return None, f"JointState has {n} names but {len(velocities)} velocities (needed)"
            vel = np.asarray(velocities, dtype=np.float64)[self.vel_index]
            if self.vel_clip is not None:
                vel = np.clip(vel, -self.vel_clip, self.vel_clip)
            obs[self.vel_slots] = vel
        if not np.isfinite(obs).all():
            return None, "JointState contains NaN/Inf"
        return obs.astype(np.float32), ""


def builtin_layout(env: str) -> ObservationLayout:
    """The gymnasium v5 layout for 'halfcheetah' / 'HalfCheetah-v5' / 'hopper' / 'walker2d'."""
    joints, _, clip = _JOINTS[_family(env)]
    return ObservationLayout(tuple(("pos", j) for j in joints[1:]) + tuple(("vel", j) for j in joints), clip)


def actuated_joints(env: str) -> tuple[str, ...]:
    """Command order: the env's actuated joints in action-vector order."""
    return _JOINTS[_family(env)][1]


def joint_table(model: Any) -> list[tuple[str, int, int]]:
    """(name, qpos address, dof address) of every 1-dof (hinge/slide) joint of a MuJoCo model, in
    model order: what the sim bridge publishes in /joint_states."""
    import mujoco

    one_dof = (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))
    return [(mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j), int(model.jnt_qposadr[j]),
             int(model.jnt_dofadr[j])) for j in range(model.njnt) if int(model.jnt_type[j]) in one_dof]


def parse_name_map(pairs: Sequence[str]) -> dict[str, str]:
    """['robot_name:model_name', ...] -> {robot_name: model_name}."""
    out: dict[str, str] = {}
    for p in pairs:
        src, sep, dst = str(p).partition(":")
        if not sep or not src or not dst:
            raise LayoutError(f"joint_name_map entry {p!r} must look like 'incoming_name:model_name'")
        out[src] = dst
    return out
