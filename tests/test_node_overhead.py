"""The planner node's low-overhead paths (issue #7) on a real rclpy graph, and ``seqplanner bench node``.

- inline planning: with ``publish_on: new_state`` a cheap policy is run by the state callback itself,
  a slow one (or ``inline_plan_max_ms: 0``) by the planning thread; commands are the same either way;
- the cached JointState mapping follows a change of joint order and still rejects bad messages;
- cleanup waits for a plan running inline;
- the benchmark runs with the driver in a child process or in-process and writes its JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")

from node_harness import CHEETAH, Graph, LinearPolicy, Probe, connected, make_planner, wait_for
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from std_msgs.msg import Float64

pytestmark = pytest.mark.ros
OK = TransitionCallbackReturn.SUCCESS
PLANNING_THREAD = "seqplanner-planning"


class ThreadRecordingPolicy(LinearPolicy):
    """LinearPolicy that also records which thread ran each act() call."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.threads: list[str] = []

    def act(self, observation, reward):
        self.threads.append(threading.current_thread().name)
        return super().act(observation, reward)


def _obs(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=17).astype(np.float32)


def _start(graph: Graph, policy, **params):
    planner = graph.spin(make_planner(graph.context, policy, publish_on="new_state", stale_timeout_s=5.0,
                                      **params), multi=True)
    probe = graph.spin(Probe(graph.context))
    assert planner.trigger_configure() == OK
    assert planner.trigger_activate() == OK
    assert connected(probe, planner)
    return planner, probe


def _send(probe: Probe, obs: np.ndarray, n_before: int, stamp, **kw) -> np.ndarray:
    probe.pub_js.publish(probe.joint_state(obs, stamp=stamp, **kw))
    assert wait_for(lambda: probe.n_commands() > n_before), "no command for a valid state"
    return probe.commands[n_before]


def test_cheap_policy_plans_in_the_state_callback_and_can_be_switched_off(graph):
    policy = ThreadRecordingPolicy()
    # a generous inline budget: a descheduled (loaded machine) plan of this cheap policy must not count as slow
    planner, probe = _start(graph, policy, reward_wait_ms=500.0, inline_plan_max_ms=1000.0)
    for k in range(3):
        if k:
            probe.pub_reward.publish(Float64(data=float(k)))
        cmd = _send(probe, _obs(k), k, stamp=(k + 1, 0))
        np.testing.assert_allclose(cmd, policy.expected(_obs(k)), atol=1e-6)
    assert policy.threads[0] == "MainThread"  # the warm-up plan, in on_configure
    assert all(t != PLANNING_THREAD for t in policy.threads[1:]), policy.threads
    assert policy.rewards[1:] == [None, 1.0, 2.0], "inline planning still waits for the paired reward"
    assert planner.set_parameters([Parameter("inline_plan_max_ms", value=0.0)])[0].successful
    probe.pub_reward.publish(Float64(data=3.0))
    cmd = _send(probe, _obs(3), 3, stamp=(4, 0))
    np.testing.assert_allclose(cmd, policy.expected(_obs(3)), atol=1e-6)
    assert policy.threads[-1] == PLANNING_THREAD and policy.rewards[-1] == 3.0
    assert planner.counters["missing_rewards"] == 0


def test_slow_policy_plans_in_the_planning_thread(graph):
    policy = ThreadRecordingPolicy(delays={0: 0.05})  # the warm-up plan takes 50 ms > inline_plan_max_ms
    _, probe = _start(graph, policy, inline_plan_max_ms=5.0)
    cmd = _send(probe, _obs(1), 0, stamp=(1, 0))
    np.testing.assert_allclose(cmd, policy.expected(_obs(1)), atol=1e-6)
    assert policy.threads[-1] == PLANNING_THREAD


def test_tick_mode_never_plans_inline(graph):
    policy = ThreadRecordingPolicy()
    planner = graph.spin(make_planner(graph.context, policy, publish_on="tick", control_rate_hz=50.0,
                                      stale_timeout_s=5.0), multi=True)
    probe = graph.spin(Probe(graph.context))
    assert planner.trigger_configure() == OK and planner.trigger_activate() == OK
    assert connected(probe, planner)
    probe.pub_js.publish(probe.joint_state(_obs(2), stamp=(1, 0)))
    assert wait_for(lambda: planner.counters["cmd_plan"] >= 1)
    assert policy.threads[-1] == PLANNING_THREAD


