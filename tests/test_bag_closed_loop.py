"""Bags from a real lockstep closed loop (sim bridge + planner node), replayed into a fresh planner node.

One episode per model kind is recorded with ``record_closed_loop`` (the code behind
``seqplanner record --episode``); then:

- the bag converts back to exactly the dataset of the same episode run in-process;
- replaying its states, rewards and episode events into a new planner node gives exactly the recorded
  commands (DT, and TT with the same seed and device);
- edited copies of it (written with BagWriter) check the node's safety behaviour under replay: a gap
  trips the stale-state watchdog, a burst of states does not queue stale plans, NaN states never
  produce NaN commands.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.ros

N_STEPS = 25
SEED = 4
COMMANDS = "/forward_command_controller/commands"
REPLAYED = ["/joint_states", "/reward", "/episode_events"]
TT_OPTIONS = {"horizon": 2, "beam_width": 2, "n_expand": 2}  # a plan in milliseconds
NODE_PARAMS = {"stale_timeout_s": 5.0, "reward_wait_ms": 200.0, "diagnostics_period_s": 0.1}


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def load(path: str, kind: str) -> Any:
    """A fresh policy from a checkpoint (policies.factory when present, else the policy class)."""
    options = TT_OPTIONS if kind == "tt" else {}
    if _have("ros_seqplanner.policies.factory"):
        from ros_seqplanner.policies.factory import load_policy

        return load_policy(path, "cpu", **options)
    if kind == "tt":
        from ros_seqplanner.policies.tt import TTPolicy

        return TTPolicy.from_checkpoint(path, "cpu", **options)
    from ros_seqplanner.policies.dt import DTPolicy

    return DTPolicy.from_checkpoint(path, "cpu")


class Spy:
    """Forwards to a real policy and keeps the observations it planned for (for the burst test)."""

    def __init__(self, policy: Any) -> None:
        self._policy = policy
        self.observations: list[np.ndarray] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)

    def act(self, observation: np.ndarray, reward: float | None) -> np.ndarray:
        self.observations.append(np.array(observation))
        return self._policy.act(observation, reward)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """Tiny DT and TT checkpoints with HalfCheetah's sizes, trained a few steps on a toy dataset."""
    import torch

    torch.set_num_threads(1)
    if not _have("ros_seqplanner.training.tt") or not _have("ros_seqplanner.training.dt"):
        pytest.skip("DT/TT training modules not available")
    from ros_seqplanner.training.dt import DTTrainConfig, train_dt
    from ros_seqplanner.training.tt import TTTrainConfig, toy_dataset, train_tt

    ds = toy_dataset(n_episodes=4, length=30, obs_dim=17, act_dim=6)
    out = tmp_path_factory.mktemp("ckpt")
    train_dt(ds, DTTrainConfig(context=4, n_layer=1, n_head=1, n_embd=16, steps=3, batch_size=4, warmup_steps=1,
                               device="cpu", progress=False, max_ep_len=1000), out / "dt")
    train_tt(ds, TTTrainConfig(n_bins=8, max_transitions=4, n_layer=1, n_head=1, n_embd=16, batch_size=4,
                               max_steps=2, device="cpu", amp=False, progress=False), out / "tt")
    return {"dt": str(out / "dt"), "tt": str(out / "tt")}


@pytest.fixture(scope="module")
def context():
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


@pytest.fixture(scope="module")
def recorded(checkpoints, context, tmp_path_factory) -> dict[str, dict]:
    from ros_seqplanner.cli.record import record_closed_loop

    out = {}
    with pytest.MonkeyPatch.context() as mp:  # module scope runs before conftest's chdir: MuJoCo logs to cwd
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        for kind, path in checkpoints.items():
            out[kind] = _record(record_closed_loop, kind, path, context, tmp_path_factory)
    return out


def _record(record_closed_loop, kind: str, path: str, context, tmp_path_factory) -> dict:
    bag = tmp_path_factory.mktemp("bags") / f"episode_{kind}"
    return record_closed_loop(bag, env="halfcheetah", checkpoint=path, planner=kind, seed=SEED,
                              max_steps=N_STEPS, policy_factory=lambda c, d, **o: load(c, kind),
                              planner_params=NODE_PARAMS, context=context)


def _commands(bag: Path) -> np.ndarray:
    from ros_seqplanner.bags.reader import open_bag

    with open_bag(bag) as b:
        return np.array([m.data for _, m in b.messages([COMMANDS])])


