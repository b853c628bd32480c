"""Decision Transformer policy: return-conditioned actions from the last K steps.

Per episode the policy keeps the return-to-go (target minus the rewards received so far, as in the
official evaluation loop) and feeds [a_{t-1}, R_t / scale, normalised s_t] to a :class:`DTStepper`,
whose ring buffer is allocated once: the work per step does not grow with the episode length.
A reward passed as None after the first step counts as 0 and is tallied in ``missing_rewards``, so a
late ROS message degrades the conditioning instead of stopping control.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ros_seqplanner.nets.checkpoint import CheckpointError
from ros_seqplanner.nets.dt import DecisionTransformer, DTStepper, load_dt
from ros_seqplanner.policies.base import PolicyTimings, check_action, check_observation, obs_normaliser


class DTPolicy:
    """Implements :class:`ros_seqplanner.policies.base.Policy` for a trained Decision Transformer."""

    def __init__(self, model: DecisionTransformer, obs_mean: np.ndarray, obs_std: np.ndarray,
                 rtg_scale: float, target_returns: list[float], meta: dict[str, Any] | None = None) -> None:
        cfg = model.cfg
        self.model = model.eval()
        self.meta = meta or {}
        self.env_id = str(self.meta.get("env_id", ""))
        self.obs_dim, self.act_dim = cfg.obs_dim, cfg.act_dim
        self.action_low, self.action_high = (np.asarray(b, dtype=np.float32) for b in cfg.bounds())
        self.obs_mean, self.obs_std = obs_normaliser(obs_mean, obs_std, cfg.obs_dim)
        if not (rtg_scale > 0 and math.isfinite(rtg_scale)):
            raise ValueError(f"rtg_scale must be positive and finite, got {rtg_scale}")
        if not target_returns:
            raise ValueError("at least one target return is needed")
        self.rtg_scale = float(rtg_scale)
        self.target_returns = [float(r) for r in target_returns]
        self.device = next(model.parameters()).device
        self._stepper = DTStepper(self.model)
        a = cfg.act_dim
        # Packed step input [a_{t-1}, R_t / scale, normalised s_t]; on CPU the tensor shares this memory.
        self._packed = np.zeros((1, a + 1 + cfg.obs_dim), dtype=np.float32)
        self._packed_t = torch.from_numpy(self._packed)
        self._state = self._packed[0, a + 1:]
        self._on_cpu = self.device.type == "cpu"
        self.timings = PolicyTimings()
        self.target_return = self.target_returns[0]
        self.return_to_go = self.target_return
        self.t = 0
        self.missing_rewards = 0  # steps after the first whose reward was None (R_t not decremented)

    # -- Policy protocol --------------------------------------------------------------------------
    def reset(self, target_return: float | None = None, seed: int | None = None, **_: Any) -> None:
        """Start an episode conditioned on ``target_return`` (default: the checkpoint's first target).
        ``seed`` is accepted for interface compatibility (the policy is deterministic)."""
        if target_return is not None:
            target_return = float(target_return)
            if not math.isfinite(target_return):
                raise ValueError(f"target_return must be finite, got {target_return}")
            self.target_return = target_return
        self.return_to_go = self.target_return
        self.t = 0
        self.missing_rewards = 0
        self._packed[:] = 0.0
        self._stepper.reset()

    def act(self, observation: np.ndarray, reward: float | None) -> np.ndarray:
        t0 = time.perf_counter()
        out = self._step(check_observation(observation, self.obs_dim), reward)
        self.timings = PolicyTimings(act_ms=(time.perf_counter() - t0) * 1e3, planned=True,
                                     extra={"missing_rewards": float(self.missing_rewards)})
        return out

    def correct_last_action(self, action: np.ndarray) -> None:
        """The robot executed ``action`` after the latest observation, not the one :meth:`act` returned: it
        becomes a_{t-1} of the next step. No effect before the episode's first step."""
        a = self._check_action(action)
        if self.t > 0:
            self._packed[0, :self.act_dim] = a

    def observe(self, observation: np.ndarray, reward: float | None, action: np.ndarray) -> None:
        """A control period the policy was not asked about: the robot reached ``observation`` (``reward`` for
        the previous action) and executed ``action``. The step enters the context (timestep, return-to-go,
        state) exactly as in :meth:`act`, with ``action`` as the step's action."""
        obs = check_observation(observation, self.obs_dim)
        a = self._check_action(action)
        self._step(obs, reward)
        self._packed[0, :self.act_dim] = a

    def _check_action(self, action: np.ndarray) -> np.ndarray:
        return check_action(action, self.act_dim, self.action_low, self.action_high)

    def _step(self, obs: np.ndarray, reward: float | None) -> np.ndarray:
        """Advance one timestep on a validated observation; returns the model's action."""
        if self.t > 0:
            if reward is None:  # e.g. a late reward message on ROS: keep going, but count it
                self.missing_rewards += 1
            else:
                reward = float(reward)
                if not math.isfinite(reward):
                    raise ValueError(f"reward must be finite, got {reward}")
                self.return_to_go -= reward
        a = self.act_dim
        self._packed[0, a] = self.return_to_go / self.rtg_scale
        np.subtract(obs, self.obs_mean, out=self._state)
        np.divide(self._state, self.obs_std, out=self._state)
        packed = self._packed_t if self._on_cpu else self._packed_t.to(self.device)
        action = self._stepper.step_packed(packed)
        out = action.cpu().numpy() if not self._on_cpu else action.numpy()
        out = np.clip(out, self.action_low, self.action_high)  # tanh scaling can overshoot by an ulp
        self._packed[0, :a] = out  # becomes a_{t-1} of the next step
        self.t += 1
        return out

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", target_return: float | None = None,
                        **_: Any) -> DTPolicy:
        model, meta = load_dt(path, device=device)
        try:
            policy = cls(model, np.asarray(meta["obs_mean"]), np.asarray(meta["obs_std"]),
                         float(meta["rtg_scale"]), list(meta["target_returns"]), meta=meta)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: DT metadata is incomplete or invalid ({e})") from e
        policy.reset(target_return=target_return)
        return policy
