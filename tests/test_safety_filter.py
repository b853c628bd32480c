"""ROS-free unit tests of the safety envelope (ros_seqplanner.policies.safety)."""

from __future__ import annotations

import numpy as np
import pytest

from ros_seqplanner.policies.safety import SafetyConfig, SafetyConfigError, SafetyFilter, validate_state

LO, HI = np.array([-1.0, -0.5, 0.2]), np.array([1.0, 0.5, 0.8])


def make(**kw) -> SafetyFilter:
    return SafetyFilter(SafetyConfig(LO, HI, **kw))


def test_validate_state():
    x, why = validate_state([1, 2, 3], 3)
    assert why == "" and x.dtype == np.float32 and x.tolist() == [1, 2, 3]
    assert validate_state([1, 2], 3) == (None, "state has 2 values, the model expects 3")
    x, why = validate_state([1, np.nan, np.inf], 3)
    assert x is None and "[1, 2]" in why
    x, why = validate_state(["a", "b", "c"], 3)
    assert x is None and "not numeric" in why


def test_config_rejects_bad_envelopes():
    with pytest.raises(SafetyConfigError, match="<= action_high"):
        SafetyConfig(HI, LO)
    with pytest.raises(SafetyConfigError, match="equal"):
        SafetyConfig(LO, HI[:2])
    with pytest.raises(SafetyConfigError, match="finite"):
        SafetyConfig(LO, np.array([1.0, np.inf, 1.0]))
    with pytest.raises(SafetyConfigError, match="fallback"):
        SafetyConfig(LO, HI, fallback="pray")
    # The default safe action is zero clipped into the bounds (0.2 for a [0.2, 0.8] joint).
    assert SafetyConfig(LO, HI).safe_action.tolist() == [0.0, 0.0, 0.2]


def test_guard_is_finite_and_in_bounds_whatever_goes_in():
    f = make()
    rng = np.random.default_rng(0)
    junk = [np.array([np.nan, np.inf, -np.inf]), np.array([1e9, -1e9, 3.0]), np.zeros(7), np.array([]),
            *rng.normal(scale=5, size=(50, 3))]
    for x in junk:
        out = f.guard(x)
        assert out.shape == (3,) and np.all(np.isfinite(out)) and np.all(out >= LO) and np.all(out <= HI)
    np.testing.assert_array_equal(f.guard(np.array([np.nan, 0.1, 0.5])), [0.0, 0.1, 0.5])


def test_filter_clips_and_rate_limits():
    f = make(max_delta=0.1)
    np.testing.assert_allclose(f.filter(np.array([2.0, -2.0, 0.5])), [1.0, -0.5, 0.5])  # first: clip only
    out = f.filter(np.array([-1.0, 0.5, 0.9]))
    np.testing.assert_allclose(out, [0.9, -0.4, 0.6])
    np.testing.assert_allclose(f.last, out)
    # Without a limit the command jumps straight to the (clipped) action.
    g = make()
    g.filter(np.array([1.0, 0.0, 0.5]))
    np.testing.assert_allclose(g.filter(np.array([-1.0, 0.0, 0.5])), [-1.0, 0.0, 0.5])


def test_safe_command_skips_rate_limit_unless_asked():
    f = make(max_delta=0.1)
    f.filter(np.array([1.0, 0.5, 0.8]))
    np.testing.assert_allclose(f.safe(), [0.0, 0.0, 0.2])  # e-stop / error: stop now
    f.filter(np.array([1.0, 0.5, 0.8]))  # rate-limited back up from the safe command
    f.last = np.array([1.0, 0.5, 0.8])
    np.testing.assert_allclose(f.safe(rate_limited=True), [0.9, 0.4, 0.7])  # stale: ramp


@pytest.mark.parametrize("mode", ["continue", "hold", "zero"])
def test_fallbacks(mode):
    f = make(fallback=mode)
    plan = np.array([[0.1, 0.1, 0.3], [0.2, 0.2, 0.4], [0.3, 0.3, 0.5]])
    f.filter(plan[0])
    cmd, how = f.fallback(plan, 1)
    expected = {"continue": plan[1], "hold": plan[0], "zero": np.array([0.0, 0.0, 0.2])}[mode]
    np.testing.assert_allclose(cmd, expected)
    assert how == mode
    if mode == "continue":  # past the plan's end it repeats the last planned action
        np.testing.assert_allclose(f.fallback(plan, 10)[0], plan[2])


def test_fallback_degrades_without_plan_or_history():
    f = make(fallback="continue")
    cmd, how = f.fallback(None, 0)
    assert how == "zero" and cmd.tolist() == [0.0, 0.0, 0.2]  # no plan, nothing to hold
    f.filter(np.array([0.5, 0.5, 0.5]))
    cmd, how = f.fallback(None, 0)
    assert how == "hold" and cmd.tolist() == [0.5, 0.5, 0.5]
