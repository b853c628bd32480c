"""D4RL normalised-score golden value (what every evaluation JSON reports)."""

from __future__ import annotations

import pytest

from ros_seqplanner.data.scores import SCORE_LABEL, normalized_score


def test_halfcheetah_golden_value():
    # D4RL: 100 * (5009 - (-280.178953)) / (12135.0 - (-280.178953)) = 42.6
    assert normalized_score("HalfCheetah-v5", 5009.0) == pytest.approx(42.6, abs=0.05)
    assert normalized_score("halfcheetah-medium-v2", -280.178953) == pytest.approx(0.0, abs=1e-9)
    assert normalized_score("Hopper-v5", 3234.3) == pytest.approx(100.0)
    assert SCORE_LABEL == "D4RL refs, v5 env"