def _states_after_last_command(bag: Path) -> int:
    """Distinct joint states recorded after the last command (ones the recording may not have answered)."""
    from ros_seqplanner.bags.reader import open_bag

    with open_bag(bag) as b:
        raws = list(b.raw_messages(["/joint_states", COMMANDS]))
    last_cmd = max(r.timestamp_ns for r in raws if r.topic == COMMANDS)
    return len({r.data for r in raws if r.topic == "/joint_states" and r.timestamp_ns > last_cmd})


class Harness:
    """A fresh planner node + a command sink, spun on a multi-threaded executor."""

    def __init__(self, context, policy: Any, **params: Any) -> None:
        import rclpy
        from node_harness import PROBE_COMMAND_QOS  # records every command (see node_harness.Probe)
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.parameter import Parameter
        from std_msgs.msg import Float64MultiArray

        from ros_seqplanner.nodes.planner_node import PlannerNode, autostart

        settings = {"checkpoint": "replay", "planner": "auto", "publish_on": "new_state", **NODE_PARAMS, **params}
        self.node = PlannerNode(context=context, policy_factory=lambda c, d, **o: policy,
                                parameter_overrides=[Parameter(k, value=v) for k, v in settings.items()])
        self.sink = rclpy.create_node("command_sink", context=context)
        self.commands: list[tuple[float, np.ndarray]] = []
        self.sink.create_subscription(Float64MultiArray, COMMANDS, lambda m: self.commands.append(
            (time.monotonic(), np.array(m.data))), PROBE_COMMAND_QOS)
        self.executor = MultiThreadedExecutor(num_threads=4, context=context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.sink)
        from ros_seqplanner.spinning import SpinThread

        self.spinner = SpinThread(self.executor).start()
        assert autostart(self.node)

    def replay(self, bag: Path, pace: bool = True) -> Any:
        """Replay states, rewards and events with their timing; ``pace``: hold each state (and the
        reward/event after it) until the node answered the previous state, so a loaded machine never
        makes the node skip one (the timing between answers is the bag's)."""
        from ros_seqplanner.bags.replay import ReplayOptions, replay_bag

        pacing = {"pace_topics": REPLAYED, "pace_trigger_topic": "/joint_states", "pace_response_topic": COMMANDS,
                  "pace_timeout_s": 2.0} if pace else {}
        stats = replay_bag(bag, ReplayOptions(topics=REPLAYED, wait_for_subscribers=REPLAYED, **pacing),
                           context=self.node.context)
        time.sleep(0.4)  # the last state's plan and command
        return stats

    def plan_commands(self) -> np.ndarray:
        """Commands answering states (the node's safe command is exactly zero for these bounds)."""
        return np.array([c for _, c in self.commands if np.any(c != 0.0)])

    def close(self) -> None:
        # stop spinning before the node destroys its entities: a callback still in flight on an entity being
        # destroyed fails with "cannot use Destroyable", printed at exit as an exception never retrieved
        self.spinner.stop(timeout_s=5.0)
        self.node.trigger_shutdown()
        self.sink.destroy_node()
        self.node.destroy_node()


