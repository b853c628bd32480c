"""D4RL normalised scores.

The reference returns are D4RL's (random and expert policy returns on the v2 envs). We apply them to
gymnasium v5 envs, whose dynamics differ slightly, so every score is labelled "D4RL refs, v5 env".
"""

from __future__ import annotations

SCORE_LABEL = "D4RL refs, v5 env"

# env family -> (random return, expert return)
REF_SCORES: dict[str, tuple[float, float]] = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
}


def env_family(env_id: str) -> str:
    """'HalfCheetah-v5' / 'halfcheetah-medium' -> 'halfcheetah'."""
    key = env_id.lower().split("-")[0].split("/")[-1]
    if key not in REF_SCORES:
        raise KeyError(f"no D4RL reference scores for {env_id!r}; known: {sorted(REF_SCORES)}")
    return key


def normalized_score(env_id: str, raw_return: float) -> float:
    """100 * (return - random) / (expert - random), D4RL's convention."""
    lo, hi = REF_SCORES[env_family(env_id)]
    return 100.0 * (float(raw_return) - lo) / (hi - lo)
