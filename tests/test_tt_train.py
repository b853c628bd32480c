"""TT training: loss goes down on a tiny system, checkpoints round-trip, resume is exact, bad files fail clearly."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from ros_seqplanner.cli import main as cli_main
from ros_seqplanner.nets.checkpoint import CheckpointError
from ros_seqplanner.nets.tokens import TrajectoryWindows
from ros_seqplanner.nets.tt import TrajectoryTransformer, load_tt, save_tt
from ros_seqplanner.training.tt import TTTrainConfig, toy_dataset, train_tt

TINY = dict(n_bins=10, max_transitions=4, n_layer=1, n_head=2, n_embd=32, batch_size=32, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tt") / "toy"
    ds = toy_dataset(n_episodes=8, length=40)
    cfg = TTTrainConfig(**TINY, max_steps=250, lr=1e-2, dropout=0.0, seed=1)
    return ds, cfg, train_tt(ds, cfg, out, command="pytest")


def _eval_loss(model, ds, disc, cfg) -> float:
    win = TrajectoryWindows(ds, disc, cfg.max_transitions, cfg.gamma, cfg.termination_penalty)
    x, y, mask = win.batch(np.arange(len(win)))
    with torch.no_grad():
        return float(model.eval()(x, y, mask)[1])


def test_training_drives_loss_well_below_start(trained):
    ds, cfg, path = trained
    model, disc, meta = load_tt(path)
    assert meta["step"] == 250 and meta["kind"] == "tt"
    fresh = TrajectoryTransformer(model.cfg)  # same architecture, untrained
    start, end = _eval_loss(fresh, ds, disc, cfg), _eval_loss(model, ds, disc, cfg)
    assert end < 0.5 * start, (start, end)
    assert meta["final_loss"] < 0.7 * meta["first_loss"]


def test_checkpoint_metadata_and_identical_logits(trained, tmp_path):
    _, cfg, path = trained
    model, disc, meta = load_tt(path)
    assert meta["gamma"] == cfg.gamma and meta["termination_penalty"] == -100.0
    assert meta["env_id"] == "Toy-v0" and meta["dataset_id"] == "toy-0"
    assert meta["obs_dim"] == 3 and meta["act_dim"] == 2 and meta["action_low"] == [-1.0, -1.0]
    assert meta["dataset_stats"]["episodes"] == 8 and meta["training_command"] == "pytest"
    assert meta["discretizer"]["strategy"] == "quantile" and len(meta["discretizer"]["edges"]) == 7
    x = torch.randint(0, 10, (2, 14)) + 10 * (torch.arange(14) % 7)
    again = save_tt(tmp_path / "copy", model, disc, {"note": 1})
    model2, disc2, meta2 = load_tt(again)
    assert torch.equal(model(x)[0], model2(x)[0]) and np.array_equal(disc.edges, disc2.edges)
    assert meta2["note"] == 1


def test_bad_checkpoints_give_clear_errors(trained, tmp_path):
    _, _, path = trained
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tt(tmp_path / "missing")
    base = tmp_path / "bad"
    for suffix in (".json", ".safetensors"):
        shutil.copy(path.with_suffix(suffix), base.with_suffix(suffix))
    data = base.with_suffix(".safetensors").read_bytes()
    base.with_suffix(".safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated|cannot be read"):
        load_tt(base)
    base.with_suffix(".safetensors").write_bytes(data)
    meta = json.loads(base.with_suffix(".json").read_text())
    meta["model_config"]["n_embd"] = 64
    base.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_tt(base)
    meta["kind"] = "dt"
    base.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="expected 'tt'"):
        load_tt(base)
    base.with_suffix(".json").write_text(path.with_suffix(".json").read_text()[:100])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_tt(base)


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    ds = toy_dataset(n_episodes=4, length=20, seed=3)
    cfg = TTTrainConfig(**TINY, max_steps=6, seed=5)  # dropout 0.1 on: RNG state must be restored too
    full = train_tt(ds, cfg, tmp_path / "full")
    half = train_tt(ds, TTTrainConfig(**TINY, max_steps=6, seed=5, stop_at_step=3), tmp_path / "half")
    assert load_tt(half)[2]["step"] == 3
    resumed = train_tt(ds, cfg, tmp_path / "resumed", resume=half)
    a = load_tt(full)[0]
    b, _, mb = load_tt(resumed)
    assert mb["step"] == 6
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6, msg=name)
    with pytest.raises(CheckpointError, match="differs"):
        train_tt(ds, TTTrainConfig(**{**TINY, "n_embd": 64}, max_steps=6), tmp_path / "x", resume=half)


def test_init_from_fine_tunes_a_checkpoint_without_its_training_state(trained, tmp_path):
    ds, cfg, path = trained
    src, sdisc, _ = load_tt(path)
    shipped = tmp_path / "shipped"  # weights + JSON only, as in models/
    for suffix in (".safetensors", ".json"):
        shutil.copy(path.with_suffix(suffix), shipped.with_suffix(suffix))
    with pytest.raises(CheckpointError, match="does not exist"):
        train_tt(ds, cfg, tmp_path / "r", resume=shipped)
    # a near-zero learning rate keeps the source's weights: they were loaded, not re-initialised
    still = TTTrainConfig(**{**TINY, "lr": 1e-12, "dropout": 0.0}, max_steps=2, seed=9)
    model, disc, meta = load_tt(train_tt(ds, still, tmp_path / "ft0", init_from=shipped))
    assert meta["step"] == 2 and meta["total_steps"] == 2  # a new run: step 0 and this config's schedule
    assert meta["init_from"] == {"checkpoint": str(shipped), "step": 250, "training_command": "pytest"}
    assert np.array_equal(disc.edges, sdisc.edges)
    for (name, pa), pb in zip(src.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6, msg=name)
    # a fresh run with the same seed starts elsewhere, and fine-tuning from the trained weights starts lower
    fresh = load_tt(train_tt(ds, still, tmp_path / "fresh"))[0]
    assert any(not torch.allclose(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    assert _eval_loss(model, ds, disc, cfg) < _eval_loss(fresh, ds, disc, cfg) - 0.5
    # a fine-tuning run stopped and resumed keeps its origin
    two = {**TINY, "lr": 1e-3, "dropout": 0.0, "max_steps": 2}
    part = train_tt(ds, TTTrainConfig(**two, stop_at_step=1), tmp_path / "part", init_from=shipped)
    rest = train_tt(ds, TTTrainConfig(**two), tmp_path / "rest", resume=part)
    assert load_tt(rest)[2]["init_from"]["checkpoint"] == str(shipped)
    with pytest.raises(CheckpointError, match=r"cannot fine-tune from .*differs"):
        train_tt(ds, TTTrainConfig(**{**TINY, "n_embd": 64}, max_steps=2), tmp_path / "x", init_from=shipped)
    with pytest.raises(ValueError, match="exclusive"):
        train_tt(ds, still, tmp_path / "y", resume=path, init_from=shipped)


def test_checkpoints_ship_the_planner_settings_given_at_training(tmp_path):
    from ros_seqplanner.policies.tt import TTPolicy

    ds = toy_dataset(n_episodes=4, length=20, seed=3)
    cfg = TTTrainConfig(**TINY, max_steps=4, seed=5)
    half = train_tt(ds, TTTrainConfig(**TINY, max_steps=4, seed=5, stop_at_step=2), tmp_path / "half",
                    planner={"horizon": 3, "beam_width": 4, "discount": 1})
    assert load_tt(half)[2]["planner"] == {"horizon": 3, "beam_width": 4, "discount": 1.0}
    pol = TTPolicy.from_checkpoint(half)
    assert (pol.config.horizon, pol.config.beam_width, pol.config.discount) == (3, 4, 1.0)
    assert np.all(np.isfinite(pol.act(ds.episodes[0].observations[0], None)))
    # a resumed run keeps them unless told otherwise
    assert load_tt(train_tt(ds, cfg, tmp_path / "kept", resume=half))[2]["planner"]["horizon"] == 3
    assert load_tt(train_tt(ds, cfg, tmp_path / "new", resume=half, planner={"horizon": 2}))[2]["planner"] == {
        "horizon": 2}
    # without settings nothing is shipped; a horizon longer than the block (4) is shipped and plans
    plain = train_tt(ds, TTTrainConfig(**TINY, max_steps=1), tmp_path / "plain")
    assert "planner" not in load_tt(plain)[2]
    long = train_tt(ds, TTTrainConfig(**TINY, max_steps=1), tmp_path / "long", planner={"horizon": 6, "beam_width": 2})
    pol = TTPolicy.from_checkpoint(long)
    assert pol.planner.reencode and np.all(np.isfinite(pol.act(ds.episodes[0].observations[0], None)))
    assert pol.last_plan.actions.shape[0] == 6
    for bad, why in (({"horizon": 0}, "horizon must be >= 1"),
                     ({"beam": 3}, r"--planner: unknown \['beam'\]"), ({"horizon": 2.5}, "horizon must be int")):
        with pytest.raises(ValueError, match=why):
            train_tt(ds, cfg, tmp_path / "bad", planner=bad)
        assert not (tmp_path / "bad.json").exists()


def test_cli_trains_from_a_d4rl_hdf5_file(tmp_path, capsys):
    ds = toy_dataset(n_episodes=3, length=12, seed=4)
    flat = ds.to_flat()
    with h5py.File(tmp_path / "toy.hdf5", "w") as f:
        for k, v in flat.items():
            f.create_dataset(k, data=v)
    rc = cli_main(["train", "tt", "--dataset", str(tmp_path / "toy.hdf5"), "--out", str(tmp_path / "m"),
                   "--steps", "2", "--batch-size", "4", "--n-bins", "8", "--max-transitions", "3",
                   "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--no-progress", "--env-id", "Toy-v0"])
    assert rc == 0
    _, disc, meta = load_tt(tmp_path / "m")
    assert meta["env_id"] == "Toy-v0" and meta["step"] == 2 and disc.n_bins == 8
    assert meta["dataset_stats"]["terminated"] == 1 and meta["dataset_stats"]["transitions"] == ds.num_transitions
    assert cli_main(["train", "tt", "--dataset", str(tmp_path / "nope.hdf5"), "--out", str(tmp_path / "m2")]) == 2
    assert "planner" not in meta
    args = ["train", "tt", "--dataset", str(tmp_path / "toy.hdf5"), "--out", str(tmp_path / "p"), "--steps", "1",
            "--batch-size", "4", "--n-bins", "8", "--max-transitions", "3", "--n-layer", "1", "--n-embd", "16",
            "--n-head", "2", "--no-progress"]
    assert cli_main([*args, "--planner", "horizon=2", "--planner", "cdf_act=null", "--planner", "mode=imitation"]) == 0
    assert load_tt(tmp_path / "p")[2]["planner"] == {"horizon": 2, "cdf_act": None, "mode": "imitation"}
    capsys.readouterr()
    assert cli_main([*args, "--out", str(tmp_path / "q"), "--planner", "mode=walk"]) == 2
    assert "--planner: mode must be one of" in capsys.readouterr().err and not (tmp_path / "q.json").exists()
    with pytest.raises(SystemExit):
        cli_main([*args, "--planner", "horizon"])


def test_goal_conditioned_training_and_checkpoint(tmp_path):
    ds = toy_dataset(n_episodes=3, length=10, seed=7)
    cfg = TTTrainConfig(**TINY, max_steps=3, goal_conditioned=True)
    model, disc, meta = load_tt(train_tt(ds, cfg, tmp_path / "goal"))
    assert model.cfg.goal_conditioned and model.goal_pos_emb.shape == (3, 32)
    assert meta["train_config"]["goal_conditioned"] is True and np.isfinite(meta["final_loss"])
    goal = torch.as_tensor(disc.encode_dims(ds.episodes[0].final_observation[None].astype(np.float64), 0, 3)) \
        + 10 * torch.arange(3)
    toks = torch.randint(0, 10, (1, 9)) + 10 * (torch.arange(9) % 7)
    prefix = model.prefill(toks[:, :4], goal=goal)
    cache = model.new_cache(1, 5)
    torch.testing.assert_close(model.decode_many(toks[:, 4:], prefix, cache), model(toks, goal=goal)[0][:, 4:],
                               rtol=0, atol=1e-5)


def test_termination_starts_cover_exactly_the_windows_that_hold_a_fall():
    from ros_seqplanner.nets.tokens import fit_discretizer

    ds = toy_dataset(n_episodes=6, length=12, seed=2, terminate_fraction=0.5)
    m = 4
    win = TrajectoryWindows(ds, fit_discretizer(ds, 8), m)
    expect, row = [], 0
    for ep in ds:
        n = len(ep.actions)
        if ep.terminated:  # windows [s, s + m) that contain the terminal row, s inside the episode
            expect += list(range(row + max(0, n - m), row + n))
        row += n
    assert win.termination_starts().tolist() == expect and len(expect) == 3 * m
    # each such window ends with the STOP target of a termination
    _, y, mask = win.batch(win.termination_starts())
    assert bool(((y == win.stop_token) & (mask > 0)).any(dim=1).all())


def test_fall_sampling_is_deterministic_and_leaves_the_uniform_draw_alone():
    from ros_seqplanner.training.tt import sample_starts

    falls = np.array([3, 4, 5])
    plain = sample_starts(1000, 64, seed=1, step=7, rank=0)
    assert np.array_equal(plain, np.random.default_rng([1, 7, 0]).integers(0, 1000, 64))  # unchanged by the option
    assert np.array_equal(sample_starts(1000, 64, 1, 7, 0, falls, 0.0), plain)
    mixed = sample_starts(1000, 4096, 1, 7, 0, falls, 0.25)
    assert np.array_equal(mixed, sample_starts(1000, 4096, 1, 7, 0, falls, 0.25))  # a resumed run redraws it
    share = np.isin(mixed, falls).mean()
    assert 0.22 < share < 0.28  # 25 % redrawn, plus the uniform draw's rare hits (3 / 1000)
    with pytest.raises(ValueError, match="fall_fraction"):
        TTTrainConfig(fall_fraction=1.0)


def test_fall_oversampling_teaches_the_value_before_a_rare_fall(tmp_path, capsys):
    from ros_seqplanner.training.token_loss import value_fit

    ds = toy_dataset(n_episodes=40, length=40, seed=1, terminate_fraction=0.05)  # 2 falls in 40 episodes
    fits = {}
    for f in (0.0, 0.25):
        cfg = TTTrainConfig(**{**TINY, "max_steps": 200, "dropout": 0.0, "lr": 1e-2, "seed": 1, "fall_fraction": f})
        path = train_tt(ds, cfg, tmp_path / f"f{f}", planner={"horizon": 2})
        assert load_tt(path)[2]["train_config"]["fall_fraction"] == f
        fits[f] = value_fit(*load_tt(path)[:2], ds, gamma=0.99, termination_penalty=-100.0, windows=64)
    target = fits[0.0].fall_target
    assert fits[0.0].falls == 2 and target < fits[0.0].mean_target - 30
    # Sampled uniformly, the windows before the two falls are rare and the value prediction there stays near
    # the data mean; oversampled, it learns them.
    assert abs(fits[0.25].fall_predicted - target) < 0.3 * abs(fits[0.0].fall_predicted - target), fits
    never = toy_dataset(n_episodes=3, length=10, seed=2, terminate_fraction=0.0)
    with pytest.raises(ValueError, match="needs terminated episodes"):
        train_tt(never, TTTrainConfig(**TINY, max_steps=1, fall_fraction=0.1), tmp_path / "never",
                 planner={"horizon": 2})
    assert cli_main(["train", "tt", "--dataset", str(tmp_path / "missing.hdf5"), "--out", str(tmp_path / "c"),
                     "--fall-fraction", "1.5"]) == 2
    assert "fall_fraction must be in [0, 1)" in capsys.readouterr().err


def _aliased_start_dataset(n_episodes: int = 16, length: int = 120, seed: int = 0):
    """Half the episodes 'run' (reward 1 per step after a distinctive first action +0.9), half stay 'stuck'
    (reward 0). Both start at rest, and a stuck episode stays at rest, so a state at rest is almost always a
    stuck one: only the first transition of a running episode says otherwise (a replay buffer's shape)."""
    from ros_seqplanner.data.episodes import Episode, EpisodeDataset

    rng = np.random.default_rng(seed)
    eps = []
    for i in range(n_episodes):
        run = i % 2 == 0
        obs = rng.normal(0.0, 0.05, (length, 1))
        if run:
            obs[1:] += 1.0
        act = rng.uniform(-1.0, 0.0, (length, 1))
        if run:
            act[0] = 0.9
        rew = np.where(np.arange(length) >= 1, 1.0, 0.0) if run else np.zeros(length)
        eps.append(Episode(obs, act, rew, truncated=True))
    return EpisodeDataset(eps, dataset_id="aliased-starts")


def test_episode_starts_and_start_sampling():
    from ros_seqplanner.nets.tokens import fit_discretizer
    from ros_seqplanner.training.tt import sample_starts

    ds = toy_dataset(n_episodes=5, length=9, seed=3, terminate_fraction=0.4)
    win = TrajectoryWindows(ds, fit_discretizer(ds, 8), 3)
    firsts = np.r_[0, np.cumsum([len(ep.actions) for ep in ds])[:-1]]
    assert win.episode_starts().tolist() == firsts.tolist()
    falls, heads = np.array([3, 4, 5]), np.array([0, 500])
    fall_only = sample_starts(1000, 4096, 1, 7, 0, falls, 0.25)
    # the start pool leaves a fall-only run's batches exactly as they were
    assert np.array_equal(sample_starts(1000, 4096, 1, 7, 0, falls, 0.25, heads, 0.0), fall_only)
    both = sample_starts(1000, 4096, 1, 7, 0, falls, 0.25, heads, 0.2)
    assert np.array_equal(both, sample_starts(1000, 4096, 1, 7, 0, falls, 0.25, heads, 0.2))
    assert 0.22 < np.isin(both, falls).mean() < 0.28 and 0.17 < np.isin(both, heads).mean() < 0.23
    only = sample_starts(1000, 4096, 1, 7, 0, None, 0.0, heads, 0.3)
    assert 0.27 < np.isin(only, heads).mean() < 0.33
    for kw, msg in (({"start_fraction": 1.0}, "start_fraction must be"),
                    ({"fall_fraction": 0.5, "start_fraction": 0.5}, "fall_fraction \\+ start_fraction")):
        with pytest.raises(ValueError, match=msg):
            TTTrainConfig(**kw)


def test_start_oversampling_teaches_the_value_of_the_initial_state(tmp_path, capsys):
    from ros_seqplanner.training.token_loss import value_fit

    ds = _aliased_start_dataset()
    fits = {}
    for f in (0.0, 0.25):
        cfg = TTTrainConfig(**{**TINY, "max_steps": 200, "dropout": 0.0, "lr": 1e-2, "seed": 1, "start_fraction": f})
        path = train_tt(ds, cfg, tmp_path / f"s{f}", planner={"horizon": 2})
        model, disc, meta = load_tt(path)
        assert meta["train_config"]["start_fraction"] == f
        fits[f] = value_fit(model, disc, ds, gamma=0.99, termination_penalty=-100.0, windows=64)
    assert fits[0.0].starts == 16 and fits[0.0].start_target > 25  # half the starts are worth ~70, half 0
    errors = {f: v.start_error for f, v in fits.items()}
    # Sampled uniformly, a state at rest is nearly always a stuck one (value 0), so the initial state of a
    # running episode is rated low; oversampling the episode starts teaches its value.
    assert errors[0.25] < 0.4 * errors[0.0], errors
    assert cli_main(["train", "tt", "--dataset", str(tmp_path / "missing.hdf5"), "--out", str(tmp_path / "c"),
                     "--start-fraction", "1.5"]) == 2
    assert "start_fraction must be in [0, 1)" in capsys.readouterr().err
