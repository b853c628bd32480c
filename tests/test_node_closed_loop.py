"""Closed loop over ROS 2: sim bridge node + planner node with tiny real TT / DT checkpoints.

Lockstep is deterministic, so a DT episode over ROS must equal the same policy stepped directly in
the env; TT (beam search) must complete the episode with finite, in-bounds commands. The realtime
bridge must keep the env period with zero-order hold of the last command.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("mujoco")

from node_harness import Graph, Probe, wait_for
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, String

from ros_seqplanner.nodes.planner_node import STATE_QOS, PlannerNode
from ros_seqplanner.nodes.sim_bridge_node import SimBridgeNode

pytestmark = pytest.mark.ros
N_STEPS = 12
# Tiny TT search so a plan takes milliseconds (option names of policies.tt.TTPolicy).
TT_OPTIONS = {"horizon": 2, "beam_width": 2, "n_expand": 2}


def load(path: str, device: str = "cpu", **options):
    from ros_seqplanner.policies.factory import load_policy

    return load_policy(path, device, **options)


def _tiny_dt(ds, out) -> None:
    from ros_seqplanner.training.dt import DTTrainConfig, train_dt

    cfg = DTTrainConfig(context=4, n_layer=1, n_head=1, n_embd=16, steps=3, batch_size=4, warmup_steps=1,
                        device="cpu", progress=False, max_ep_len=1000)
    train_dt(ds, cfg, out)


def _tiny_tt(ds, out) -> None:
    from ros_seqplanner.training.tt import TTTrainConfig, train_tt

    cfg = TTTrainConfig(n_bins=8, max_transitions=4, n_layer=1, n_head=1, n_embd=16, batch_size=4, max_steps=2,
                        device="cpu", amp=False, progress=False)
    train_tt(ds, cfg, out)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny DT and TT checkpoints (17-d observation, 6-d action: HalfCheetah's sizes), trained for a
    few steps on a synthetic dataset. A kind whose training module cannot be imported maps to the
    ImportError text (its test skips with it)."""
    import torch

    torch.set_num_threads(1)
    from ros_seqplanner.training.tt import toy_dataset

    ds = toy_dataset(n_episodes=4, length=30, obs_dim=17, act_dim=6)
    out = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for kind, build in (("dt", _tiny_dt), ("tt", _tiny_tt)):
        try:
            build(ds, out / kind)
            paths[kind] = str(out / kind)
        except ImportError as e:
            paths[kind] = ImportError(str(e))
    return paths


def _bridge(graph: Graph, **params) -> SimBridgeNode:
    overrides = [Parameter(k, value=v) for k, v in {"env": "halfcheetah", "seed": 3, **params}.items()]
    return graph.spin(SimBridgeNode(context=graph.context, parameter_overrides=overrides))


def _planner(graph: Graph, kind: str, path: str, options: dict) -> PlannerNode:
    overrides = [Parameter("checkpoint", value=path), Parameter("planner", value=kind),
                 Parameter("publish_on", value="new_state"), Parameter("stale_timeout_s", value=5.0),
                 Parameter("reward_wait_ms", value=200.0),
                 *(Parameter(k, value=v) for k, v in options.items())]
    node = PlannerNode(context=graph.context, parameter_overrides=overrides,
                       )  # the default factory: policies.factory.load_policy
    graph.spin(node, multi=True)
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    return node


def _offline_return(path: str, options: dict, seed: int, steps: int) -> tuple[float, list[np.ndarray]]:
    from ros_seqplanner.sim.envs import make_env

    policy = load(path, "cpu", **options)
    policy.reset()
    env = make_env("halfcheetah", seed=seed)
    obs, _ = env.reset(seed=seed)
    total, reward, actions = 0.0, None, []
    for _ in range(steps):
        a = np.clip(np.asarray(policy.act(obs, reward), np.float64), -1, 1)
        actions.append(a)
        obs, reward, *_ = env.step(a.astype(np.float32))  # as the bridge and `seqplanner evaluate` step it
        total += float(reward)
    return total, actions


@pytest.mark.parametrize("kind", ["dt", "tt", "tt_bounded"])
def test_lockstep_closed_loop(graph, checkpoints, kind):
    bounded = kind == "tt_bounded"
    kind = "tt" if bounded else kind
    if isinstance(checkpoints[kind], ImportError):
        pytest.skip(f"{kind} training/policy module not importable yet: {checkpoints[kind]}")
    options = dict(TT_OPTIONS) if kind == "tt" else {}
    if bounded:  # a state constraint only the lowest bin of observation 0 meets: most plans leave it
        lowest = float(load(checkpoints["tt"], "cpu", **options).disc.midpoints_np[0, 0])
        options.update(horizon=3, obs_bounds=f"0::{lowest}")
    probe = graph.spin(Probe(graph.context))
    events: list[dict] = []
    probe.create_subscription(String, "/episode_events", lambda m: events.append(json.loads(m.data)), 10)
    planner = _planner(graph, kind, checkpoints[kind], options)
    # the probe must hear the first command: wait for discovery before the bridge starts the episode
    assert wait_for(lambda: planner._cmd_pub is not None and planner._cmd_pub.get_subscription_count() > 0)
    bridge = _bridge(graph, max_steps=N_STEPS, mode="lockstep")
    assert wait_for(lambda: bool(bridge.returns), timeout=30.0), f"episode did not finish: {dict(planner.counters)}"
    assert wait_for(lambda: any(e["event"] == "episode_end" for e in events), timeout=2.0)
    end = next(e for e in events if e["event"] == "episode_end")
    assert end["length"] == N_STEPS and end["return"] == pytest.approx(bridge.returns[0])
    assert planner.counters["deadline_misses"] == 0 and planner.counters["planner_errors"] == 0
    assert planner.counters["missing_rewards"] == 0
    # the bridge may finish on the last command before the probe's copy of it has been delivered
    assert wait_for(lambda: len(probe.commands) >= N_STEPS, timeout=2.0), len(probe.commands)
    cmds = np.array(probe.commands[:N_STEPS])
    assert cmds.shape == (N_STEPS, 6) and np.all(np.isfinite(cmds)) and np.all(np.abs(cmds) <= 1.0)
    assert np.isfinite(planner.plan_latency.percentile(99))
    if kind == "tt":  # the node's obs_bounds parameter reaches the planner; its diagnostics count the misses
        assert planner.policy.config.obs_bounds == options.get("obs_bounds")
        assert (planner.counters["steps_plan_out_of_bounds"] > 0) == bounded
        diag = {kv.key: kv.value for kv in planner.diagnostics_status().values}
        assert int(diag.get("steps_plan_out_of_bounds", 0)) == planner.counters["steps_plan_out_of_bounds"]
    if kind == "dt":  # deterministic: over ROS == stepping the same policy directly
        ret, actions = _offline_return(checkpoints[kind], options, seed=3, steps=N_STEPS)
        np.testing.assert_allclose(cmds, np.array(actions), atol=1e-6)
        assert bridge.returns[0] == pytest.approx(ret, rel=1e-9, abs=1e-9)


