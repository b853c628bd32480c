"""Decision Transformer network: causality, padding invariance, bounds, determinism, stepper parity."""

from __future__ import annotations

import pytest
import torch

from ros_seqplanner.nets.dt import DecisionTransformer, DTConfig, DTStepper

LOW, HIGH = (-2.0, 0.0, -0.5), (2.0, 1.0, 3.0)


def make_model(n_layer: int = 2, n_head: int = 2, context: int = 6, max_ep_len: int = 40, seed: int = 0):
    torch.manual_seed(seed)
    cfg = DTConfig(obs_dim=5, act_dim=3, context=context, max_ep_len=max_ep_len, n_layer=n_layer,
                   n_head=n_head, n_embd=32, dropout=0.1, action_low=LOW, action_high=HIGH)
    model = DecisionTransformer(cfg)
    with torch.no_grad():  # larger weights than the GPT-2 init so that every input visibly matters
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def random_window(b: int, t: int, start: int = 0, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(b, t, 5, generator=g)
    actions = torch.rand(b, t, 3, generator=g)
    rtg = torch.randn(b, t, generator=g)
    timesteps = torch.arange(start, start + t).expand(b, t).clone()
    return states, actions, rtg, timesteps


def test_changing_a_later_token_never_changes_earlier_outputs():
    model = make_model()
    s, a, r, ts = random_window(2, 6)
    with torch.no_grad():
        base = model(s, a, r, ts)
        for step in range(6):
            for which in ("state", "action", "rtg"):
                s2, a2, r2 = s.clone(), a.clone(), r.clone()
                if which == "state":
                    s2[:, step] += 3.0
                elif which == "action":
                    a2[:, step] += 3.0
                else:
                    r2[:, step] += 3.0
                out = model(s2, a2, r2, ts)
                # The action at step j is read at s_j: it sees R_j and s_j but not a_j or anything later.
                first_affected = step + 1 if which == "action" else step
                torch.testing.assert_close(out[:, :first_affected], base[:, :first_affected], rtol=0, atol=1e-6)
                if first_affected < 6:
                    assert (out[:, first_affected] - base[:, first_affected]).abs().max() > 1e-4


def test_short_context_equals_left_padded_context():
    model = make_model()
    s, a, r, ts = random_window(1, 4, start=7)
    pad = 2
    sp = torch.cat([torch.randn(1, pad, 5) * 9, s], dim=1)  # garbage in the padding must not matter
    ap = torch.cat([torch.full((1, pad, 3), -10.0), a], dim=1)
    rp = torch.cat([torch.randn(1, pad), r], dim=1)
    tp = torch.cat([torch.zeros(1, pad, dtype=torch.long), ts], dim=1)
    mask = torch.tensor([[False] * pad + [True] * 4])
    with torch.no_grad():
        short = model(s, a, r, ts)
        padded = model(sp, ap, rp, tp, mask)
    torch.testing.assert_close(padded[:, pad:], short, rtol=0, atol=1e-5)
    assert torch.isfinite(padded).all()


def test_all_true_mask_equals_no_mask_and_batch_independence():
    model = make_model()
    s, a, r, ts = random_window(3, 6)
    with torch.no_grad():
        a1 = model(s, a, r, ts)
        a2 = model(s, a, r, ts, torch.ones(3, 6, dtype=torch.bool))
        single = model(s[1:2], a[1:2], r[1:2], ts[1:2])
    torch.testing.assert_close(a1, a2, rtol=0, atol=1e-5)
    torch.testing.assert_close(a1[1:2], single, rtol=0, atol=1e-5)


def test_actions_within_bounds_even_for_extreme_inputs():
    model = make_model()
    s, a, r, ts = random_window(4, 6)
    with torch.no_grad():
        out = model(s * 1e4, a * 1e3, r * 1e4, ts)
    low, high = torch.tensor(LOW), torch.tensor(HIGH)
    assert torch.all(out >= low) and torch.all(out <= high)
    # and the bounds are actually used (not squashed into [-1, 1])
    assert out[..., 2].max() > 1.0 or out[..., 0].min() < -1.0


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout():
    model = make_model()
    s, a, r, ts = random_window(2, 6)
    with torch.no_grad():
        torch.testing.assert_close(model(s, a, r, ts), model(s, a, r, ts), rtol=0, atol=0)
        model.train()
        assert not torch.equal(model(s, a, r, ts), model(s, a, r, ts))


def test_timesteps_beyond_max_ep_len_are_clamped():
    model = make_model(max_ep_len=10)
    s, a, r, _ = random_window(1, 3)
    with torch.no_grad():
        far = model(s, a, r, torch.tensor([[50, 51, 52]]))
        last = model(s, a, r, torch.tensor([[9, 9, 9]]))
    torch.testing.assert_close(far, last, rtol=0, atol=0)


def test_window_longer_than_context_is_rejected():
    model = make_model(context=4)
    s, a, r, ts = random_window(1, 5)
    with pytest.raises(ValueError, match="context"):
        model(s, a, r, ts)


@pytest.mark.parametrize("jit", [True, False], ids=["scripted", "eager"])
@pytest.mark.parametrize(("n_layer", "n_head"), [(1, 1), (3, 1), (2, 4), (1, 4)])
def test_stepper_matches_full_forward_on_explicit_windows(n_layer, n_head, jit):
    model = make_model(n_layer=n_layer, n_head=n_head, context=5, max_ep_len=12)
    stepper = DTStepper(model, jit=jit)
    g = torch.Generator().manual_seed(3)
    states, actions, rtgs = [], [], []
    for t in range(30):  # passes the context (5) and max_ep_len (12): window slides, timesteps clamp
        s, r = torch.randn(5, generator=g), float(torch.randn((), generator=g))
        states.append(s)
        rtgs.append(r)
        act = stepper.step(actions[-1] if actions else None, r, s)
        actions.append(act.clone())
        lo = max(0, t - 4)
        a_win = torch.stack(actions[lo:])[None].clone()
        a_win[0, -1] = 0.0  # a_t is not known yet (and cannot matter: causal)
        with torch.no_grad():
            ref = model(torch.stack(states[lo:])[None], a_win, torch.tensor(rtgs[lo:])[None],
                        torch.arange(lo, t + 1)[None])[0, -1]
        torch.testing.assert_close(act, ref, rtol=0, atol=1e-5)


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        DTConfig(obs_dim=3, act_dim=2, n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="action_low"):
        DTConfig(obs_dim=3, act_dim=2, action_low=(0.0,), action_high=(1.0, 1.0))
    with pytest.raises(ValueError, match="exceed"):
        DTConfig(obs_dim=3, act_dim=2, action_low=(0.0, 1.0), action_high=(1.0, 1.0))
    cfg = DTConfig(obs_dim=3, act_dim=2, action_low=(0, -1), action_high=(1, 1))
    assert DTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        DTConfig.from_dict({**cfg.to_dict(), "bogus": 1})