def test_cached_joint_mapping_follows_a_new_joint_order(graph):
    policy = LinearPolicy()
    planner, probe = _start(graph, policy, joint_name_map=["robot/bshin:bshin"])
    order = list(CHEETAH.joints)
    a = _send(probe, _obs(4), 0, stamp=(1, 0))
    np.testing.assert_allclose(a, policy.expected(_obs(4)), atol=1e-6)
    # A reversed order with one joint renamed: the mapping is rebuilt, the observation is the same.
    renamed = ["robot/bshin" if n == "bshin" else n for n in reversed(order)]
    msg = probe.joint_state(_obs(5), order=list(reversed(order)), stamp=(2, 0))
    msg.name = renamed
    probe.pub_js.publish(msg)
    assert wait_for(lambda: probe.n_commands() > 1)
    np.testing.assert_allclose(probe.commands[1], policy.expected(_obs(5)), atol=1e-6)
    np.testing.assert_allclose(policy.observations[-1], _obs(5), atol=1e-6)
    # Then a message lacking a joint, one with a NaN and one with too few positions: all rejected.
    probe.pub_js.publish(probe.joint_state(_obs(6), stamp=(3, 0), drop="fshin"))
    assert wait_for(lambda: planner.counters["rejected_states"] == 1)
    assert "fshin" in planner.last_reject
    bad = _obs(7).copy()
    bad[3] = np.nan
    probe.pub_js.publish(probe.joint_state(bad, stamp=(4, 0)))
    assert wait_for(lambda: planner.counters["rejected_states"] == 2)
    short = probe.joint_state(_obs(8), stamp=(5, 0))
    short.position = list(short.position)[:-1]
    probe.pub_js.publish(short)
    assert wait_for(lambda: planner.counters["rejected_states"] == 3)
    assert "positions" in planner.last_reject and probe.n_commands() == 2
    c = _send(probe, _obs(9), 2, stamp=(6, 0))  # the original order again
    np.testing.assert_allclose(c, policy.expected(_obs(9)), atol=1e-6)


def test_cleanup_waits_for_an_inline_plan(graph):
    policy = ThreadRecordingPolicy(delays={2: 0.5})  # call 0 = warm-up; call 2 = the 2nd state, slow
    planner, probe = _start(graph, policy, reward_wait_ms=0.0)
    _send(probe, _obs(10), 0, stamp=(1, 0))
    probe.pub_js.publish(probe.joint_state(_obs(11), stamp=(2, 0)))
    assert wait_for(lambda: policy.calls == 3, timeout=2.0)
    assert policy.threads[-1] != PLANNING_THREAD
    assert planner.trigger_deactivate() == OK
    t0 = time.perf_counter()
    assert planner.trigger_cleanup() == OK
    assert time.perf_counter() - t0 > 0.2, "cleanup must wait for the plan running in the state callback"
    assert planner.policy is None
    assert wait_for(lambda: probe.n_commands() == 2)
    np.testing.assert_array_equal(probe.commands[1], np.zeros(6))  # the deactivation's safe command, no more
    assert not wait_for(lambda: probe.n_commands() > 2, timeout=0.2)


@pytest.mark.flaky(reruns=2)  # wall-clock benchmark in a subprocess: may lose a sample on a loaded machine
@pytest.mark.parametrize("driver", ["process", "thread"])
def test_bench_node_writes_json(tmp_path, driver):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "ros_seqplanner.cli", "bench", "node", "--samples", "40", "--warmup", "5",
           "--driver", driver, "--json", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "ROS_DOMAIN_ID"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(out.read_text())
    assert data["driver"] == driver and data["samples"] == 40 and data["lost"] == 0
    for key in ("node_overhead_ms", "round_trip_ms", "plan_ms", "reward_wait_ms"):
        s = data[key]
        assert 0.0 < s["p50"] <= s["p99"] <= s["max"] < 1000.0, (key, s)
    assert data["counters"]["cmd_plan"] == 45 and data["counters"].get("missing_rewards", 0) == 0
    assert "node overhead" in r.stdout and "p99" in r.stdout


def test_latency_stats_ring_keeps_the_newest_in_order():
    from ros_seqplanner.nodes.planner_node import LatencyStats

    stats = LatencyStats(maxlen=4)
    assert stats.samples == [] and np.isnan(stats.percentile(50))
    for v in [5.0, 1.0, 4.0]:
        stats.add(v)
    assert stats.samples == [5.0, 1.0, 4.0]
    for v in [2.0, 8.0, 3.0]:
        stats.add(v)
    assert stats.samples == [4.0, 2.0, 8.0, 3.0]  # the oldest two dropped, order kept across the wrap
    assert stats.percentile(50) == pytest.approx(np.percentile([4.0, 2.0, 8.0, 3.0], 50))
    assert stats.percentile(100) == 8.0
