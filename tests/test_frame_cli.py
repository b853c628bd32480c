"""The `seqplanner` command: installed on PATH, --help on every subcommand, doctor reports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ros_seqplanner.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def _seqplanner() -> str:
    exe = shutil.which("seqplanner") or str(Path(sys.executable).parent / "seqplanner")
    assert Path(exe).exists(), "pip install of the package must put `seqplanner` on PATH"
    return exe


def _subcommand_paths() -> list[list[str]]:
    parser = build_parser()
    paths = []
    for action in parser._subparsers._group_actions:  # the top-level subparsers action
        for name, sub in action.choices.items():
            kinds = [a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction"]
            if kinds:
                paths += [[name, k] for k in kinds[0].choices]
            else:
                paths.append([name])
    return paths


def test_doctor_and_help_are_on_path():
    out = subprocess.run([_seqplanner(), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "doctor" in out.stdout


@pytest.mark.parametrize("path", _subcommand_paths(), ids=lambda p: "-".join(p))
def test_every_subcommand_has_help(path, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*path, "--help"])
    assert exc.value.code == 0
    assert "usage: seqplanner " + " ".join(path) in capsys.readouterr().out


def test_doctor_json_reports_what_a_user_needs():
    env = dict(os.environ)
    out = subprocess.run([_seqplanner(), "doctor", "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["python"] == sys.version.split()[0]
    assert report["torch"]["ok"] and report["torch"]["default_device"] in ("cpu", "cuda")
    assert report["ros"]["rclpy"] is True and report["ros"]["rmw"].startswith("rmw_")
    assert report["ros"]["env"]["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert report["ros"]["env"]["ROS_DOMAIN_ID"] == os.environ["ROS_DOMAIN_ID"]
    assert isinstance(report["ros"]["launch_ros"], bool)
    assert report["mujoco"] and report["gymnasium"]
    assert report["problems"] == []


def test_doctor_flags_unsafe_discovery():
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="SUBNET")
    out = subprocess.run([_seqplanner(), "doctor"], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0
    assert "ROS_AUTOMATIC_DISCOVERY_RANGE is not LOCALHOST" in out.stdout


def test_package_layout_for_ament_python():
    for rel in ("package.xml", "setup.py", "setup.cfg", "resource/ros_seqplanner", "launch", "models", "sim"):
        assert (REPO / rel).exists(), rel
    xml = (REPO / "package.xml").read_text()
    assert 'format="3"' in xml and "<build_type>ament_python</build_type>" in xml
    for dep in ("rclpy", "std_msgs", "sensor_msgs", "trajectory_msgs", "diagnostic_msgs", "lifecycle_msgs",
                "rosgraph_msgs", "std_srvs", "launch", "launch_ros", "python3-numpy", "python3-pytest"):
        assert f">{dep}<" in xml, dep
    cfg = (REPO / "setup.cfg").read_text()
    assert "install_scripts=$base/lib/ros_seqplanner" in cfg


def test_data_folders_resolve_from_checkout_or_override(monkeypatch, tmp_path):
    from ros_seqplanner import resources

    assert resources.models_dir() == REPO / "models"
    assert (resources.sim_dir() / "halfcheetah.yaml").is_file()
    monkeypatch.setenv("SEQPLANNER_MODELS_DIR", str(tmp_path))
    assert resources.models_dir() == tmp_path
