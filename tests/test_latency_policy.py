"""LatencyPolicy: the offline model of a realtime robot whose planner needs whole control periods per plan."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ros_seqplanner.policies.latency import LatencyPolicy

OD, AD, H = 3, 2, 6


class Scripted:
    """Plans H actions for a state: action k = [state's step, k / 10]; records every call."""

    obs_dim, act_dim = OD, AD
    action_low, action_high = -np.ones(AD, np.float32) * 10, np.ones(AD, np.float32) * 10

    def __init__(self, context: bool = True) -> None:
        self.calls: list[tuple] = []
        self.last_plan: dict[str, Any] | None = None
        if not context:  # a memoryless policy (BC): no catch-up methods
            self.observe = self.correct_last_action = None

    def reset(self, **opts: Any) -> None:
        self.calls.append(("reset", opts))

    def act(self, observation: np.ndarray, reward: float | None) -> np.ndarray:
        self.calls.append(("act", int(observation[0]), reward))
        acts = np.stack([[observation[0], k / 10] for k in range(H)]).astype(np.float32)
        self.last_plan = {"actions": acts}
        return acts[0]

    def observe(self, observation: np.ndarray, reward: float | None, action: np.ndarray) -> None:
        self.calls.append(("observe", int(observation[0]), reward, tuple(np.round(action, 6))))

    def correct_last_action(self, action: np.ndarray) -> None:
        self.calls.append(("correct", tuple(np.round(action, 6))))


def run(policy: LatencyPolicy, steps: int) -> list[tuple]:
    policy.reset(seed=3)
    out, reward = [], None
    for t in range(steps):
        a = policy.act(np.array([t, 0.0, 0.0]), reward)
        assert a.dtype == np.float32 and a.shape == (AD,)
        out.append(tuple(np.round(a, 6)))
        reward = 0.5 * (t + 1)  # the reward for step t's action, passed with state t + 1
    return out


def test_plans_are_followed_from_their_action_L_and_the_context_catches_up():
    inner = Scripted()
    pol = LatencyPolicy(inner, latency_steps=2)
    executed = run(pol, 7)
    a = lambda state, k: (float(state), round(k / 10, 6))  # noqa: E731
    # Steps 0-1: no plan yet (safe action); the plan for state 0 comes out at step 2 and is followed from its
    # action 2; the planner then starts on state 2, whose plan takes over at step 4, and so on.
    assert executed == [(0.0, 0.0), (0.0, 0.0), a(0, 2), a(0, 3), a(2, 2), a(2, 3), a(4, 2)]
    assert pol.plans == 4
    assert inner.calls == [
        ("reset", {"seed": 3}),
        ("act", 0, None),
        ("correct", (0.0, 0.0)), ("observe", 1, 0.5, (0.0, 0.0)), ("act", 2, 1.0),
        ("correct", a(0, 2)), ("observe", 3, 1.5, a(0, 3)), ("act", 4, 2.0),
        ("correct", a(2, 2)), ("observe", 5, 2.5, a(2, 3)), ("act", 6, 3.0),
    ]


class Ahead(Scripted):
    """Scripted with latency compensation: plans for "state + L" (its actions carry that step)."""

    def act_ahead(self, observation: np.ndarray, reward: float | None, committed: np.ndarray) -> np.ndarray:
        self.calls.append(("ahead", int(observation[0]), reward, [tuple(np.round(c, 6)) for c in committed]))
        ahead = np.array(observation, dtype=np.float64)
        ahead[0] += len(committed)
        acts = np.stack([[ahead[0], k / 10] for k in range(H)]).astype(np.float32)
        self.last_plan = {"actions": acts}
        return acts[0]


def test_compensated_plans_start_at_their_action_0_after_the_committed_steps():
    inner = Ahead()
    pol = LatencyPolicy(inner, latency_steps=2, compensate=True)
    executed = run(pol, 7)
    a = lambda state, k: (float(state), round(k / 10, 6))  # noqa: E731
    # The plan made at step 0 is for step 2 (state "0 + 2") and is followed from its action 0 at step 2.
    assert executed == [(0.0, 0.0), (0.0, 0.0), a(2, 0), a(2, 1), a(4, 0), a(4, 1), a(6, 0)]
    ahead = [c for c in inner.calls if c[0] == "ahead"]
    assert ahead[0] == ("ahead", 0, None, [(0.0, 0.0), (0.0, 0.0)])  # no plan yet: the safe action is committed
    assert ahead[1] == ("ahead", 2, 1.0, [a(2, 0), a(2, 1)])  # what the robot runs while the plan is computed
    assert ("correct", a(2, 0)) in inner.calls and ("observe", 3, 1.5, a(2, 1)) in inner.calls
    with pytest.raises(ValueError, match="act_ahead"):
        LatencyPolicy(Scripted(), latency_steps=1, compensate=True)


def test_a_plan_used_up_holds_its_last_action():
    pol = LatencyPolicy(Scripted(), latency_steps=H + 1)
    executed = run(pol, H + 3)
    assert executed[H + 1] == (0.0, round((H - 1) / 10, 6))  # the plan for state 0, its last action


def test_latency_zero_is_the_lockstep_loop():
    inner = Scripted()
    executed = run(LatencyPolicy(inner, latency_steps=0), 5)
    assert executed == [(float(t), 0.0) for t in range(5)]
    assert [c[0] for c in inner.calls] == ["reset"] + ["act"] * 5


@pytest.mark.parametrize("inner", [Scripted(), Scripted(context=False)], ids=["no_catch_up", "memoryless"])
def test_without_catch_up_the_policy_sees_only_the_states_it_plans(inner):
    pol = LatencyPolicy(inner, latency_steps=2, catch_up=inner.observe is None)
    run(pol, 5)
    assert [c[:2] for c in inner.calls[1:]] == [("act", 0), ("act", 2), ("act", 4)]


def test_bad_latency_and_observation():
    with pytest.raises(ValueError, match="latency_steps"):
        LatencyPolicy(Scripted(), latency_steps=-1)
    pol = LatencyPolicy(Scripted(), latency_steps=1)
    with pytest.raises(ValueError, match="shape"):
        pol.act(np.zeros(OD + 1), None)
