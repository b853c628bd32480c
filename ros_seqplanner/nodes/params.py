"""Parameter specs of the planner node: one table, used for declaration, validation and the docs.

Every parameter has a type, a default, a description, a range (numbers) or a set of choices
(strings) and whether it is read-only (fixed once declared; change it by reconfiguring from a
params file). ``config/seqplanner.yaml`` documents the same table for users.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any  # a value, or a type name ('string_array', 'double_array') for an empty default
    description: str
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    read_only: bool = True


PLANNER_PARAMS: tuple[ParamSpec, ...] = (
    # model
    ParamSpec("checkpoint", "", "checkpoint path (name, name.json or name.safetensors); required"),
    ParamSpec("planner", "tt", "expected checkpoint kind; on_configure fails if the checkpoint is another kind "
              "('auto' accepts any)", choices=("tt", "dt", "bc", "auto")),
    ParamSpec("device", "cpu", "torch device for the model: cpu, cuda, cuda:N"),
    ParamSpec("torch_threads", 1, "torch CPU threads, process-wide, set in on_configure (0 = torch's default, one "
              "per core). The C planner uses one; more torch threads spin between plans and slow a sim or a second "
              "planner on the other cores", range=(0, 1024)),
    ParamSpec("env", "halfcheetah", "scenario / env family: picks the observation layout and joint names"),
    # planner settings (0 / '' = the checkpoint's or preset's default)
    ParamSpec("preset", "", "TT planner preset name ('' = default)"),
    ParamSpec("horizon", 0, "TT planning horizon in transitions (0 = preset default)", range=(0, 1000)),
    ParamSpec("beam_width", 0, "TT beam width (0 = preset default)", range=(0, 4096)),
    ParamSpec("n_expand", 0, "TT samples per beam per step (0 = preset default)", range=(0, 1024)),
    ParamSpec("plan_freq", 0, "TT replans every N steps (0 = preset default)", range=(0, 1000)),
    ParamSpec("mode", "", "TT search mode ('' = preset default)", choices=("", "reward", "imitation", "goal")),
    ParamSpec("obs_bounds", "", "TT state constraint 'DIM:LO:HI,...' on predicted observations: plans that stay "
              "inside win (e.g. '1:-1:1' keeps halfcheetah's body pitch within +-1 rad; '' = none)"),
    ParamSpec("time_budget_ms", 0.0, "TT: a plan whose wall time (from the start of the policy call) reaches this "
              "budget starts no further transition and returns the best of the transitions done, as a shorter "
              "horizon would (0 = no budget)", range=(0.0, 600000.0)),
    ParamSpec("target_return", 0.0, "DT target return at episode start (0 = the checkpoint's default)",
              range=(-1e7, 1e7), read_only=False),
    # timing
    ParamSpec("control_rate_hz", 20.0, "command timer rate (HalfCheetah-v5 period is 0.05 s)", range=(0.1, 5000.0)),
    ParamSpec("publish_on", "tick", "both publish a plan's first action as soon as the plan is ready; 'tick' "
              "(real robots, realtime sim) also publishes the plan's next action at every control tick that "
              "had no command since the previous one, and starts a plan ready k periods after its state at its "
              "action k; 'new_state': exactly one command per received state (lockstep sim)",
              choices=("tick", "new_state")),
    ParamSpec("stale_timeout_s", 0.5, "no state for this long -> safe command (0 disables)", range=(0.0, 3600.0),
              read_only=False),
    ParamSpec("deadline_ms", 0.0, "plan must be ready this long after its state arrived, else the fallback is "
              "commanded (0 disables)", range=(0.0, 600000.0), read_only=False),
    ParamSpec("fallback", "continue", "on a missed deadline: 'continue' the previous plan, 'hold' the last "
              "command, or 'zero' (the safe action)", choices=("continue", "hold", "zero"), read_only=False),
    ParamSpec("reward_wait_ms", 20.0, "how long planning waits for the reward that pairs with a new state "
              "(only while the reward topic has a publisher)",
              range=(0.0, 1000.0), read_only=False),
    ParamSpec("catch_up_context", True, "give the policy the control periods it was not asked about (states "
              "skipped while a slower-than-the-period plan ran, and the command actually executed at each "
              "planned state), so a TT/DT context stays one transition per period as in training",
              read_only=False),
    ParamSpec("inline_plan_max_ms", 5.0, "publish_on=new_state: plan directly in the state callback (no hand-off "
              "to the planning thread) while the recent plans took at most this long; slower policies plan in "
              "the planning thread so state intake never waits on them (0 = always the planning thread)",
              range=(0.0, 1000.0), read_only=False),
    ParamSpec("diagnostics_period_s", 1.0, "period of /diagnostics", range=(0.05, 60.0)),
    ParamSpec("autostart", False, "configure and activate on startup (main() only)"),
    # topics and message types
    ParamSpec("state_type", "joint_state", "state message: 'joint_state' (sensor_msgs/JointState mapped through "
              "observation_layout) or 'array' (std_msgs/Float64MultiArray, the observation vector)",
              choices=("joint_state", "array")),
    ParamSpec("state_topic", "/joint_states", "state input (best-effort, depth 1, latest wins)"),
    ParamSpec("reward_topic", "/reward", "std_msgs/Float64 reward of the previous action (reliable)"),
    ParamSpec("goal_topic", "/goal", "std_msgs/Float64MultiArray goal observation (TT goal mode)"),
    ParamSpec("estop_topic", "/estop", "std_msgs/Bool; true -> safe command and deactivate (reliable)"),
    ParamSpec("episode_events_topic", "/episode_events", "std_msgs/String JSON events; 'reset' resets the policy"),
    ParamSpec("command_topic", "/forward_command_controller/commands",
              "std_msgs/Float64MultiArray commands (what ros2_control's forward_command_controller takes)"),
    ParamSpec("plan_topic", "~/plan", "std_msgs/Float64MultiArray (steps x [action | predicted observation])"),
    # mapping and envelope
    ParamSpec("observation_layout", "string_array", "['pos:<joint>' | 'vel:<joint>', ...] "
              "(empty = the env's gymnasium v5 layout)"),
    ParamSpec("velocity_clip", 0.0, "clip velocities in the observation to +-this (0 = the env's default)",
              range=(0.0, 1e6)),
    ParamSpec("joint_name_map", "string_array", "['incoming_name:model_name', ...] renames JointState joints"),
    ParamSpec("command_joint_names", "string_array", "joint order of commands (empty = the env's actuators); "
              "its length must equal the action size"),
    ParamSpec("action_low", "double_array", "lower command bounds per joint (empty = the policy's bounds)"),
    ParamSpec("action_high", "double_array", "upper command bounds per joint (empty = the policy's bounds)"),
    ParamSpec("max_delta_per_tick", 0.0, "largest change of a joint's command between commands (0 = no limit)",
              range=(0.0, 1e6), read_only=False),
    ParamSpec("warmup", True, "run one dummy plan in on_configure so the first real plan is not slow"),
)

SPECS: dict[str, ParamSpec] = {p.name: p for p in PLANNER_PARAMS}


def check_value(name: str, value: Any) -> str:
    """'' if ``value`` is acceptable for ``name``, else why not (choices; ranges rclpy checks too)."""
    spec = SPECS.get(name)
    if spec is None:
        return ""
    if spec.choices is not None and value not in spec.choices:
        return f"{name}={value!r} is not one of {list(spec.choices)}"
    if spec.range is not None and isinstance(value, int | float) and not (spec.range[0] <= value <= spec.range[1]):
        return f"{name}={value!r} is outside [{spec.range[0]}, {spec.range[1]}]"
    return ""