def test_realtime_bridge_keeps_period_with_zero_order_hold(graph):
    stamps: list[float] = []
    listener = Node("listener", context=graph.context)
    listener.create_subscription(JointState, "/joint_states", lambda m: stamps.append(time.perf_counter()), STATE_QOS)
    cmd_pub = listener.create_publisher(Float64MultiArray, "/forward_command_controller/commands", 1)
    graph.spin(listener)
    bridge = _bridge(graph, mode="realtime", max_steps=1000)
    assert wait_for(lambda: bridge.running, timeout=5.0)
    cmd = [0.5, -0.5, 0.5, -0.5, 0.5, -0.5]
    cmd_pub.publish(Float64MultiArray(data=cmd))
    assert wait_for(lambda: bridge._got_command, timeout=2.0)
    n0, t0 = bridge.steps, time.perf_counter()
    time.sleep(1.0)
    n1, t1 = bridge.steps, time.perf_counter()
    period = (t1 - t0) / (n1 - n0)
    assert period == pytest.approx(bridge.dt, rel=0.2), f"realtime period {period:.4f} s vs dt {bridge.dt}"
    assert bridge._command.tolist() == cmd  # held: one command drove every step since
    gaps = np.diff(stamps[-15:])
    assert np.median(gaps) == pytest.approx(bridge.dt, rel=0.2)


def test_demo_runs_bridge_process_and_reports(checkpoints, tmp_path, capsys):
    if isinstance(checkpoints["tt"], ImportError):
        pytest.skip(f"tt not importable yet: {checkpoints['tt']}")
    from ros_seqplanner.cli import main

    out = tmp_path / "result.json"
    rc = main(["demo", "--checkpoint", checkpoints["tt"], "--steps", "6", "--histogram", str(tmp_path / "lat.png"),
               "--json", str(out), "--horizon", "2", "--beam-width", "2", "--n-expand", "2", "--timeout", "60"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    result = json.loads(out.read_text())
    assert result["length"] == 6 and np.isfinite(result["return"])
    assert result["late_plans"] == 0 and result["plans_cut"] == 0  # lockstep: no budget, nothing is late
    from ros_seqplanner.data.scores import normalized_score

    assert result["normalized_score"] == pytest.approx(normalized_score("halfcheetah", result["return"]))
    assert "normalised score" in printed and "p99" in printed
    assert (tmp_path / "lat.png").stat().st_size > 1000
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists(), "the bridge must run in its own scratch directory"


def test_demo_passes_its_thread_count_to_the_node():
    from ros_seqplanner.cli import build_parser, demo

    for threads in (1, 2):
        args = build_parser().parse_args(["demo", "--threads", str(threads)])
        values = {p.name: p.value for p in demo.planner_overrides(args, "models/x")}
        assert values["torch_threads"] == threads  # the node sets it in on_configure
    args = build_parser().parse_args(["demo", "--obs-bounds", "1:-1:1"])
    assert {p.name: p.value for p in demo.planner_overrides(args, "models/x")}["obs_bounds"] == "1:-1:1"
    budgets = {}
    for extra in ([], ["--mode", "realtime"], ["--mode", "realtime", "--time-budget-ms", "0"],
                  ["--time-budget-ms", "12.5"]):
        args = build_parser().parse_args(["demo", *extra])
        budgets[" ".join(extra)] = {p.name: p.value for p in demo.planner_overrides(args, "models/x")}["time_budget_ms"]
    assert budgets == {"": 0.0, "--mode realtime": pytest.approx(35.0), "--mode realtime --time-budget-ms 0": 0.0,
                       "--time-budget-ms 12.5": 12.5}  # realtime: 0.7 of HalfCheetah's 50 ms period


def test_demo_without_checkpoint_explains(monkeypatch, tmp_path):
    from ros_seqplanner.cli import demo

    monkeypatch.setattr(demo, "DEFAULT_MODELS", {"halfcheetah": "models/does_not_exist"})
    monkeypatch.setattr(demo, "repo_models_dir", lambda: tmp_path)
    path, message = demo.resolve_checkpoint("halfcheetah", None)
    assert path is None and "--checkpoint" in message and "seqplanner train tt" in message
    assert demo.resolve_checkpoint("halfcheetah", "x/y") == ("x/y", "")
