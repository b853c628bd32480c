"""Bag -> :class:`~ros_seqplanner.data.episodes.EpisodeDataset`: learn from a robot's logs.

Alignment (all times are the bag's receive timestamps):

- each command (action) message at time ``t_c`` is paired with the latest observation received at
  or before ``t_c`` and with the first reward received after ``t_c`` and no later than the next
  command (a command with no such observation or reward is dropped and counted);
- the observation reached after the last command of an episode (the first one after it, before the
  episode boundary) becomes ``final_observation``;
- episodes are cut at episode events (a message on ``episode_topic``: its text containing
  ``terminated`` marks a true termination, anything else a truncation) and at gaps longer than
  ``gap_s`` between consecutive commands (a truncation: the log was cut).

Message -> vector: ``std_msgs`` Float64/Float32(MultiArray) give their data; a
``sensor_msgs/JointState`` needs ``joint_layout`` (entries ``pos:<joint>`` / ``vel:<joint>``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ros_seqplanner.bags.reader import BagError, open_bag
from ros_seqplanner.data.episodes import Episode, EpisodeDataset

# The topic layout the sim bridge publishes (see ros_seqplanner/nodes/sim_bridge_node.py).
DEFAULT_OBS_TOPIC = "/observation"
DEFAULT_REWARD_TOPIC = "/reward"
DEFAULT_ACTION_TOPIC = "/forward_command_controller/commands"
DEFAULT_EPISODE_TOPIC = "/episode_events"

_ARRAY_TYPES = {"std_msgs/msg/Float64MultiArray", "std_msgs/msg/Float32MultiArray"}
_SCALAR_TYPES = {"std_msgs/msg/Float64", "std_msgs/msg/Float32"}


@dataclass
class AlignmentReport:
    """What the conversion did: counts of used and dropped messages, episode cuts."""

    commands: int = 0
    transitions: int = 0
    dropped_no_observation: int = 0
    dropped_no_reward: int = 0
    episodes: int = 0
    cuts_by_event: int = 0
    cuts_by_gap: int = 0
    notes: list[str] = field(default_factory=list)


def message_vector(msg: Any, msgtype: str, joint_layout: Sequence[str] | None = None) -> np.ndarray:
    """A 1-D float64 vector from a supported message (see module doc); raises BagError otherwise."""
    if msgtype in _ARRAY_TYPES:
        return np.asarray(msg.data, dtype=np.float64).reshape(-1)
    if msgtype in _SCALAR_TYPES:
        return np.array([msg.data], dtype=np.float64)
    if msgtype == "sensor_msgs/msg/JointState":
        if not joint_layout:
            raise BagError("a sensor_msgs/JointState topic needs a joint layout (entries 'pos:<joint>'/'vel:<joint>')")
        index = {n: i for i, n in enumerate(msg.name)}
        out = []
        for entry in joint_layout:
            kind, _, joint = entry.partition(":")
            if joint not in index or kind not in ("pos", "vel"):
                raise BagError(f"joint layout entry {entry!r} not usable with joints {list(msg.name)}")
            values = msg.position if kind == "pos" else msg.velocity
            out.append(values[index[joint]])
        return np.asarray(out, dtype=np.float64)
    raise BagError(f"cannot turn {msgtype} into a vector; supported: {sorted(_ARRAY_TYPES | _SCALAR_TYPES)} "
                   "and sensor_msgs/msg/JointState (with a joint layout)")


def _event_kind(msg: Any) -> str:
    """'terminated' | 'truncated' (an episode ended) or 'reset' (one starts) from a std_msgs/String event.

    The bridge sends JSON ``{"event": "reset"|"episode_end", "terminated": ..}``; plain text works too.
    """
    text = str(getattr(msg, "data", "") or "")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        if doc.get("event") == "reset":
            return "reset"
        return "terminated" if doc.get("terminated") is True else "truncated"
    low = text.strip().lower()
    return "reset" if low == "reset" else "terminated" if "terminated" in low else "truncated"


def _read_streams(bag_path: str | Path, topics: dict[str, str | None], joint_layout: Sequence[str] | None
                  ) -> dict[str, tuple[np.ndarray, list[Any]]]:
    """{role: (timestamps int64, values)} for each role -> topic (None topics are skipped)."""
    wanted = {t: role for role, t in topics.items() if t}
    out: dict[str, tuple[list[int], list[Any]]] = {role: ([], []) for role in topics}
    with open_bag(bag_path) as bag:
        missing = [t for t in wanted if t not in bag.info.topics and topics.get("episode") != t]
        if missing:
            raise BagError(f"{bag_path}: topics {missing} not in the bag; it has {sorted(bag.info.topics)}")
        present = [t for t in wanted if t in bag.info.topics]
        for raw, msg in bag.messages(present):
            role = wanted[raw.topic]
            ts, vals = out[role]
            ts.append(raw.timestamp_ns)
            vals.append(_event_kind(msg) if role == "episode" else message_vector(msg, raw.msgtype, joint_layout))
    return {role: (np.asarray(ts, dtype=np.int64), vals) for role, (ts, vals) in out.items()}


def _segments(act_ts: np.ndarray, events: tuple[np.ndarray, list[str]], gap_ns: int | None,
              report: AlignmentReport) -> list[tuple[int, int, int, str]]:
    """Episodes as command index ranges ``(i0, i1, t_end, kind)``: commands [i0, i1), messages after
    ``t_end`` belong to the next episode, ``kind`` 'terminated' or 'truncated'.

    An event at time t cuts before the first command after t. Several events at one cut (the bridge
    sends 'episode_end' then 'reset') merge: the earliest time, 'terminated' if any said so.
    """
    n = len(act_ts)
    cuts: dict[int, list[Any]] = {}  # first command index of the next episode -> [time, kind]
    ev_ts, ev_kind = events
    for t, kind in zip(ev_ts, ev_kind):
        i = int(np.searchsorted(act_ts, t, side="right"))
        if i == 0:
            continue  # before the first command: nothing to end
        cut = cuts.setdefault(i, [int(t), "truncated"])
        cut[0] = min(cut[0], int(t))
        if kind == "terminated":
            cut[1] = "terminated"
    report.cuts_by_event = sum(1 for i in cuts if i < n)
    if gap_ns:
        for i in np.flatnonzero(np.diff(act_ts) > gap_ns) + 1:
            if int(i) not in cuts:
                cuts[int(i)] = [int(act_ts[i - 1]) + gap_ns, "truncated"]
                report.cuts_by_gap += 1
    bounds, start = [], 0
    for i in sorted(c for c in cuts if c < n):
        bounds.append((start, i, cuts[i][0], cuts[i][1]))
        start = i
    end_kind = cuts[n][1] if n in cuts else "truncated"  # events after the last command end the last episode
    bounds.append((start, n, int(cuts[n][0]) if n in cuts else np.iinfo(np.int64).max, end_kind))
    return [b for b in bounds if b[1] > b[0]]


def bag_to_dataset(bag_path: str | Path, *, obs_topic: str = DEFAULT_OBS_TOPIC,
                   action_topic: str = DEFAULT_ACTION_TOPIC, reward_topic: str = DEFAULT_REWARD_TOPIC,
                   episode_topic: str | None = DEFAULT_EPISODE_TOPIC, gap_s: float | None = 1.0,
                   joint_layout: Sequence[str] | None = None, env_id: str = "", dataset_id: str = "",
                   action_low: np.ndarray | None = None, action_high: np.ndarray | None = None,
                   ) -> tuple[EpisodeDataset, AlignmentReport]:
    """Align a bag's observation, command and reward topics into episodes (see module doc).

    ``episode_topic`` may be absent from the bag (then only gaps cut episodes); ``gap_s`` None or 0
    disables gap cuts. Raises BagError when no transition can be formed.
    """
    report = AlignmentReport()
    s = _read_streams(bag_path, {"obs": obs_topic, "act": action_topic, "rew": reward_topic,
                                 "episode": episode_topic}, joint_layout)
    obs_ts, obs_v = s["obs"]
    act_ts, act_v = s["act"]
    rew_ts, rew_v = s["rew"]
    report.commands = len(act_ts)
    if not len(act_ts):
        raise BagError(f"{bag_path}: no messages on the action topic {action_topic}")
    gap_ns = int(gap_s * 1e9) if gap_s else None
    episodes = []
    for i0, i1, t_end, kind in _segments(act_ts, s["episode"], gap_ns, report):
        t_start = int(act_ts[i0 - 1]) if i0 > 0 else np.iinfo(np.int64).min
        obs_rows, act_rows, rew_rows, last_t = [], [], [], None
        for i in range(i0, i1):
            t_c = int(act_ts[i])
            j = int(np.searchsorted(obs_ts, t_c, side="right")) - 1
            if j < 0 or obs_ts[j] <= t_start:  # no observation inside this episode before the command
                report.dropped_no_observation += 1
                continue
            t_next = int(act_ts[i + 1]) if i + 1 < i1 else t_end
            k = int(np.searchsorted(rew_ts, t_c, side="right"))
            if k >= len(rew_ts) or rew_ts[k] > t_next:
                report.dropped_no_reward += 1
                continue
            obs_rows.append(obs_v[j])
            act_rows.append(act_v[i])
            rew_rows.append(float(rew_v[k][0]))
            last_t = t_c
        if not obs_rows:
            continue
        j = int(np.searchsorted(obs_ts, last_t, side="right"))
        final = obs_v[j] if j < len(obs_ts) and obs_ts[j] <= t_end else None
        episodes.append(Episode(
            observations=np.stack(obs_rows), actions=np.stack(act_rows), rewards=np.asarray(rew_rows),
            terminated=kind == "terminated", truncated=kind != "terminated", final_observation=final,
        ))
    report.transitions = sum(len(e) for e in episodes)
    report.episodes = len(episodes)
    if not episodes:
        raise BagError(f"{bag_path}: no transition could be aligned ({report})")
    meta = {"source_bag": str(bag_path), "obs_topic": obs_topic, "action_topic": action_topic,
            "reward_topic": reward_topic, "episode_topic": episode_topic or "", "gap_s": gap_s or 0.0}
    ds = EpisodeDataset(episodes=episodes, env_id=env_id, dataset_id=dataset_id or f"bag:{Path(bag_path).name}",
                        action_low=action_low, action_high=action_high, metadata=meta)
    return ds, report


def dataset_to_bag(dataset: EpisodeDataset, bag_path: str | Path, *, dt: float = 0.05, storage: str = "mcap",
                   start_ns: int = 1_700_000_000_000_000_000, command_delay_s: float = 0.002,
                   obs_topic: str = DEFAULT_OBS_TOPIC, action_topic: str = DEFAULT_ACTION_TOPIC,
                   reward_topic: str = DEFAULT_REWARD_TOPIC, episode_topic: str = DEFAULT_EPISODE_TOPIC,
                   episode_pause_s: float = 0.1) -> Path:
    """Write episodes as the lockstep sim bridge and planner would have published them.

    Per episode: ``reset`` event, observation s_0; per step t: command a_t ``command_delay_s`` after s_t,
    then reward r_t and s_{t+1} one ``dt`` after s_t; finally an ``episode_end`` event with
    terminated/truncated. Lets replay and bag2dataset be tested on a known dataset.
    """
    from ros_seqplanner.bags.writer import BagWriter, default_qos

    with BagWriter(bag_path, storage=storage) as w:
        w.add_topic(obs_topic, "std_msgs/msg/Float64MultiArray", offered_qos=[default_qos(1, reliable=False)])
        w.add_topic(action_topic, "std_msgs/msg/Float64MultiArray", offered_qos=[default_qos(1)])
        w.add_topic(reward_topic, "std_msgs/msg/Float64")
        w.add_topic(episode_topic, "std_msgs/msg/String")
        types = w.typestore.types
        layout = types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)

        def array(values: np.ndarray) -> Any:
            return types["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.asarray(values, np.float64))

        def event(t: int, **payload: Any) -> None:
            w.write_message(episode_topic, t, types["std_msgs/msg/String"](data=json.dumps(payload)))

        t = int(start_ns)
        step_ns, delay_ns = int(dt * 1e9), int(command_delay_s * 1e9)
        for k, ep in enumerate(dataset.episodes):
            event(t, event="reset", episode=k)
            w.write_message(obs_topic, t + 1, array(ep.observations[0]))
            nxt = ep.next_observations()
            for i in range(len(ep)):
                w.write_message(action_topic, t + delay_ns, array(ep.actions[i]))
                t += step_ns
                w.write_message(reward_topic, t, types["std_msgs/msg/Float64"](data=float(ep.rewards[i])))
                w.write_message(obs_topic, t + 1, array(nxt[i]))
            event(t + 2, event="episode_end", episode=k, terminated=bool(ep.terminated),
                  truncated=not ep.terminated, length=len(ep))
            t += int(episode_pause_s * 1e9)
    return Path(bag_path)
