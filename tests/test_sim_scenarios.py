"""sim/*.yaml scenario files agree with the live envs; malformed files give clear errors."""

from __future__ import annotations

import pytest

from ros_seqplanner.sim.scenarios import ScenarioError, check_scenario, load_scenario, scenario_dir


@pytest.mark.parametrize("name,obs,act,dt", [("halfcheetah", 17, 6, 0.05), ("hopper", 11, 3, 0.008),
                                             ("walker2d", 17, 6, 0.008)])
def test_scenario_matches_env(name, obs, act, dt):
    sc = load_scenario(name)
    assert (sc.obs_dim, sc.act_dim) == (obs, act) and sc.dt == pytest.approx(dt)
    assert check_scenario(sc) == []
    assert len(sc.observation_names()) == obs
    assert set(sc.velocity_indices()) == set(sc.joints)  # every joint velocity is observed
    assert "rootx" not in sc.position_indices()  # the x position is excluded by default


def test_scenario_by_path_and_errors(tmp_path):
    assert load_scenario(scenario_dir() / "hopper.yaml").env_id == "Hopper-v5"
    text = (scenario_dir() / "hopper.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("obs_dim: 11", "obs_dim: 12"))
    with pytest.raises(ScenarioError, match="layout has 11 entries, obs_dim=12"):
        load_scenario(bad)
    bad.write_text(text.replace("dt: 0.008", "dt: 0.01"))
    assert any(d.startswith("dt:") for d in check_scenario(load_scenario(bad)))
    bad.write_text("name: hopper\n")
    with pytest.raises(ScenarioError, match="missing keys"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match="does not exist"):
        load_scenario(tmp_path / "none.yaml")
