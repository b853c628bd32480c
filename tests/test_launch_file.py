"""The launch file and the params file.

launch / launch_ros are not installable here: the launch description is only built when they are
present; the file is always compiled and its structure checked. The params file is loaded into a
real planner node through ``--params-file`` and must document every declared parameter.
"""

from __future__ import annotations

import ast
import importlib.util
import py_compile
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "seqplanner.launch.py"
PARAMS = ROOT / "config" / "seqplanner.yaml"


def test_launch_file_compiles_and_declares_arguments(tmp_path):
    py_compile.compile(str(LAUNCH), cfile=str(tmp_path / "launch.pyc"), doraise=True)
    tree = ast.parse(LAUNCH.read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    declared = {n.args[0].value for n in ast.walk(tree)
                if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "DeclareLaunchArgument"}
    assert {"env", "checkpoint", "planner", "device", "mode", "params_file"} <= declared
    text = LAUNCH.read_text()
    assert 'SetEnvironmentVariable("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")' in text
    assert "TRANSITION_CONFIGURE" in text and "TRANSITION_ACTIVATE" in text


def test_default_checkpoint_follows_env():
    """env:=hopper without checkpoint:= must load the hopper model, not the HalfCheetah one (which fails
    on_configure with a dimension mismatch). The default is a PythonExpression over DEFAULT_MODELS."""
    from ros_seqplanner.cli.demo import DEFAULT_MODELS

    text = LAUNCH.read_text()
    m = re.search(r'default_model = PythonExpression\(\[repr\(DEFAULT_MODELS\), "(.*?)", LaunchConfiguration\("env"\), '
                  r'"(.*?)"\]\)', text)
    assert m and '"models", default_model' in text
    for env, name in DEFAULT_MODELS.items():  # what launch evaluates once env is substituted
        assert eval(repr(DEFAULT_MODELS) + m.group(1) + env + m.group(2), {}) == name


def test_realtime_time_budget_follows_env_and_mode():
    from ros_seqplanner.cli.demo import PERIODS, REALTIME_BUDGET

    m = re.search(r'"time_budget_ms": PythonExpression\(\[f"(.*?)",\s*LaunchConfiguration\("env"\),\s*"(.*?)",\s*'
                  r'LaunchConfiguration\("mode"\), "(.*?)"\]\)', LAUNCH.read_text())
    assert m
    for env, period in PERIODS.items():
        for mode, want in (("realtime", 700.0 * period), ("lockstep", 0.0)):
            head = m.group(1).replace("{1000.0 * REALTIME_BUDGET}", str(1000.0 * REALTIME_BUDGET))
            expr = head.replace("{PERIODS!r}", repr(PERIODS)) + env + m.group(2) + mode + m.group(3)
            assert eval(expr, {}) == pytest.approx(want)


@pytest.mark.skipif(importlib.util.find_spec("launch_ros") is None or importlib.util.find_spec("launch") is None,
                    reason="launch / launch_ros are not installed (ROS 2 installation only)")
def test_generate_launch_description():
    spec = importlib.util.spec_from_file_location("seqplanner_launch", LAUNCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ld = mod.generate_launch_description()
    names = {a.name for a in ld.get_launch_arguments()}
    assert {"env", "checkpoint", "planner", "device", "mode", "params_file"} <= names


def test_params_file_documents_every_parameter_and_loads(ros_context):
    from rclpy.parameter import Parameter

    from ros_seqplanner.nodes.params import PLANNER_PARAMS
    from ros_seqplanner.nodes.planner_node import PlannerNode

    text = PARAMS.read_text()
    for spec in PLANNER_PARAMS:
        assert re.search(rf"^\s*#?\s*{spec.name}:", text, re.M), f"{spec.name} is not documented in {PARAMS}"
    node = PlannerNode(context=ros_context, cli_args=["--ros-args", "--params-file", str(PARAMS),
                                                      "-p", "control_rate_hz:=40.0"])
    try:
        assert node.p("command_topic") == "/forward_command_controller/commands"
        assert node.p("fallback") == "continue" and node.p("control_rate_hz") == 40.0
        for spec in PLANNER_PARAMS:
            if not isinstance(spec.default, str) or spec.default not in ("string_array", "double_array"):
                assert node.p(spec.name) == spec.default or spec.name == "control_rate_hz", spec.name
        assert not node.set_parameters([Parameter("stale_timeout_s", value=-1.0)])[0].successful
    finally:
        node.destroy_node()
