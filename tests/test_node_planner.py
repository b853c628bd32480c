"""The planner node on a real rclpy graph (loopback): lifecycle, parameters, mapping, safety cases.

Each test builds its own context (conftest ``ros_context``), spins nodes in executor threads and
asserts what the node actually published on the command topic.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")

from node_harness import (
    CHEETAH,
    ContextPolicy,
    Graph,
    LinearPolicy,
    Probe,
    connected,
    make_planner,
    wait_for,
)
from rclpy.exceptions import InvalidParameterValueException
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from std_msgs.msg import Bool, Float64, Float64MultiArray, String

pytestmark = pytest.mark.ros
OK = TransitionCallbackReturn.SUCCESS


def _obs(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=17).astype(np.float32)


def _start(graph: Graph, policy: LinearPolicy, array: bool = False, **params):
    planner = graph.spin(make_planner(graph.context, policy, **params), multi=True)
    probe = graph.spin(Probe(graph.context))
    assert planner.trigger_configure() == OK
    assert planner.trigger_activate() == OK
    assert connected(probe, planner, array=array)
    return planner, probe


def _send(probe: Probe, obs: np.ndarray, n_before: int, stamp=(0, 0), **kw) -> np.ndarray:
    probe.pub_js.publish(probe.joint_state(obs, stamp=stamp, **kw))
    assert wait_for(lambda: probe.n_commands() > n_before), "no command for a valid state"
    return probe.commands[n_before]


def test_lifecycle_transitions(graph):
    policy = LinearPolicy(horizon=3)
    planner = graph.spin(make_planner(graph.context, policy, publish_on="new_state", stale_timeout_s=5.0), multi=True)
    probe = graph.spin(Probe(graph.context))
    assert planner.current_state_label() == "unconfigured" and planner.policy is None
    assert planner.trigger_configure() == OK
    assert planner.current_state_label() == "inactive"
    assert policy.calls == 1, "on_configure must warm the model up with one dummy plan"
    assert planner.trigger_activate() == OK and planner.current_state_label() == "active"
    assert connected(probe, planner)
    obs = _obs(1)
    cmd = _send(probe, obs, 0, stamp=(1, 0))
    np.testing.assert_allclose(cmd, policy.expected(obs), atol=1e-6)
    # The plan topic carries steps x [action | predicted observation].
    assert wait_for(lambda: len(probe.plans) > 0)
    plan = probe.plans[-1]
    assert [d.size for d in plan.layout.dim] == [3, 6 + 17]
    np.testing.assert_allclose(np.reshape(plan.data, (3, 23))[1, :6], policy.expected(obs) * 0.5, atol=1e-6)
    # Deactivate: exactly one safe (zero) command, then silence even when states arrive.
    assert planner.trigger_deactivate() == OK and planner.current_state_label() == "inactive"
    assert wait_for(lambda: probe.n_commands() == 2)
    np.testing.assert_array_equal(probe.commands[1], np.zeros(6))
    probe.pub_js.publish(probe.joint_state(_obs(2), stamp=(2, 0)))
    assert not wait_for(lambda: probe.n_commands() > 2, timeout=0.3)
    assert planner.trigger_cleanup() == OK
    assert planner.current_state_label() == "unconfigured" and planner.policy is None
    assert planner._planning_thread is None and planner._cmd_pub is None
    assert planner.trigger_configure() == OK, "configure must work again after cleanup"


def test_torch_threads_are_set_on_configure(graph):
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        keep = graph.spin(make_planner(graph.context, LinearPolicy(), torch_threads=0))
        assert keep.trigger_configure() == OK and torch.get_num_threads() == 2  # 0 leaves torch's setting alone
        one = graph.spin(make_planner(graph.context, LinearPolicy()))  # the default: one thread
        assert one.trigger_configure() == OK and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_configure_failures(graph, tmp_path):
    empty = graph.spin(make_planner(graph.context, LinearPolicy(), checkpoint=""))
    assert empty.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert empty.current_state_label() == "unconfigured"
    ckpt = tmp_path / "m.json"
    ckpt.write_text(json.dumps({"kind": "dt"}))
    wrong_kind = make_planner(graph.context, LinearPolicy(), checkpoint=str(tmp_path / "m"), planner="tt")
    assert wrong_kind.trigger_configure() == TransitionCallbackReturn.FAILURE
    wrong_dim = make_planner(graph.context, LinearPolicy(obs_dim=5))
    assert wrong_dim.trigger_configure() == TransitionCallbackReturn.FAILURE
    wrong_bounds = make_planner(graph.context, LinearPolicy(), action_low=[-1.0, 1.0])
    assert wrong_bounds.trigger_configure() == TransitionCallbackReturn.FAILURE
    for n in (wrong_kind, wrong_dim, wrong_bounds):
        assert n.current_state_label() == "unconfigured"
        n.destroy_node()


def test_parameter_validation(graph):
    for bad in ({"deadline_ms": -1.0}, {"horizon": 5000}, {"fallback": "pray"}, {"planner": "ppo"},
                {"control_rate_hz": 0.0}):
        with pytest.raises(InvalidParameterValueException):
            make_planner(graph.context, LinearPolicy(), **bad)
    node = graph.spin(make_planner(graph.context, LinearPolicy(), max_delta_per_tick=0.5))
    assert node.trigger_configure() == OK
    res = node.set_parameters([Parameter("deadline_ms", value=-5.0)])[0]
    assert not res.successful and node.p("deadline_ms") == 0.0
    res = node.set_parameters([Parameter("fallback", value="bogus")])[0]
    assert not res.successful and "not one of" in res.reason
    res = node.set_parameters([Parameter("checkpoint", value="other")])[0]
    assert not res.successful, "checkpoint is read-only"
    res = node.set_parameters([Parameter("max_delta_per_tick", value=0.1), Parameter("fallback", value="zero")])
    assert all(r.successful for r in res)
    assert node._safety.config.max_delta == 0.1 and node._safety.config.fallback == "zero"


def test_joint_state_reordered_and_renamed(graph):
    policy = LinearPolicy()
    _, probe = _start(graph, policy, publish_on="new_state", joint_name_map=["robot/bthigh:bthigh"])
    obs = _obs(3)
    order = list(reversed(CHEETAH.joints))
    msg = probe.joint_state(obs, order=order, stamp=(1, 0))
    msg.name = ["robot/bthigh" if n == "bthigh" else n for n in msg.name]
    probe.pub_js.publish(msg)
    assert wait_for(lambda: probe.n_commands() > 0)
    np.testing.assert_allclose(policy.observations[-1], obs, atol=1e-6)
    np.testing.assert_allclose(probe.commands[0], policy.expected(obs), atol=1e-6)


def test_missing_joint_and_duplicate_rejected(graph):
    policy = LinearPolicy()
    planner, probe = _start(graph, policy, publish_on="new_state", stale_timeout_s=5.0, diagnostics_period_s=0.1)
    probe.pub_js.publish(probe.joint_state(_obs(4), stamp=(1, 0), drop="bfoot"))
    assert wait_for(lambda: planner.counters["rejected_states"] == 1)
    assert wait_for(lambda: any("lacks joints ['bfoot']" in d["message"] for d in probe.diagnostics))
    assert probe.n_commands() == 0 and policy.calls == 1  # only the warm-up call
    _send(probe, _obs(5), 0, stamp=(2, 0))
    probe.pub_js.publish(probe.joint_state(_obs(5), stamp=(2, 0)))  # same stamp: a heartbeat repeat
    assert wait_for(lambda: planner.counters["duplicate_states"] == 1)
    assert not wait_for(lambda: probe.n_commands() > 1, timeout=0.2)


def test_array_state_nan_and_wrong_length_rejected(graph):
    policy = LinearPolicy()
    planner, probe = _start(graph, policy, array=True, state_type="array", state_topic="/observation",
                            publish_on="new_state", stale_timeout_s=5.0)
    bad = _obs(6).astype(np.float64)
    bad[3] = np.nan
    probe.pub_arr.publish(Float64MultiArray(data=bad.tolist()))
    probe.pub_arr.publish(Float64MultiArray(data=[0.0] * 5))
    assert wait_for(lambda: planner.counters["rejected_states"] >= 1)
    assert not wait_for(lambda: probe.n_commands() > 0, timeout=0.2)
    assert "NaN" in planner.last_reject or "expects 17" in planner.last_reject
    good = _obs(7)
    probe.pub_arr.publish(Float64MultiArray(data=good.astype(np.float64).tolist()))
    assert wait_for(lambda: probe.n_commands() == 1)
    np.testing.assert_allclose(probe.commands[0], policy.expected(good), atol=1e-6)


def test_bounds_rate_limit_and_reward(graph):
    policy = LinearPolicy(scale=3.0)  # saturating actions
    _, probe = _start(graph, policy, publish_on="new_state", stale_timeout_s=5.0, reward_wait_ms=200.0,
                      action_low=[-0.2] * 6, action_high=[0.3] * 6, max_delta_per_tick=0.05)
    first = _send(probe, _obs(8), 0, stamp=(1, 0))
    np.testing.assert_allclose(first, np.clip(policy.raw(_obs(8)), -0.2, 0.3), atol=1e-6)
    probe.pub_reward.publish(Float64(data=1.25))
    second = _send(probe, -_obs(8), 1, stamp=(2, 0))
    assert np.all(second >= -0.2) and np.all(second <= 0.3)
    assert np.max(np.abs(second - first)) <= 0.05 + 1e-9
    assert np.max(np.abs(second - first)) > 0.04, "the second state should have pushed the command to the limit"
    assert policy.rewards[-2:] == [None, 1.25]


def test_stale_state_commands_safe(graph):
    policy = LinearPolicy()
    planner, probe = _start(graph, policy, publish_on="tick", control_rate_hz=100.0, stale_timeout_s=0.15)
    probe.pub_js.publish(probe.joint_state(_obs(9), stamp=(1, 0)))
    assert wait_for(lambda: planner.counters["cmd_plan"] >= 1)
    assert wait_for(lambda: planner.counters["stale_commands"] >= 3, timeout=3.0)
    np.testing.assert_array_equal(probe.commands[-1], np.zeros(6))
    assert any(np.abs(c).max() > 0 for c in probe.commands), "a real command came before the stale ones"


@pytest.mark.parametrize("fallback", ["continue", "hold", "zero"])
def test_deadline_fallback(graph, fallback):
    policy = LinearPolicy(horizon=3, delays={2: 0.6})  # call 0 is the warm-up
    planner, probe = _start(graph, policy, publish_on="new_state", control_rate_hz=200.0, deadline_ms=80.0,
                            stale_timeout_s=5.0, fallback=fallback)
    a = _send(probe, _obs(10), 0, stamp=(1, 0))
    fb = _send(probe, _obs(11), 1, stamp=(2, 0))
    expected = {"continue": a * 0.5, "hold": a, "zero": np.zeros(6)}[fallback]
    np.testing.assert_allclose(fb, expected, atol=1e-6)
    assert planner.counters["deadline_misses"] == 1
    assert wait_for(lambda: policy.calls == 3 and planner._plan.seq == 2, timeout=2.0)
    assert not wait_for(lambda: probe.n_commands() > 2, timeout=0.2), "a late plan must not be published"


def test_estop_commands_safe_and_deactivates(graph):
    policy = LinearPolicy()
    planner, probe = _start(graph, policy, publish_on="new_state", stale_timeout_s=5.0)
    _send(probe, _obs(12), 0, stamp=(1, 0))
    probe.pub_estop.publish(Bool(data=True))
    assert wait_for(lambda: planner.current_state_label() == "inactive")
    assert wait_for(lambda: probe.n_commands() >= 2)
    np.testing.assert_array_equal(probe.commands[1], np.zeros(6))
    assert all(np.all(c == 0) for c in probe.commands[1:])
    assert planner.trigger_activate() == TransitionCallbackReturn.FAILURE, "activation must fail while e-stopped"
    probe.pub_estop.publish(Bool(data=False))
    assert wait_for(lambda: not planner._estop)
    assert planner.trigger_activate() == OK


def test_planner_exception_and_nan_action_give_safe_commands(graph):
    policy = LinearPolicy(raise_on={2}, nan_on={3})
    planner, probe = _start(graph, policy, publish_on="new_state", stale_timeout_s=5.0, diagnostics_period_s=0.1)
    _send(probe, _obs(13), 0, stamp=(1, 0))
    err = _send(probe, _obs(14), 1, stamp=(2, 0))
    np.testing.assert_array_equal(err, np.zeros(6))
    assert wait_for(lambda: any(d["level"] == 2 and "exploded" in d["message"] for d in probe.diagnostics))
    nan = _send(probe, _obs(15), 2, stamp=(3, 0))
    np.testing.assert_array_equal(nan, np.zeros(6))
    ok = _send(probe, _obs(16), 3, stamp=(4, 0))
    np.testing.assert_allclose(ok, policy.expected(_obs(16)), atol=1e-6)
    assert planner.last_error == "" and planner.counters["planner_errors"] == 2
    assert all(np.all(np.isfinite(c)) and np.all(np.abs(c) <= 1) for c in probe.commands)


def test_episode_reset_event_resets_policy(graph):
    policy = LinearPolicy()
    planner, probe = _start(graph, policy, publish_on="new_state", stale_timeout_s=5.0, target_return=500.0)
    assert policy.resets[-1] == {"target_return": 500.0}
    n_resets = len(policy.resets)
    probe.pub_event.publish(String(data=json.dumps({"event": "reset"})))  # right after activation: no-op
    assert wait_for(lambda: planner._pending_reset)
    _send(probe, _obs(17), 0, stamp=(1, 0))
    probe.pub_reward.publish(Float64(data=2.0))
    _send(probe, _obs(18), 1, stamp=(2, 0))
    assert len(policy.resets) == n_resets and policy.rewards[-2:] == [None, 2.0]
    probe.pub_event.publish(String(data=json.dumps({"event": "reset"})))  # a new episode
    assert wait_for(lambda: planner._pending_reset)
    _send(probe, _obs(19), 2, stamp=(3, 0))
    assert policy.resets[n_resets:] == [{"target_return": 500.0}] and policy.rewards[-1] is None


def test_tick_mode_steps_through_the_plan(graph):
    policy = LinearPolicy(horizon=3)
    planner, probe = _start(graph, policy, publish_on="tick", control_rate_hz=50.0, stale_timeout_s=5.0)
    obs = _obs(20)
    probe.pub_js.publish(probe.joint_state(obs, stamp=(1, 0)))
    assert wait_for(lambda: planner.counters["cmd_continue"] >= 3, timeout=3.0)
    n = planner.counters["commands"]
    assert wait_for(lambda: probe.n_commands() >= n), "every published command arrives (reliable)"
    cmds = list(probe.commands)
    first = next(i for i, c in enumerate(cmds) if np.abs(c).max() > 0)
    assert all(np.all(c == 0) for c in cmds[:first]), "before the first plan: safe commands"
    a = policy.expected(obs)
    for k, scale in enumerate([1.0, 0.5, 0.25, 0.25]):  # the plan, then its last action held
        np.testing.assert_allclose(cmds[first + k], a * scale, atol=1e-6)


def test_tick_mode_publishes_a_plan_when_ready_then_continues_a_period_later(graph):
    """A realtime robot must get each plan at once, not at the node's next tick: the two clocks are not in
    phase, so waiting for the tick delays a command by up to a period (it halved a halfcheetah TT's
    return in a realtime sim). The plan's next action follows at the first tick with no command since the
    previous one, so a fresh command is never overwritten within the period it was meant for."""
    period = 0.25
    policy = LinearPolicy(horizon=3)
    planner, probe = _start(graph, policy, publish_on="tick", control_rate_hz=1.0 / period, stale_timeout_s=5.0)
    obs = _obs(21)
    a = policy.expected(obs)
    t_state = time.perf_counter()
    probe.pub_js.publish(probe.joint_state(obs, stamp=(1, 0)))
    assert wait_for(lambda: planner.counters["cmd_continue"] >= 1, timeout=3.0)
    n = planner.counters["commands"]
    assert wait_for(lambda: probe.n_commands() >= n), "every published command arrives (reliable)"
    with probe._lock:
        cmds, times = list(probe.commands), list(probe.command_times)
    first = next(i for i, c in enumerate(cmds) if np.abs(c).max() > 0)
    np.testing.assert_allclose(cmds[first], a, atol=1e-6)
    np.testing.assert_allclose(cmds[first + 1], a * 0.5, atol=1e-6)
    assert planner.counters["cmd_plan"] == 1 and planner.counters["fresh"] == 0, "published by the planner, not a tick"
    assert times[first] - t_state < 0.6 * period, "the plan must go out as soon as it is ready"
    assert times[first + 1] - times[first] > 0.9 * period, "the tick right after a fresh plan must not overwrite it"


def test_tick_mode_starts_a_late_plan_at_the_current_period(graph):
    """A plan that takes 2.1 control periods starts at its action 2: actions 0 and 1 were meant for periods
    the robot has already lived through (the deadline fallback covered them)."""
    period = 0.1
    policy = LinearPolicy(horizon=6, delays={1: 0.21})  # call 0 is the warm-up; 2.1-2.9 periods leave 90 ms
    planner, probe = _start(graph, policy, publish_on="tick", control_rate_hz=1.0 / period, stale_timeout_s=5.0,
                            deadline_ms=1000.0 * period, fallback="zero", reward_wait_ms=0.0)
    obs = _obs(22)
    a = policy.expected(obs)
    probe.pub_js.publish(probe.joint_state(obs, stamp=(1, 0)))
    assert wait_for(lambda: planner.counters["cmd_plan"] >= 1 and planner.counters["cmd_continue"] >= 1, timeout=3.0)
    n = planner.counters["commands"]
    assert wait_for(lambda: probe.n_commands() >= n), "every published command arrives (reliable)"
    with probe._lock:
        cmds = list(probe.commands)
    first = next(i for i, c in enumerate(cmds) if np.abs(c).max() > 0)
    np.testing.assert_allclose(cmds[first], a * 0.25, atol=1e-6)  # action 2 (LinearPolicy halves per step)
    np.testing.assert_allclose(cmds[first + 1], a * 0.125, atol=1e-6)
    assert planner.counters["late_plans"] == 1 and planner.counters["deadline_misses"] == 1


def _state_with_reward(planner, probe: Probe, obs: np.ndarray, reward: float, k: int) -> None:
    """Publish ``reward``, then the k-th state (as the sim bridge does); wait until the node stored both."""
    n_rewards = planner._reward_count
    probe.pub_reward.publish(Float64(data=reward))
    assert wait_for(lambda: planner._reward_count > n_rewards)
    probe.pub_js.publish(probe.joint_state(obs, stamp=(k, 0)))
    assert wait_for(lambda: planner._obs_seq >= k)


@pytest.mark.parametrize("catch_up", [True, False])
def test_slow_plan_context_catch_up(graph, catch_up):
    """While a plan runs, the robot passes states the policy is never asked about, under commands from an
    older plan. Before the next plan the node tells a policy that keeps a context (TT, DT) what happened:
    the command executed at the planned state (not the plan's own first action) and each skipped state with
    its reward and executed command, so the context stays one transition per control period."""
    policy = ContextPolicy(delays={2: 0.4})  # call 0: warm-up; call 1: s1 (fast); call 2: s2 (slow)
    planner, probe = _start(graph, policy, publish_on="new_state", stale_timeout_s=5.0, inline_plan_max_ms=0.0,
                            reward_wait_ms=0.0, catch_up_context=catch_up)
    s = [_obs(30 + k) for k in range(5)]
    probe.pub_js.publish(probe.joint_state(s[1], stamp=(1, 0)))
    assert wait_for(lambda: probe.n_commands() >= 1)
    a1 = probe.commands[0]
    _state_with_reward(planner, probe, s[2], 0.5, 2)  # planning s2 takes 0.4 s ...
    _state_with_reward(planner, probe, s[3], 0.25, 3)  # ... while s3 and s4 arrive, the robot still on a1
    _state_with_reward(planner, probe, s[4], 0.125, 4)
    assert wait_for(lambda: policy.calls >= 4, timeout=3.0), "after the slow plan the node plans the newest state"
    events = policy.events[1:]  # [0] = the warm-up act
    if not catch_up:
        assert [e[0] for e in events] == ["act"] * 3 and planner.counters["observed_states"] == 0
        return
    assert [e[0] for e in events[:3]] == ["act", "correct", "act"]
    np.testing.assert_allclose(events[1][1], a1)  # executed at s1: the plan's own first action
    np.testing.assert_array_equal(events[2][1], s[2])
    rest = events[3:]
    assert [e[0] for e in rest] == ["correct", "observe", "act"]
    np.testing.assert_allclose(rest[0][1], a1)  # executed at s2: a1, not the slow plan's first action
    assert not np.allclose(rest[0][1], policy.expected(s[2]))
    np.testing.assert_array_equal(rest[1][1], s[3])
    assert rest[1][2] == 0.25
    np.testing.assert_allclose(rest[1][3], a1)  # the slow plan came out after s4 arrived
    np.testing.assert_array_equal(rest[2][1], s[4])
    assert rest[2][2] == 0.125
    assert planner.counters["observed_states"] == 1 and planner.counters["catch_up_errors"] == 0


def test_lockstep_catch_up_records_each_state_under_its_own_command(graph):
    """A lockstep sim answers a command with the next state at once, on another executor thread, which can
    run before the publishing thread gets the GIL back. The action the node reports as executed at each
    state must be that state's command, never the one before it. (The node used to note the command only
    after publishing it: in 6 of 1000 steps of a demo episode the TT's context then got the previous
    command, and the lockstep demo no longer equalled ``seqplanner evaluate``.) Here the next state is
    delivered inside ``publish`` itself, the worst case, so the test is deterministic."""
    policy = ContextPolicy()
    planner, probe = _start(graph, policy, publish_on="new_state", stale_timeout_s=5.0, reward_wait_ms=50.0)
    steps, sent = 20, [0]
    publish = planner._cmd_pub.publish

    def publish_then_next_state(msg: Float64MultiArray) -> None:
        publish(msg)
        k = sent[0] = sent[0] + 1
        if k < steps:
            planner._on_reward(Float64(data=0.01 * k))
            planner._on_joint_state(probe.joint_state(_obs(1000 + k), stamp=(k + 1, 0)))

    planner._cmd_pub.publish = publish_then_next_state
    probe.pub_js.publish(probe.joint_state(_obs(1000), stamp=(1, 0)))
    assert wait_for(lambda: policy.calls >= steps + 1, timeout=10.0), f"{policy.calls} plans"
    acts = [e for e in policy.events[1:] if e[0] == "act"]
    corrections = [e[1] for e in policy.events[1:] if e[0] == "correct"]
    assert len(acts) == steps and len(corrections) == steps - 1
    assert planner.counters["observed_states"] == 0
    for k, executed in enumerate(corrections):
        np.testing.assert_allclose(executed, policy.expected(acts[k][1]), atol=1e-6, err_msg=f"state {k}")
