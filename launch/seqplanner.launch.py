"""Launch the MuJoCo sim bridge and the sequence-model planner (a lifecycle node, configured and
activated automatically).

    ros2 launch ros_seqplanner seqplanner.launch.py checkpoint:=/path/to/models/tt_halfcheetah_medium_expert \\
        planner:=tt env:=halfcheetah mode:=lockstep device:=cpu

Arguments: env, checkpoint, planner, device, mode (bridge: lockstep | realtime), params_file (planner
parameters, default: the installed config/seqplanner.yaml), domain_id, autostart (true: configure +
activate the planner through lifecycle events; false: leave it unconfigured for `ros2 lifecycle set`).
Discovery is forced to the loopback interface in the launched processes
(ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST), and both share one ROS_DOMAIN_ID.

Written against the documented launch / launch_ros API (LifecycleNode + ChangeState events, as in
launch_ros' lifecycle examples); launch and launch_ros are not pip-installable, so outside a ROS 2
installation this file is only compile-checked (tests/test_launch_file.py).
"""

from __future__ import annotations

import os
import random

import lifecycle_msgs.msg
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare

from ros_seqplanner.cli.demo import DEFAULT_MODELS, PERIODS, REALTIME_BUDGET

PACKAGE = "ros_seqplanner"


def _transition(node: LifecycleNode, transition_id: int, **kwargs) -> EmitEvent:
    return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition_id),
                     **kwargs)


def generate_launch_description() -> LaunchDescription:
    default_domain = os.environ.get("ROS_DOMAIN_ID") or str(random.SystemRandom().randint(1, 101))
    default_params = PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "seqplanner.yaml"])
    # The env's shipped model (as `seqplanner demo --env`), looked up once env:= is resolved.
    default_model = PythonExpression([repr(DEFAULT_MODELS), "['", LaunchConfiguration("env"), "']"])
    default_checkpoint = PathJoinSubstitution([FindPackageShare(PACKAGE), "models", default_model])
    args = [
        DeclareLaunchArgument("env", default_value="halfcheetah",
                              description="gymnasium v5 env: halfcheetah | hopper | walker2d"),
        DeclareLaunchArgument("checkpoint", default_value=default_checkpoint,
                              description="planner checkpoint (name, name.json or name.safetensors); "
                                          "default: the shipped TT for env"),
        DeclareLaunchArgument("planner", default_value="tt", description="checkpoint kind: tt | dt | bc | auto"),
        DeclareLaunchArgument("device", default_value="cpu", description="torch device: cpu | cuda | cuda:N"),
        DeclareLaunchArgument("mode", default_value="lockstep", description="sim bridge mode: lockstep | realtime"),
        DeclareLaunchArgument("params_file",
                              default_value=default_params,
                              description="planner parameters (YAML, /** or seqplanner key)"),
        DeclareLaunchArgument("domain_id", default_value=default_domain,
                              description="ROS_DOMAIN_ID shared by both processes (1..101 recommended)"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate the planner automatically"),
    ]
    env = [
        SetEnvironmentVariable("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST"),
        SetEnvironmentVariable("ROS_DOMAIN_ID", LaunchConfiguration("domain_id")),
    ]
    bridge = Node(
        package=PACKAGE, executable="sim_bridge_node", name="sim_bridge", output="screen",
        parameters=[{"env": LaunchConfiguration("env"), "mode": LaunchConfiguration("mode")}],
    )
    # Lockstep: the bridge steps once per command, so the planner answers each state once
    # (publish_on new_state); realtime: each plan as soon as it is ready, and the plan's next action at
    # control ticks that had no command (publish_on tick).
    planner = LifecycleNode(
        package=PACKAGE, executable="seqplanner_node", name="seqplanner", namespace="", output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {"checkpoint": LaunchConfiguration("checkpoint"), "planner": LaunchConfiguration("planner"),
             "device": LaunchConfiguration("device"), "env": LaunchConfiguration("env"), "autostart": False,
             "publish_on": PythonExpression(["'new_state' if '", LaunchConfiguration("mode"),
                                             "' == 'lockstep' else 'tick'"]),
             # realtime: a TT plan gets REALTIME_BUDGET of the env's period (as `seqplanner demo --mode realtime`)
             "time_budget_ms": PythonExpression([f"{1000.0 * REALTIME_BUDGET} * {PERIODS!r}['",
                                                 LaunchConfiguration("env"), "'] if '",
                                                 LaunchConfiguration("mode"), "' == 'realtime' else 0.0"])},
        ],
    )
    autostart = IfCondition(LaunchConfiguration("autostart"))
    configure = _transition(planner, lifecycle_msgs.msg.Transition.TRANSITION_CONFIGURE, condition=autostart)
    activate_when_inactive = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=planner, start_state="configuring", goal_state="inactive",
            entities=[_transition(planner, lifecycle_msgs.msg.Transition.TRANSITION_ACTIVATE)],
        ),
        condition=autostart,
    )
    return LaunchDescription([*args, *env, bridge, activate_when_inactive, planner, configure])
