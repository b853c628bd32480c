"""The checkpoints shipped in ``models/`` load with their own settings, act sanely, have a card, and the
committed report is what ``seqplanner report`` makes from ``models/results``.

These guard the release, not the code: a TT checkpoint whose shipped planner horizon does not fit its
block, a result file naming a checkpoint that is not shipped, or a hand-edited RESULTS.md fail here.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from ros_seqplanner.policies.factory import POLICY_CLASSES, load_policy
from ros_seqplanner.sim.report import build_report

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


def _checkpoints() -> list[Path]:
    """Every ``models/**/<name>.json`` that has a ``<name>.safetensors`` beside it."""
    return sorted(js for js in MODELS.rglob("*.json") if js.with_suffix(".safetensors").is_file())


def _kind(js: Path) -> str:
    return str(json.loads(js.read_text())["kind"])


POLICIES = [js for js in _checkpoints() if _kind(js) in POLICY_CLASSES]


def test_models_dir_ships_every_policy_kind():
    assert {_kind(js) for js in POLICIES} == set(POLICY_CLASSES)


@pytest.mark.parametrize("js", _checkpoints(), ids=lambda p: str(p.relative_to(MODELS)))
def test_every_checkpoint_has_a_model_card(js):
    if js.parent == MODELS:  # one card per model, naming its files and its training command
        card = js.with_suffix(".md")
        assert card.is_file(), f"{js.name} has no model card {card.name}"
        text = card.read_text()
        assert f"{js.stem}.safetensors" in text and "seqplanner train" in text, f"{card.name} is incomplete"
    else:  # behaviour policies share one README with a results row each
        readme = js.parent / "README.md"
        assert readme.is_file() and f"| {js.stem} |" in readme.read_text(), f"{js.name} has no row in {readme}"


@pytest.mark.parametrize("js", POLICIES, ids=lambda p: str(p.relative_to(MODELS)))
def test_shipped_policy_loads_with_its_own_settings_and_acts(js):
    meta = json.loads(js.read_text())
    policy = load_policy(js.with_suffix(""))  # no options: what `seqplanner demo` / the node get
    env = gym.make(meta["env_id"])
    try:
        obs, _ = env.reset(seed=0)
        policy.reset()
        action = np.asarray(policy.act(obs.astype(np.float32), None))
    finally:
        env.close()
    assert action.shape == env.action_space.shape
    assert np.all(np.isfinite(action))
    assert np.all(action >= env.action_space.low - 1e-6) and np.all(action <= env.action_space.high + 1e-6)


def test_every_result_names_a_shipped_checkpoint():
    for res in sorted((MODELS / "results").glob("*.json")):
        data = json.loads(res.read_text())
        runs = data["results"] if data.get("pool") else [data]
        for run in runs:
            ck = run.get("checkpoint")
            if ck is None or str(data.get("checkpoint_choice", "")).startswith("intermediate"):  # snapshots
                continue
            assert not Path(ck).is_absolute(), f"{res.name}: checkpoint {ck} must be repo-relative"
            assert (REPO / f"{ck}.json").is_file(), f"{res.name} names {ck}, which is not in the repo"


def test_committed_report_is_regenerated_from_results(monkeypatch):
    monkeypatch.chdir(REPO)  # result files name checkpoints relative to the repo root, as `seqplanner report` runs
    committed = REPO / "docs" / "RESULTS.md"
    assert committed.read_text() == build_report(MODELS / "results", committed), (
        "docs/RESULTS.md is stale: run `seqplanner report --results models/results --out docs/RESULTS.md`")
