"""Bags as training data: time alignment, episode cuts, and the bag2dataset command (ROS-free)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ros_seqplanner.bags.reader import BagError, open_bag
from ros_seqplanner.bags.to_dataset import bag_to_dataset, dataset_to_bag
from ros_seqplanner.bags.writer import BagWriter
from ros_seqplanner.data.episodes import Episode, EpisodeDataset


def _rollout(env_name: str, seed: int, max_steps: int) -> Episode:
    """One in-process episode with seeded random actions (float64, as a bridge receives them)."""
    from ros_seqplanner.sim.envs import make_env

    env = make_env(env_name, seed=seed)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    rows = {"o": [], "a": [], "r": []}
    terminated = False
    for _ in range(max_steps):
        a = rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32).astype(np.float64)
        rows["o"].append(obs)
        rows["a"].append(a)
        obs, r, terminated, _, _ = env.step(a)
        rows["r"].append(r)
        if terminated:
            break
    env.close()
    return Episode(np.array(rows["o"]), np.array(rows["a"]), np.array(rows["r"]), terminated=bool(terminated),
                   truncated=not terminated, final_observation=obs)


def assert_same_dataset(a: EpisodeDataset, b: EpisodeDataset) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in ("observations", "actions", "rewards", "final_observation"):
            np.testing.assert_array_equal(getattr(x, key), getattr(y, key), err_msg=key)
        assert (x.terminated, x.truncated) == (y.terminated, y.truncated)


@pytest.fixture(scope="module")
def hopper_dataset(tmp_path_factory) -> EpisodeDataset:
    # seed 0 falls (terminates) within 60 steps; seed 1 is cut at 12 steps (truncated)
    with pytest.MonkeyPatch.context() as mp:  # module scope runs before conftest's chdir: MuJoCo logs to cwd
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        eps = [_rollout("hopper", 0, 60), _rollout("hopper", 1, 12)]
    assert eps[0].terminated and eps[1].truncated
    return EpisodeDataset(eps, env_id="Hopper-v5")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_of_episodes_converts_back_to_the_same_dataset(tmp_path: Path, hopper_dataset, storage) -> None:
    bag = dataset_to_bag(hopper_dataset, tmp_path / "bag", storage=storage)
    ds, report = bag_to_dataset(bag, env_id="Hopper-v5")
    assert_same_dataset(ds, hopper_dataset)
    assert report.cuts_by_event == 1 and report.dropped_no_reward == 0 and report.dropped_no_observation == 0


def test_without_events_episodes_are_cut_at_time_gaps(tmp_path: Path, hopper_dataset) -> None:
    bag = dataset_to_bag(hopper_dataset, tmp_path / "bag", episode_topic="/unused_events", episode_pause_s=3.0)
    ds, report = bag_to_dataset(bag, episode_topic="/not_recorded", gap_s=1.0)
    assert report.cuts_by_gap == 1 and len(ds) == 2
    # gaps cannot tell a fall from a cut log: both episodes are truncated, data otherwise equal
    for got, want in zip(ds, hopper_dataset):
        np.testing.assert_array_equal(got.observations, want.observations)
        assert got.truncated and not got.terminated
    one, _ = bag_to_dataset(bag, episode_topic="/not_recorded", gap_s=None)
    assert len(one) == 1 and len(one.episodes[0]) == hopper_dataset.num_transitions


def test_commands_without_reward_or_observation_are_dropped(tmp_path: Path) -> None:
    """obs, cmd, reward, obs, cmd (no reward), obs, cmd, reward: the middle command is dropped."""
    with BagWriter(tmp_path / "bag") as w:
        w.add_topic("/observation", "std_msgs/msg/Float64MultiArray")
        w.add_topic("/forward_command_controller/commands", "std_msgs/msg/Float64MultiArray")
        w.add_topic("/reward", "std_msgs/msg/Float64")
        T = w.typestore.types
        lay = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
        arr = lambda v: T["std_msgs/msg/Float64MultiArray"](layout=lay, data=np.array(v, float))  # noqa: E731
        w.write_message("/forward_command_controller/commands", 5, arr([9.0]))  # before any observation
        for k, t in enumerate((10, 20, 30)):
            w.write_message("/observation", t, arr([k, k]))
            w.write_message("/forward_command_controller/commands", t + 1, arr([k / 10]))
            if k != 1:
                w.write_message("/reward", t + 2, T["std_msgs/msg/Float64"](data=float(k)))
    ds, report = bag_to_dataset(tmp_path / "bag", episode_topic=None, gap_s=None)
    assert (report.commands, report.transitions) == (4, 2)
    assert (report.dropped_no_observation, report.dropped_no_reward) == (1, 1)
    ep = ds.episodes[0]
    np.testing.assert_array_equal(ep.observations, [[0, 0], [2, 2]])
    np.testing.assert_array_equal(ep.rewards, [0.0, 2.0])


def test_unusable_topics_give_clear_errors(tmp_path: Path, hopper_dataset) -> None:
    bag = dataset_to_bag(hopper_dataset, tmp_path / "bag")
    with pytest.raises(BagError, match="not in the bag"):
        bag_to_dataset(bag, obs_topic="/joint_states")
    with pytest.raises(BagError, match="cannot turn std_msgs/msg/String into a vector"):
        bag_to_dataset(bag, reward_topic="/episode_events", episode_topic=None)


def test_bag2dataset_cli_writes_hdf5_the_trainers_load(tmp_path: Path, hopper_dataset) -> None:
    from ros_seqplanner.cli import main
    from ros_seqplanner.data.loading import load_dataset

    bag = dataset_to_bag(hopper_dataset, tmp_path / "bag", storage="sqlite3")
    # also works from the single storage file, without metadata.yaml
    (storage_file,) = [p for p in bag.iterdir() if p.suffix == ".db3"]
    alone = storage_file.rename(tmp_path / storage_file.name)
    with open_bag(alone) as b:
        assert not b.info.has_metadata
    out = tmp_path / "from_bag.hdf5"
    assert main(["bag2dataset", str(alone), "--out", str(out), "--env", "Hopper-v5"]) == 0
    loaded = load_dataset(out)
    assert loaded.env_id == "Hopper-v5"
    for got, want in zip(loaded, hopper_dataset):
        np.testing.assert_array_equal(got.observations, want.observations)
        np.testing.assert_array_equal(got.actions, want.actions)
        np.testing.assert_array_equal(got.rewards, want.rewards)
        assert got.terminated == want.terminated
    assert main(["bag2dataset", str(tmp_path / "missing"), "--out", str(tmp_path / "x.hdf5")]) == 1


def test_bag2dataset_cli_writes_a_minari_dataset(tmp_path: Path, hopper_dataset) -> None:
    from ros_seqplanner.cli import main
    from ros_seqplanner.data.minari_io import load_minari

    bag = dataset_to_bag(hopper_dataset, tmp_path / "bag")
    args = ["bag2dataset", str(bag), "--out", "bags/hopper-log-v0", "--data-dir", str(tmp_path / "minari")]
    assert main(args) == 2  # Minari needs the env id for its spaces
    assert main([*args, "--env", "Hopper-v5"]) == 0
    loaded = load_minari("bags/hopper-log-v0", data_dir=tmp_path / "minari")
    assert [len(e) for e in loaded] == [len(e) for e in hopper_dataset]
    for got, want in zip(loaded, hopper_dataset):
        np.testing.assert_array_equal(got.actions, want.actions)
        np.testing.assert_array_equal(got.final_observation, want.final_observation)
        assert (got.terminated, got.truncated) == (want.terminated, want.truncated)
