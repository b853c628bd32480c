"""Scenario files (``sim/<env>.yaml``): what the ROS bridge and the tools need to know about an env.

A scenario records the gymnasium id, control period ``dt``, episode limit, observation / action sizes,
action bounds, joint names (all, root, actuated in action order) and the observation layout (which
observation index is which joint position or velocity; root coordinates excluded from the observation
have ``index: null``). :func:`check_scenario` compares a scenario with the live MuJoCo env.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ros_seqplanner.sim.envs import canonical_env_id, env_description, env_name

REQUIRED = ("name", "env_id", "dt", "obs_dim", "act_dim", "action_low", "action_high", "joints",
            "actuated_joints", "observation")


class ScenarioError(ValueError):
    """A scenario file is missing, malformed or disagrees with the environment."""


@dataclass
class Scenario:
    name: str
    env_id: str
    dt: float
    obs_dim: int
    act_dim: int
    action_low: list[float]
    action_high: list[float]
    joints: list[str]
    actuated_joints: list[str]
    observation: list[dict[str, Any]]
    root_joints: list[str] = field(default_factory=list)
    actuator_gears: list[float] = field(default_factory=list)
    frame_skip: int = 1
    velocity_clip: float | None = None  # observed joint velocities are clipped to [-clip, clip]
    max_episode_steps: int = 1000
    description: str = ""

    def observation_names(self) -> list[str]:
        """'<joint>/pos' or '<joint>/vel' for each observation index, in order."""
        entries = sorted((e for e in self.observation if e["index"] is not None), key=lambda e: e["index"])
        return [f"{e['joint']}/{e['quantity']}" for e in entries]

    def position_indices(self) -> dict[str, int]:
        """joint -> observation index of its position (joints excluded from the obs are absent)."""
        return {e["joint"]: e["index"] for e in self.observation if e["quantity"] == "pos" and e["index"] is not None}

    def velocity_indices(self) -> dict[str, int]:
        """joint -> observation index of its velocity."""
        return {e["joint"]: e["index"] for e in self.observation if e["quantity"] == "vel" and e["index"] is not None}


def scenario_dir() -> Path:
    """The top-level ``sim/`` folder (source checkout, or the installed share/ros_seqplanner/sim)."""
    from ros_seqplanner.resources import sim_dir

    return sim_dir()


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load ``sim/<env>.yaml`` by env name/id, or any scenario file path."""
    import yaml

    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml"):
        p = scenario_dir() / f"{env_name(str(name_or_path))}.yaml"
    if not p.is_file():
        raise ScenarioError(f"scenario file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ScenarioError(f"{p} is not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ScenarioError(f"{p} must contain a mapping")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ScenarioError(f"{p} is missing keys {missing}")
    known = set(Scenario.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ScenarioError(f"{p} has unknown keys {unknown}")
    sc = Scenario(**data)
    if len(sc.action_low) != sc.act_dim or len(sc.action_high) != sc.act_dim or len(sc.actuated_joints) != sc.act_dim:
        raise ScenarioError(f"{p}: action bounds / actuated joints must have act_dim={sc.act_dim} entries")
    if len(sc.observation_names()) != sc.obs_dim:
        n = len(sc.observation_names())
        raise ScenarioError(f"{p}: the observation layout has {n} entries, obs_dim={sc.obs_dim}")
    return sc


def check_scenario(sc: Scenario) -> list[str]:
    """Differences between a scenario and the live env (empty list = they agree)."""
    live = env_description(sc.env_id)
    diffs = []
    for key, value in live.items():
        mine = getattr(sc, key)
        if value is None or mine is None:
            ok = value is None and mine is None
        elif isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float)):
            ok = _close(mine, value)
        else:
            ok = mine == value
        if not ok:
            diffs.append(f"{key}: scenario {mine!r} != env {value!r}")
    if canonical_env_id(sc.name) != sc.env_id:
        diffs.append(f"name {sc.name!r} does not match env_id {sc.env_id!r}")
    return diffs


def _close(a: Any, b: Any, tol: float = 1e-9) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(abs(float(x) - float(y)) <= tol for x, y in zip(a, b))
    try:
        return abs(float(a) - float(b)) <= tol
    except (TypeError, ValueError):
        return False


def write_scenario(name_or_id: str, path: str | Path | None = None, description: str = "") -> Path:
    """(Re)generate a scenario file from the live env."""
    import yaml

    data = env_description(name_or_id)
    data["description"] = description
    p = Path(path) if path else scenario_dir() / f"{data['name']}.yaml"
    header = ("# Scenario generated from the live gymnasium env by ros_seqplanner.sim.scenarios.write_scenario;\n"
              "# tests/test_sim_scenarios.py checks that it still agrees with the env.\n"
              "# observation: index = position in the observation vector (null = excluded from it, e.g. rootx),\n"
              "# quantity pos = qpos of the joint, vel = qvel. actuated_joints are in action order; action i is a\n"
              "# torque command in [action_low, action_high] scaled by actuator_gears[i].\n")
    p.write_text(header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120))
    return p