def _log_node_timing(node: Any) -> list[tuple[str, float, Any]]:
    """Record, on the node's clock (perf_counter), each accepted JointState's arrival time as the watchdog
    sees it, with its header stamp, and each command's publish time with its reason ("plan", "stale", ...)."""
    log: list[tuple[str, float, Any]] = []
    store, publish = node._store_state, node._publish

    def store_state(obs, reason, t):
        if obs is not None:
            log.append(("state", t, node._last_stamp[:2]))  # _on_joint_state sets it just before
        store(obs, reason, t)

    def publish_command(command, why):
        log.append((why, time.perf_counter(), None))
        publish(command, why)

    node._store_state, node._publish = store_state, publish_command
    return log


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy the replayed topics of ``src`` into a new bag through ``edit(raw, msg, typestore)`` ->
    (timestamp_ns, bytes), or None to drop the message."""
    from ros_seqplanner.bags.reader import open_bag
    from ros_seqplanner.bags.writer import BagWriter

    with open_bag(src) as b, BagWriter(dst) as w:
        for name in REPLAYED:
            t = b.info.topics[name]
            w.add_topic(name, t.msgtype, offered_qos=t.offered_qos)
        for raw, msg in b.messages(REPLAYED):
            out = edit(raw, msg, w.typestore)
            if out is not None:
                w.write(raw.topic, *out)
    return dst


def _state_times(bag: Path) -> list[int]:
    from ros_seqplanner.bags.reader import open_bag

    with open_bag(bag) as b:
        return [r.timestamp_ns for r in b.raw_messages(["/joint_states"])]


def _distinct_state_times(bag: Path) -> list[int]:
    """Receive times of the states the node plans for (first message of each header stamp)."""
    from ros_seqplanner.bags.reader import open_bag

    times, seen = [], set()
    with open_bag(bag) as b:
        for raw, m in b.messages(["/joint_states"]):
            stamp = (m.header.stamp.sec, m.header.stamp.nanosec)
            if stamp not in seen:
                seen.add(stamp)
                times.append(raw.timestamp_ns)
    return times


def _compressed_times(bag: Path, max_gap_ns: int) -> dict[int, int]:
    """Timestamp map that shortens every gap between consecutive messages to at most ``max_gap_ns``
    (order kept): a recording made on a loaded machine can hold pauses longer than a test's stale
    timeout, and a gap test needs the one gap it inserts to be the only one."""
    from ros_seqplanner.bags.reader import open_bag

    with open_bag(bag) as b:
        stamps = sorted({r.timestamp_ns for r in b.raw_messages(REPLAYED)})
    out, shift = {}, 0
    for prev, t in zip([stamps[0], *stamps], stamps):
        shift += max(0, t - prev - max_gap_ns)
        out[t] = t - shift
    return out


def _distinct_states(bag: Path) -> int:
    """States the node plans for: lockstep heartbeats repeat a state with the same stamp."""
    from ros_seqplanner.bags.reader import open_bag

    with open_bag(bag) as b:
        return len({(m.header.stamp.sec, m.header.stamp.nanosec) for _, m in b.messages(["/joint_states"])})


# ---------------------------------------------------------------------------------------------- dataset
def test_recorded_episode_converts_to_the_in_process_episode(recorded, checkpoints) -> None:
    from ros_seqplanner.bags.to_dataset import bag_to_dataset
    from ros_seqplanner.nodes.obs_layout import builtin_layout
    from ros_seqplanner.sim.envs import make_env

    rec = recorded["dt"]
    assert rec["steps"] == N_STEPS
    ds, report = bag_to_dataset(rec["bag"], env_id="HalfCheetah-v5")
    assert (len(ds), report.transitions) == (1, N_STEPS)
    ep = ds.episodes[0]
    # the same episode in-process: same policy, same seed; actions cross ROS as float64 and the bridge steps the env
    # in its float32 action dtype, as `seqplanner evaluate` does
    policy = load(checkpoints["dt"], "dt")
    policy.reset()
    env = make_env("halfcheetah", seed=SEED)
    obs, _ = env.reset(seed=SEED)
    rows, reward = [], None
    for _ in range(N_STEPS):
        a = np.clip(np.asarray(policy.act(obs, reward), np.float64), -1.0, 1.0)
        rows.append((obs, a))
        obs, reward, *_ = env.step(a.astype(np.float32))
        rows[-1] += (reward,)
    np.testing.assert_array_equal(ep.observations, np.array([r[0] for r in rows], np.float32))
    np.testing.assert_array_equal(ep.actions, np.array([r[1] for r in rows], np.float32))
    np.testing.assert_array_equal(ep.rewards, np.array([r[2] for r in rows], np.float32))
    np.testing.assert_array_equal(ep.final_observation, obs.astype(np.float32))
    assert ep.truncated and not ep.terminated
    # the JointState stream, mapped through the gymnasium layout, is the same observation
    js, _ = bag_to_dataset(rec["bag"], obs_topic="/joint_states",
                           joint_layout=builtin_layout("halfcheetah").to_strings())
    np.testing.assert_array_equal(js.episodes[0].observations, ep.observations)


def test_recorded_bag_has_every_closed_loop_topic(recorded) -> None:
    from ros_seqplanner.bags.reader import open_bag

    with open_bag(recorded["dt"]["bag"]) as b:
        counts = {t: i.message_count for t, i in b.info.topics.items()}
        assert b.info.storage == "mcap"
    assert counts["/reward"] == N_STEPS
    # one state per step plus the initial one (and maybe lockstep heartbeats repeating it)
    assert counts["/joint_states"] == counts["/observation"] == counts["/clock"] >= N_STEPS + 1, counts
    assert counts[COMMANDS] == counts["/seqplanner/plan"] == N_STEPS + 1  # the final state is answered too
    assert counts["/episode_events"] == 2 and counts["/diagnostics"] >= 1


# ---------------------------------------------------------------------------------------------- replay
@pytest.mark.flaky(reruns=2)  # paced replay over DDS on a loaded machine: see the gap test below
@pytest.mark.parametrize("kind", ["dt", "tt"])
def test_replay_into_planner_reproduces_the_recorded_commands(recorded, checkpoints, context, kind) -> None:
    rec = recorded[kind]
    h = Harness(context, load(checkpoints[kind], kind))
    try:
        stats = h.replay(rec["bag"])
    finally:
        h.close()
    assert stats.published["/joint_states"] >= N_STEPS + 1
    recorded_cmds = _commands(rec["bag"])
    replayed = h.plan_commands()
    assert recorded_cmds.shape == (N_STEPS + 1, 6)
    # The recording stops shortly after the episode: a state the bridge published after the last recorded
    # command (e.g. the next episode's first state) may be answered in the replay but not in the recording.
    extra = replayed.shape[0] - recorded_cmds.shape[0]
    assert 0 <= extra <= _states_after_last_command(rec["bag"]), (dict(h.node.counters), extra)
    np.testing.assert_array_equal(replayed[:recorded_cmds.shape[0]], recorded_cmds)


# Timing is judged on the node's own clock (see _log_node_timing): on a loaded 2-core machine, DDS
# delivery inside one process was seen to hold a state or a command back for 0.2-0.7 s now and then
# (every thread idle, nobody holding the GIL; BENCHMARKS.md), which the bag's timing cannot account for. The
# watchdog must follow what the node saw, so each stale command is checked against the node's
# arrivals; the rerun remains for a replay that loses one of the two states around the gap.
@pytest.mark.flaky(reruns=2)
def test_gap_in_the_bag_trips_the_stale_state_watchdog(recorded, checkpoints, context, tmp_path) -> None:
    src = recorded["dt"]["bag"]
    tmap = _compressed_times(src, 50_000_000)  # no pause > 50 ms but the one inserted here
    t10 = tmap[_distinct_state_times(src)[10]] - 1_000_000  # the 10th state and its reward (sent just before)
    gap_ns = 3_000_000_000
    seen: dict[tuple[int, int], bool] = {}  # state stamp -> sent after the gap

    def edit(raw, msg, ts):
        t = tmap[raw.timestamp_ns]
        if raw.topic == "/joint_states":
            stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            if stamp in seen:  # a lockstep heartbeat repeating a state: never answered, so paced replay
                return None    # would stall on it for pace_timeout_s (> the stale timeout)
            seen[stamp] = t >= t10
        return t + (gap_ns if t >= t10 else 0), raw.data

    bag = _rewrite(src, tmp_path / "gap", edit)
    stale_s = 1.0  # well inside the inserted 3 s gap
    h = Harness(context, load(checkpoints["dt"], "dt"), stale_timeout_s=stale_s, control_rate_hz=50.0)
    node_log = _log_node_timing(h.node)
    try:
        h.replay(bag)
        counters = dict(h.node.counters)
    finally:
        h.close()
    last_before = [stamp for stamp, after in seen.items() if not after][-1]
    first_after = next(stamp for stamp, after in seen.items() if after)
    arrived = {stamp: t for kind, t, stamp in node_log if kind == "state"}
    states = np.sort(list(arrived.values()))
    stale = np.array([t for kind, t, _ in node_log if kind == "stale"])
    # Every state that reached the node was answered by a plan (the state topic is best effort: on a loaded
    # machine one can be lost, which is not what this test is about, unless it is one of the two around the gap).
    assert sum(kind == "plan" for kind, _, _ in node_log) == len(arrived) >= len(seen) - 2
    assert last_before in arrived and first_after in arrived, "the replay lost a state next to the gap"
    assert counters["stale_commands"] == len(stale) >= 1
    # The inserted gap: exactly one safe command, stale_timeout_s after the last state before it arrived,
    # within a few control ticks (or one scheduling pause).
    in_gap = stale[(stale > arrived[last_before]) & (stale < arrived[first_after])]
    assert len(in_gap) == 1 and stale_s < in_gap[0] - arrived[last_before] < stale_s + 1.5
    # Every stale command, in the gap or not (a delivery pause > stale_timeout_s, or the bag's end), comes
    # stale_timeout_s after the state before it, and at most once per silence: none while states arrive.
    before = np.searchsorted(states, stale) - 1
    assert np.all(before >= 0)
    assert np.all((stale - states[before] > stale_s) & (stale - states[before] < stale_s + 1.5))
    assert len(np.unique(before)) == len(before)
    # What the command topic carried: the node's commands in order, a plan command for every state received.
    safe = [not np.any(c) for _, c in h.commands]
    published = [kind != "plan" for kind, _, _ in node_log if kind != "state"]
    assert sum(not x for x in safe) == len(arrived)
    assert safe == published[:len(safe)]


def test_burst_of_states_does_not_queue_stale_plans(recorded, checkpoints, context, tmp_path) -> None:
    """All states of the episode arrive within ~1 ms: the node plans a few, the last one for the newest."""
    from ros_seqplanner.nodes.obs_layout import builtin_layout

    src = recorded["dt"]["bag"]
    t0 = _state_times(src)[0]
    squeezed = {}  # every message keeps its order; all come within ~1 ms of the first state

    def squeeze(raw, msg, ts):
        squeezed[raw.timestamp_ns] = t0 + 10_000 * len(squeezed)
        return squeezed[raw.timestamp_ns], raw.data

    bag = _rewrite(src, tmp_path / "burst", squeeze)
    from ros_seqplanner.bags.reader import open_bag

    with open_bag(bag) as b:
        states = [m for _, m in b.messages(["/joint_states"])]
    last = builtin_layout("halfcheetah").from_joint_state(states[-1].name, states[-1].position, states[-1].velocity)[0]
    spy = Spy(load(checkpoints["dt"], "dt"))
    h = Harness(context, spy, reward_wait_ms=1.0)
    try:
        h.replay(bag, pace=False)
        counters = dict(h.node.counters)
    finally:
        h.close()
    plans = len(spy.observations) - 1  # minus the warm-up plan of on_configure
    assert 1 <= plans <= N_STEPS // 3, f"{plans} plans for a burst of {len(states)} states"
    np.testing.assert_array_equal(spy.observations[-1], last)
    assert counters.get("cmd_plan", 0) == plans


def test_nan_states_never_produce_nan_commands(recorded, checkpoints, context, tmp_path) -> None:
    src = recorded["dt"]["bag"]
    bad = {_state_times(src)[i] for i in (5, 6, 7, 12)}

    def poison(raw, msg, ts):
        if raw.topic != "/joint_states" or raw.timestamp_ns not in bad:
            return raw.timestamp_ns, raw.data
        msg.position = np.array(msg.position)
        msg.position[2] = np.nan
        return raw.timestamp_ns, bytes(ts.serialize_cdr(msg, raw.msgtype))

    bag = _rewrite(src, tmp_path / "nan", poison)
    h = Harness(context, load(checkpoints["dt"], "dt"))
    try:
        h.replay(bag)
        counters = dict(h.node.counters)
    finally:
        h.close()
    cmds = np.array([c for _, c in h.commands])
    expected = _distinct_states(bag) - len(bad)
    assert len(cmds) >= expected
    assert np.all(np.isfinite(cmds))
    assert counters.get("rejected_states", 0) == len(bad)
    assert counters.get("cmd_plan", 0) == expected


def test_record_episode_cli(checkpoints, tmp_path, capsys) -> None:
    """`seqplanner record --episode` end to end, loading the checkpoint the normal way, sqlite3 storage."""
    from ros_seqplanner.bags.reader import open_bag
    from ros_seqplanner.cli import main

    out = tmp_path / "cli_episode"
    rc = main(["record", str(out), "--episode", "--checkpoint", checkpoints["dt"], "--planner", "dt",
               "--steps", "6", "--seed", "2", "--storage", "sqlite3", "-p", "diagnostics_period_s:=0.05",
               # as in NODE_PARAMS: with the default 0.5 s, a stop > 0.5 s after the episode (a loaded CI
               # machine) also records the stale-state safe command
               "-p", "stale_timeout_s:=5.0"])
    assert rc == 0, capsys.readouterr().out
    with open_bag(out) as b:
        counts = {t: i.message_count for t, i in b.info.topics.items()}
        assert b.info.storage == "sqlite3" and b.info.custom_data["seed"] == "2"
        node_params = json.loads(b.info.custom_data["planner_params"])
    assert node_params["diagnostics_period_s"] == 0.05 and node_params["stale_timeout_s"] == 5.0  # both -p applied
    assert counts["/reward"] == 6 and counts[COMMANDS] == 7 and counts["/diagnostics"] >= 1
    assert "in 6 steps" in capsys.readouterr().out
    assert main(["record", str(tmp_path / "bad"), "--episode", "--checkpoint", str(tmp_path / "none")]) == 1
    assert not (tmp_path / "bad").exists()
