"""Test isolation: loopback-only DDS with a random domain per run, few torch threads, scratch cwd.

The environment is set at import time, before any test module can import rclpy.
"""

from __future__ import annotations

import os

from ros_seqplanner.rosenv import apply_safe_ros_env

apply_safe_ros_env(force_domain=True)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MUJOCO_GL", "egl")

import pytest  # noqa: E402

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a hard dependency, but keep collection clear
    pass


@pytest.fixture(autouse=True)
def _scratch_cwd(tmp_path, monkeypatch):
    """Run each test in its own directory so MuJoCo's MUJOCO_LOG.TXT never lands in the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def ros_context():
    """A fresh rclpy context for one test; shut down afterwards even if the test fails."""
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        yield ctx
    finally:
        if ctx.ok():
            rclpy.shutdown(context=ctx)


@pytest.fixture
def graph(ros_context):
    """Nodes spun by background executors on ``ros_context`` (tests/node_harness.py); all closed afterwards."""
    from node_harness import Graph

    g = Graph(ros_context)
    yield g
    g.close()
