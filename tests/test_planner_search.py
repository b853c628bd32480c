"""The cached beam-search planner against a naive full-recompute reference (same weights, seed, fp32):
identical plans in every mode, on several random models and contexts. Plus the sampling primitives."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from ros_seqplanner.nets.discretizer import Discretizer
from ros_seqplanner.nets.tt import TrajectoryTransformer, TTConfig
from ros_seqplanner.planning import ckernel
from ros_seqplanner.planning.beam import BeamPlanner, PlannerConfig, make_decoder, parse_obs_bounds, plan_flops
from ros_seqplanner.planning.sampling import expectation, filter_mask, greedy_bins, sample_bins, token_logp


# ---------------------------------------------------------------------------------------------- reference
@torch.no_grad()
def reference_plan(model, disc, cfg: PlannerConfig, prefix: torch.Tensor, generator: torch.Generator,
                   goal: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """Naive TT beam search: beams are explicit token sequences, ``model(tokens)`` recomputed from scratch
    for every token, no cache. Same semantics and random-number use as BeamPlanner. Returns the best
    beam's (H, D) bins and its score. ``cfg.obs_bounds``: each predicted observation token whose midpoint
    leaves its bounds counts a violation; beams rank by (violations, -score, index) (Python sort).
    Long horizons: the model sees ``seqs[:, ws:]``; when the window holds the model's whole block of
    transitions, ``ws`` moves to the last ``max(1, min(max_context_transitions, max_transitions - 1))``."""
    bounds = parse_obs_bounds(cfg.obs_bounds)
    mc = model.cfg
    o, a, d, n = mc.obs_dim, mc.act_dim, mc.transition_dim, mc.n_bins
    h_steps, w, e = cfg.horizon, cfg.beam_width, cfg.n_expand
    mids = disc.midpoints
    u = torch.rand((h_steps, w * e, a), generator=generator)
    logp_mode = cfg.mode != "reward"

    ws = 0  # window start
    keep = max(1, min(cfg.max_context_transitions, mc.max_transitions - 1))

    def next_logits(seqs: torch.Tensor) -> torch.Tensor:
        g = None if goal is None else goal.reshape(1, -1).expand(seqs.shape[0], -1)
        return model(seqs[:, ws:], goal=g)[0][:, -1]

    seqs = prefix.reshape(1, -1).repeat(w, 1)
    t0 = seqs.shape[1]
    rewards = torch.zeros(w, h_steps + 1)
    discounts = cfg.discount ** torch.arange(h_steps + 1, dtype=torch.float32)
    score = torch.zeros(w)
    viol = torch.zeros(w, dtype=torch.long)

    def ranked(score: torch.Tensor, viol: torch.Tensor) -> list[int]:  # exact ties: the lower index first
        return sorted(range(score.numel()), key=lambda i: (int(viol[i]), -float(score[i]), i))

    for t in range(h_steps):
        seqs, score, rewards, viol = (z.repeat_interleave(e, 0) for z in (seqs, score, rewards, viol))
        for j in range(a):
            lg = next_logits(seqs)
            c = sample_bins(lg[:, :n], u[t, :, j], cfg.cdf_act, cfg.k_act)
            if logp_mode:
                score = score + token_logp(lg, c)
            seqs = torch.cat([seqs, (c + n * (o + j))[:, None]], 1)
        for k, col in ((d - 2, t), (d - 1, t + 1)):  # reward, value: greedy token, expectation for the score
            lg = next_logits(seqs)
            c = greedy_bins(lg)
            rewards[:, col] = expectation(lg, mids[k])
            if logp_mode:
                score = score + token_logp(lg, c)
            seqs = torch.cat([seqs, (c + n * k)[:, None]], 1)
        if not logp_mode:
            score = rewards @ discounts
        top = torch.tensor(sorted(ranked(score, viol)[:w]))  # the top W, in candidate order (as BeamPlanner)
        score, viol = score[top], viol[top]
        seqs, rewards = seqs[top], rewards[top]
        if t < h_steps - 1:
            if seqs.shape[1] - ws == mc.max_transitions * d:  # the window is full: move it
                ws = seqs.shape[1] - keep * d
            for j in range(o):
                lg = next_logits(seqs)
                c = greedy_bins(lg)
                if logp_mode:
                    score = score + token_logp(lg, c)
                for dim, lo, hi in bounds:
                    if dim == j:
                        value = disc.midpoints[j][c]
                        viol = viol + ((value < lo) | (value > hi)).long()
                seqs = torch.cat([seqs, (c + n * j)[:, None]], 1)
    i = ranked(score, viol)[0]
    best = seqs[i, t0 - o:].reshape(h_steps, d) - n * torch.arange(d)
    return best, float(score[i])


# ---------------------------------------------------------------------------------------------- fixtures
def make_model(seed: int, obs_dim=3, act_dim=2, n_bins=12, goal=False, max_transitions=6, sharpen=8.0, n_embd=16):
    torch.manual_seed(seed)
    mc = TTConfig(obs_dim=obs_dim, act_dim=act_dim, n_bins=n_bins, n_layer=2, n_head=2, n_embd=n_embd,
                  dropout=0.0, max_transitions=max_transitions, goal_conditioned=goal)
    model = TrajectoryTransformer(mc).eval()
    with torch.no_grad():  # random init is near-uniform; sharpen so that beams and filters matter
        for p in model.parameters():
            p.mul_(sharpen)
    rng = np.random.default_rng(seed)
    disc = Discretizer.fit(rng.standard_normal((400, mc.transition_dim)), n_bins, "quantile")
    return model, disc


def random_prefix(mc: TTConfig, n_ctx: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    d, o, n = mc.transition_dim, mc.obs_dim, mc.n_bins
    dims = torch.cat([torch.arange(d).repeat(n_ctx), torch.arange(o)])
    return torch.randint(0, n, (dims.numel(),), generator=g) + n * dims


CASES = [
    # (mode, planner overrides, model seed, context transitions); "static": static-shape decoder path;
    # "eager": torch decoder with its blocks run eagerly instead of through the TorchScript'ed function;
    # "kernel": decoder ("auto" = the fused C step where it builds); "embd": model width (64 -> head dim 32,
    # the C kernel's AVX2 fast path; 16 -> head dim 8, its generic path); "obs"/"act": model dims (obs 30 +
    # act 4 -> 35-column history segments, more than one 32-column score chunk)
    ("reward", {}, 0, 2),
    ("reward", {"static": True}, 0, 3),
    ("imitation", {"static": True}, 9, 1),
    ("reward", {}, 1, 0),
    ("reward", {"cdf_act": None, "k_act": 3}, 2, 3),
    ("reward", {"cdf_act": 0.3, "k_act": 5, "n_expand": 3}, 3, 1),
    ("reward", {"horizon": 1}, 4, 2),
    ("imitation", {}, 5, 2),
    ("imitation", {"cdf_act": None}, 6, 1),
    ("goal", {}, 7, 2),
    ("goal", {"k_act": 4}, 8, 0),
    ("goal", {"static": True}, 12, 2),
    ("reward", {"eager": True}, 13, 2),
    ("imitation", {"static": True, "eager": True, "n_expand": 3}, 14, 1),
    ("reward", {"n_expand": 1}, 15, 2),
    ("reward", {"kernel": "torch"}, 0, 2),
    ("imitation", {"kernel": "torch", "n_expand": 3}, 5, 1),
    ("reward", {"embd": 64}, 16, 3),
    ("imitation", {"embd": 64, "n_expand": 3}, 17, 2),
    ("goal", {"embd": 64}, 18, 1),
    ("reward", {"embd": 64, "n_expand": 1, "beam_width": 5}, 19, 2),
    ("reward", {"obs": 30, "act": 4}, 20, 1),
    ("reward", {"obs": 30, "act": 4, "embd": 64, "kernel": "torch"}, 20, 1),
    # state constraints (obs_bounds): violation counts rank the beams before their scores
    ("reward", {"obs_bounds": "0:-0.4:0.4,2:-0.2:"}, 21, 2),
    ("reward", {"obs_bounds": "0:-0.4:0.4,2:-0.2:", "kernel": "torch"}, 21, 2),
    ("reward", {"obs_bounds": "1::0.3", "embd": 64, "horizon": 4, "n_expand": 3, "max_context_transitions": 2}, 22, 1),
    ("imitation", {"obs_bounds": "0:-0.5:0.5,1:-0.5:0.5"}, 23, 1),
    ("imitation", {"obs_bounds": "0:-0.5:0.5,1:-0.5:0.5", "kernel": "torch", "static": True}, 23, 1),
    ("goal", {"obs_bounds": "2:0:"}, 24, 2),
    # horizons beyond the block (max_transitions 6): the window moves (re-encode), torch decoder
    ("reward", {"horizon": 9}, 25, 3),
    ("reward", {"horizon": 14, "max_context_transitions": 5}, 26, 5),
    ("reward", {"horizon": 8, "max_context_transitions": 1}, 27, 1),
    ("reward", {"horizon": 7, "max_context_transitions": 0}, 28, 0),
    ("reward", {"horizon": 5, "max_context_transitions": 3}, 29, 1),  # short context: no move needed
    ("reward", {"horizon": 10, "static": True, "n_expand": 3}, 30, 2),
    ("imitation", {"horizon": 9}, 31, 3),
    ("goal", {"horizon": 10, "max_context_transitions": 4}, 32, 4),
    ("reward", {"horizon": 11, "obs_bounds": "0:-0.4:0.4", "embd": 64}, 33, 3),
]


@pytest.mark.parametrize(("mode", "overrides", "seed", "n_ctx"), CASES)
def test_cached_planner_equals_full_recompute(mode, overrides, seed, n_ctx):
    overrides = dict(overrides)
    dims = {"obs_dim": overrides.pop("obs", 3), "act_dim": overrides.pop("act", 2)}
    model, disc = make_model(seed, goal=mode == "goal", n_embd=overrides.pop("embd", 16), **dims)
    mc = model.cfg
    static = overrides.pop("static", False)
    eager = overrides.pop("eager", False)
    kernel = overrides.pop("kernel", "torch" if static or eager else "auto")
    kw = {"horizon": 3, "beam_width": 4, "n_expand": 2, "max_context_transitions": 3, "mode": mode, **overrides}
    cfg = PlannerConfig(**kw)
    planner = BeamPlanner(model, disc, cfg, static=static, kernel=kernel)
    if kernel == "auto" and ckernel.load_kernel() is not None:
        assert planner.kernel == ("torch" if planner.reencode else "c")
    if planner.kernel == "torch":
        planner.decoder.jit = not eager
    goal = None
    if mode == "goal":
        goal = torch.randint(0, mc.n_bins, (mc.obs_dim,)) + mc.n_bins * torch.arange(mc.obs_dim)
    for ctx_seed in (10 * seed, 10 * seed + 1):  # same planner (reused buffers), two contexts
        prefix = random_prefix(mc, n_ctx, ctx_seed)
        plan = planner.plan(prefix, torch.Generator().manual_seed(ctx_seed), goal)
        ref, ref_score = reference_plan(model, disc, cfg, planner.check_prefix(prefix),
                                        torch.Generator().manual_seed(ctx_seed), goal)
        np.testing.assert_array_equal(plan.tokens, ref.numpy())
        assert plan.score == pytest.approx(ref_score, rel=1e-4, abs=1e-4)
        h, d = cfg.horizon, mc.transition_dim
        assert plan.tokens.shape == (h, d)
        assert plan.observations.shape == (h, mc.obs_dim) and plan.actions.shape == (h, mc.act_dim)
        assert plan.rewards.shape == (h,) and plan.values.shape == (h,)
        # row 0 observation is the current observation's tokens
        np.testing.assert_array_equal(plan.tokens[0, :mc.obs_dim], (prefix[-mc.obs_dim:] % mc.n_bins).numpy())
        np.testing.assert_allclose(plan.actions, disc.decode(plan.tokens)[:, mc.obs_dim:mc.obs_dim + mc.act_dim])
        assert plan.violations == count_violations(plan, cfg.obs_bounds)


def count_violations(plan, text: str | None) -> int:
    """Predicted (rows 1..H-1) observation values outside their bounds, from the decoded plan."""
    return sum(int(((plan.observations[1:, d] < lo) | (plan.observations[1:, d] > hi)).sum())
               for d, lo, hi in parse_obs_bounds(text))


def test_longer_obs_and_wider_beam_match_reference():
    model, disc = make_model(11, obs_dim=5, act_dim=3, n_bins=20, max_transitions=5, sharpen=4.0)
    cfg = PlannerConfig(horizon=3, beam_width=6, n_expand=2, max_context_transitions=2)
    planner = BeamPlanner(model, disc, cfg)
    prefix = random_prefix(model.cfg, 2, 3)
    plan = planner.plan(prefix, torch.Generator().manual_seed(5))
    ref, _ = reference_plan(model, disc, cfg, planner.check_prefix(prefix), torch.Generator().manual_seed(5))
    np.testing.assert_array_equal(plan.tokens, ref.numpy())


def test_seed_controls_plan_and_reuse_is_deterministic():
    model, disc = make_model(0, sharpen=1.0)  # near-uniform logits: plans vary with the seed
    planner = BeamPlanner(model, disc, PlannerConfig(horizon=3, beam_width=4, max_context_transitions=2))
    prefix = random_prefix(model.cfg, 2, 0)
    plans = [planner.plan(prefix, torch.Generator().manual_seed(s)).tokens for s in (1, 1, 2)]
    np.testing.assert_array_equal(plans[0], plans[1])
    assert not np.array_equal(plans[0], plans[2])


def test_context_is_cropped_to_the_block_and_long_horizons_move_the_window():
    model, disc = make_model(0)  # max_transitions 6
    mc = model.cfg
    planner = BeamPlanner(model, disc, PlannerConfig(horizon=1, beam_width=2, max_context_transitions=8))
    assert planner.context_transitions == 5 and not planner.reencode  # 6 - 1: the plan's first transition fits
    prefix = random_prefix(mc, 7, 0)
    assert torch.equal(planner.check_prefix(prefix), prefix[2 * mc.transition_dim:])
    with pytest.raises(ValueError, match="observation tokens"):
        planner.check_prefix(prefix[:-1])
    # context + horizon > the block: full context kept, the plan re-encodes its window (torch decoder)
    long = BeamPlanner(model, disc, PlannerConfig(horizon=20, beam_width=2, max_context_transitions=3))
    assert long.context_transitions == 3 and long.reencode and long.kernel == "torch"
    plan = long.plan(prefix, torch.Generator().manual_seed(0))
    assert plan.tokens.shape == (20, mc.transition_dim)
    assert BeamPlanner(model, disc, PlannerConfig(horizon=3, max_context_transitions=3)).reencode is False
    if ckernel.load_kernel() is not None:
        with pytest.raises(ValueError, match="kernel 'c' plans within one block"):
            BeamPlanner(model, disc, PlannerConfig(horizon=4, beam_width=2, max_context_transitions=3), kernel="c")


def test_mode_model_mismatch_and_bad_config():
    model, disc = make_model(0)
    with pytest.raises(ValueError, match="goal-conditioned"):
        BeamPlanner(model, disc, PlannerConfig(mode="goal"))
    gmodel, gdisc = make_model(0, goal=True)
    with pytest.raises(ValueError, match="use mode 'goal'"):
        BeamPlanner(gmodel, gdisc, PlannerConfig(mode="reward"))
    planner = BeamPlanner(gmodel, gdisc, PlannerConfig(mode="goal", horizon=2, beam_width=2))
    with pytest.raises(ValueError, match="goal is required"):
        planner.plan(random_prefix(gmodel.cfg, 0, 0), torch.Generator())
    for bad in ({"mode": "nope"}, {"beam_width": 0}, {"k_obs": 2}, {"cdf_act": 1.5}, {"discount": 0.0}):
        with pytest.raises(ValueError):
            PlannerConfig(**bad)


def test_goal_changes_the_plan():
    model, disc = make_model(3, goal=True, sharpen=4.0)
    mc = model.cfg
    planner = BeamPlanner(model, disc, PlannerConfig(mode="goal", horizon=3, beam_width=4, max_context_transitions=2))
    prefix = random_prefix(mc, 1, 0)
    offs = mc.n_bins * torch.arange(mc.obs_dim)
    plans = [planner.plan(prefix, torch.Generator().manual_seed(0), torch.full((mc.obs_dim,), g) + offs).tokens
             for g in (0, mc.n_bins - 1)]
    assert not np.array_equal(plans[0], plans[1])


def test_c_kernel_builds_where_a_compiler_exists():
    if ckernel._compiler() is None or ckernel.sgemm_address() is None:
        pytest.skip("no C compiler or no exported sgemm in this torch build: the torch decoder is used")
    assert ckernel.load_kernel() is not None, ckernel.LOAD_ERROR
    assert ckernel.build().is_file()


def test_kernel_choice_and_fallback(monkeypatch):
    model, disc = make_model(0)
    cfg = PlannerConfig(horizon=2, beam_width=3, max_context_transitions=4)  # fits the block: no re-encode
    with pytest.raises(ValueError, match="kernel must be"):
        make_decoder(model, None, False, None, "fast")
    with pytest.raises(ValueError, match="CPU float32"):
        BeamPlanner(model, disc, cfg, static=True, kernel="c")
    assert BeamPlanner(model, disc, cfg, kernel="torch").kernel == "torch"
    # the kernel unavailable (no compiler, or disabled): "auto" falls back to torch, "c" says why
    monkeypatch.setattr(ckernel, "_TRIED", False)
    monkeypatch.setattr(ckernel, "_LIB", None)
    monkeypatch.setenv("SEQPLANNER_KERNEL", "torch")
    assert BeamPlanner(model, disc, cfg).kernel == "torch"
    with pytest.raises(RuntimeError, match="SEQPLANNER_KERNEL"):
        BeamPlanner(model, disc, cfg, kernel="c")


def test_c_kernel_build_failure_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("SEQPLANNER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with pytest.raises((RuntimeError, OSError)):
        ckernel.build(force=True)


def test_flop_count_grows_with_beam_and_horizon():
    mc = TTConfig(obs_dim=17, act_dim=6)
    base = PlannerConfig(horizon=5, beam_width=32)
    f = plan_flops(mc, base, 142)
    assert 5e9 < f < 2e10  # ~9 GFLOP for the halfcheetah preset
    assert plan_flops(mc, PlannerConfig(horizon=5, beam_width=64), 142) > 1.9 * f - 1e9
    assert plan_flops(mc, PlannerConfig(horizon=10, beam_width=32), 142) > 2 * f


# ---------------------------------------------------------------------------------------------- sampling
def official_filter_cdf(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """jannerm/trajectory-transformer filter_cdf, transcribed for the test: returns the kept mask."""
    probs = logits.softmax(-1)
    srt, _ = torch.sort(probs, -1)
    cum = torch.cumsum(srt, -1)
    inds = torch.argmax((cum < threshold) * torch.arange(logits.shape[-1]), -1)
    thr = srt[torch.arange(logits.shape[0]), inds]
    out = logits.clone()
    out[probs <= thr[:, None]] = -1000
    return out.softmax(-1) > 1e-30


def test_cdf_filter_matches_official_rule():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 30, generator=g) * 2
    for cdf in (0.0, 0.3, 0.6, 0.9):
        keep = filter_mask(logits.softmax(-1), cdf=cdf)
        assert torch.equal(keep, official_filter_cdf(logits, cdf))
    # cdf 0.6 keeps at least 40% of the mass and drops something
    p = logits.softmax(-1)
    keep = filter_mask(p, cdf=0.6)
    assert ((p * keep).sum(-1) >= 0.4 - 1e-6).all() and (keep.sum(-1) < 30).all()


def test_topk_filter_and_tie_fallback():
    p = torch.tensor([[0.1, 0.4, 0.2, 0.3], [0.25, 0.25, 0.25, 0.25]])
    assert filter_mask(p, topk=2).tolist() == [[False, True, False, True], [True, True, True, True]]
    assert filter_mask(p, cdf=0.6)[1].all()  # all tied: official keeps (uniformly) everything
    assert filter_mask(p) is None


def test_inverse_cdf_sampling_follows_filtered_probabilities():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, -1.0]])
    n = 20000
    u = torch.rand(n, generator=torch.Generator().manual_seed(1))
    s = sample_bins(logits.expand(n, -1), u, cdf=0.2)
    p = logits.softmax(-1)[0]
    keep = filter_mask(p[None], cdf=0.2)[0]
    target = (p * keep) / (p * keep).sum()
    freq = torch.bincount(s, minlength=5).float() / n
    assert torch.allclose(freq, target, atol=0.015)
    assert (freq[~keep] == 0).all()


@pytest.mark.parametrize(("cdf", "topk"), [(0.6, None), (None, 5), (0.3, 5), (None, None), (0.9, None), (0.0, 1)])
def test_c_sampler_matches_torch_sampler(cdf, topk):
    """The C planner loop's sampler (ttk_plan) picks the same bins as sampling.sample_bins: peaked, flat, tied
    and random rows, each filter."""
    if ckernel.load_kernel() is None:
        pytest.skip(ckernel.LOAD_ERROR or "C kernel unavailable")
    g = torch.Generator().manual_seed(3)
    rows = [torch.randn(3000, 50, generator=g) * scale for scale in (0.3, 1.0, 4.0)]
    tied = torch.zeros(50, 50)  # all equal: the filters keep everything
    tied[25:, :3] = 2.0  # three tied maxima
    rows += [tied, torch.tensor([[0.0] * 49 + [30.0], [-1e4] * 49 + [0.0], [1.0, 1.0] + [0.0] * 48] * 10)]
    for x in rows:
        u = torch.rand(x.shape[0], generator=g)
        u[:5] = torch.tensor([0.0, 1.0 - 2 ** -24, 0.5, 0.25, 0.75])
        np.testing.assert_array_equal(ckernel.sample_bins_c(x, u, cdf, topk).numpy(),
                                      sample_bins(x, u, cdf, topk).numpy())


def test_expectation_greedy_and_logp():
    logits = torch.tensor([[0.0, 2.0, 1.0, 5.0]])  # 3 bins + stop
    mids = torch.tensor([1.0, 2.0, 3.0])
    p = logits.softmax(-1)[0]
    assert expectation(logits, mids).item() == pytest.approx(float(p[:3] @ mids))  # stop dropped, not renormalised
    assert greedy_bins(logits).item() == 1  # stop class never chosen
    assert token_logp(logits, torch.tensor([2])).item() == pytest.approx(float(p[2].log()))


@pytest.mark.parametrize("n_embd", [16, 64])
def test_c_decoder_logits_match_torch_decoder(n_embd):
    """Token by token through one planning step and the next observation (write modes step / None / hist,
    a merge in between): the C decoder's logits equal the torch decoder's to float rounding."""
    if ckernel.load_kernel() is None:
        pytest.skip(ckernel.LOAD_ERROR or "C kernel unavailable")
    from ros_seqplanner.planning.engine import BeamDecoder

    model, _ = make_model(3, n_embd=n_embd, sharpen=2.0)
    mc = model.cfg
    o, a, d = mc.obs_dim, mc.act_dim, mc.transition_dim
    w, e = 3, 2
    prefix = random_prefix(mc, 2, 5)
    decs = [BeamDecoder(model), ckernel.CBeamDecoder(model)]
    g = torch.Generator().manual_seed(0)
    rand = [torch.randint(0, mc.n_bins, (w * e,), generator=g) for _ in range(a + 1)]
    obs = [torch.randint(0, mc.n_bins, (w,), generator=g) for _ in range(o)]
    parent, winners = torch.tensor([2, 0, 2]), torch.tensor([5, 0, 4])
    outs: list[list[torch.Tensor]] = [[], []]
    with torch.inference_mode():
        pre = model.prefill(prefix.unsqueeze(0))
        for dec, out in zip(decs, outs):
            dec.set_prefix(pre)
            dec.allocate(w, e, 2 * (d - 1), a + 1)
            pos = prefix.numel()
            for j in range(a + 1):  # actions + reward of W*E candidates
                out.append(dec.step(rand[j], pos, e, 0, j, "step"))
                pos += 1
            dec.merge(parent, winners, 0, a + 1)
            out.append(dec.step(torch.zeros(w, dtype=torch.long), pos, 1, a + 1, 0, None))  # value: query only
            pos += 1
            for k in range(o):
                out.append(dec.step(obs[k], pos, 1, a + 1 + k, 0, "hist"))
                pos += 1
    for x, y in zip(*outs):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5)


def test_c_decoder_rejects_out_of_range_input():
    """The C code indexes with these: out-of-range bins, positions or shapes raise instead of reading memory."""
    if ckernel.load_kernel() is None:
        pytest.skip(ckernel.LOAD_ERROR or "C kernel unavailable")
    model, _ = make_model(1)
    mc = model.cfg
    dec = ckernel.CBeamDecoder(model)
    with torch.inference_mode():
        dec.set_prefix(model.prefill(random_prefix(mc, 1, 0).unsqueeze(0)))
    dec.allocate(2, 2, 2 * (mc.transition_dim - 1), mc.act_dim + 1)
    pos = mc.transition_dim + mc.obs_dim
    ok = torch.zeros(4, dtype=torch.long)
    assert dec.step(ok, pos, 2, 0, 0, "step").shape == (4, mc.n_bins + 1)
    for bad in (torch.full((4,), mc.n_bins), torch.full((4,), -1)):
        with pytest.raises(ValueError, match="bins"):
            dec.step(bad, pos, 2, 0, 0, "step")
    with pytest.raises(ValueError, match="outside"):
        dec.step(ok, mc.block_size, 2, 0, 0, "step")  # position past the block
    with pytest.raises(ValueError, match="outside"):
        dec.step(torch.zeros(5, dtype=torch.long), pos, 2, 0, 0, "step")  # more rows than allocated
    with pytest.raises(ValueError, match="merge"):
        dec.merge(torch.tensor([0, 1]), torch.tensor([3, 2]), 0, mc.act_dim + 1)  # winner 3 is not beam 0's
    with pytest.raises(ValueError, match="merge"):  # a segment past the allocated history
        dec.merge(torch.tensor([0, 1]), torch.tensor([0, 2]), 3 * (mc.transition_dim - 1), mc.act_dim + 1)
    # the whole-plan entry point: observation bins, horizon and shapes are checked before any C runs
    h, n1 = 3, mc.n_bins + 1
    args = {"discounts": torch.ones(h + 1), "mids": (torch.zeros(mc.n_bins), torch.zeros(mc.n_bins)), "pos0": pos,
            "beams": 2, "expand": 2, "cdf": 0.6, "topk": None, "logp": False}
    u, lg = torch.rand(h, 4, mc.act_dim), torch.zeros(n1)
    bins, _, _ = dec.plan(lg, torch.zeros(mc.obs_dim, dtype=torch.long), u, **args)
    assert bins.shape == (h, mc.transition_dim) and int(bins.min()) >= 0 and int(bins.max()) < mc.n_bins
    with pytest.raises(ValueError, match="observation bins"):
        dec.plan(lg, torch.full((mc.obs_dim,), mc.n_bins), u, **args)
    with pytest.raises(ValueError, match="exceeds"):
        dec.plan(lg, torch.zeros(mc.obs_dim, dtype=torch.long), torch.rand(9, 4, mc.act_dim), **args)
    with pytest.raises(ValueError, match="allocate"):
        dec.plan(lg, torch.zeros(mc.obs_dim, dtype=torch.long), u, **{**args, "beams": 3})


@pytest.mark.parametrize("kernel", ["auto", "torch"])
def test_obs_bounds_steer_plans_into_the_bounds(kernel):
    """Bounded plans leave the bounds less often than unbounded ones from the same seeds, and differ from them;
    with bounds that nothing violates the plan is the unbounded one (ranking by score alone)."""
    fewer = differ = 0
    for seed in range(8):
        model, disc = make_model(30 + seed, sharpen=2.0)
        prefix = random_prefix(model.cfg, 2, seed)
        base = {"horizon": 4, "beam_width": 6, "n_expand": 2, "max_context_transitions": 2}
        plans = {}
        for text in (None, "0:-1:1,1:-1:1", "0:-99:99"):
            planner = BeamPlanner(model, disc, PlannerConfig(**base, obs_bounds=text), kernel=kernel)
            plans[text] = planner.plan(prefix, torch.Generator().manual_seed(seed))
        free, bounded, loose = plans[None], plans["0:-1:1,1:-1:1"], plans["0:-99:99"]
        n_free = count_violations(free, "0:-1:1,1:-1:1")
        assert bounded.violations == count_violations(bounded, "0:-1:1,1:-1:1") <= n_free
        fewer += bounded.violations < n_free
        differ += not np.array_equal(bounded.tokens, free.tokens)
        np.testing.assert_array_equal(loose.tokens, free.tokens)
        assert free.violations == loose.violations == 0 and loose.score == free.score
    assert fewer >= 3 and differ >= 3, (fewer, differ)


def test_obs_bounds_parsing_and_errors():
    assert parse_obs_bounds("1:-1:1, 0:0.9:") == [(1, -1.0, 1.0), (0, 0.9, np.inf)]
    assert parse_obs_bounds("") == parse_obs_bounds(None) == []
    assert parse_obs_bounds("2::0.5;3:-1:") == [(2, -np.inf, 0.5), (3, -1.0, np.inf)]
    for bad, msg in (("1:-1", "DIM:LO:HI"), ("a:0:1", "bad number"), ("1:1:1", "LO < HI"), ("-1:0:1", "DIM >= 0"),
                     ("1:0:1,1:0:2", "bounded twice"), ("1:nan:1", "LO < HI")):
        with pytest.raises(ValueError, match=msg):
            PlannerConfig(obs_bounds=bad)
    assert PlannerConfig.check_settings({"obs_bounds": "1:-1:1"}, "x") == {"obs_bounds": "1:-1:1"}
    with pytest.raises(ValueError, match="obs_bounds must be str or null"):
        PlannerConfig.check_settings({"obs_bounds": 1}, "x")
    model, disc = make_model(0)  # obs_dim 3; quantile bins of standard normal data
    with pytest.raises(ValueError, match="dimension 3 out of range"):
        BeamPlanner(model, disc, PlannerConfig(horizon=3, obs_bounds="3:0:1"))
    with pytest.raises(ValueError, match="no bin of observation 0 decodes into"):
        BeamPlanner(model, disc, PlannerConfig(horizon=3, obs_bounds="0:50:60"))


def test_exact_score_ties_go_to_the_lower_index():
    """On this model two children of a beam sample the same action tokens, so their scores tie exactly at the
    cut of the top W (step 1: four candidates at 0.129444 for three places). torch.topk kept indices 5, 6, 8
    and the C kernel 4, 5, 6, so the two planners returned different plans (score 0.3036 vs 0.2359); both now
    keep the lower index, as the reference does."""
    model, disc = make_model(31, sharpen=2.0)
    prefix = random_prefix(model.cfg, 2, 1)
    cfg = PlannerConfig(horizon=4, beam_width=6, n_expand=2, max_context_transitions=2)
    plans = [BeamPlanner(model, disc, cfg, kernel=k).plan(prefix, torch.Generator().manual_seed(1))
             for k in ("torch", "auto")]
    ref, ref_score = reference_plan(model, disc, cfg, prefix, torch.Generator().manual_seed(1))
    for plan in plans:
        np.testing.assert_array_equal(plan.tokens, ref.numpy())
        assert plan.score == pytest.approx(ref_score, abs=1e-6)


@pytest.mark.parametrize("kernel", ["auto", "torch"])
def test_time_budget_cuts_the_horizon_and_equals_the_shorter_plan(kernel):
    """A deadline that has passed stops the search after its first transition: the plan then equals the plan
    with horizon 1 (same uniforms, same selection); a deadline far away changes nothing; PlannerConfig
    rejects a negative budget. The C loop and the torch loop cut at the same place."""
    model, disc = make_model(31, max_transitions=6)
    cfg = PlannerConfig(horizon=4, beam_width=4, n_expand=2, max_context_transitions=2)
    prefix = random_prefix(model.cfg, 2, 31)
    planner = BeamPlanner(model, disc, cfg, kernel=kernel)
    if kernel == "auto" and ckernel.load_kernel() is not None:
        assert planner.kernel == "c"
    full = planner.plan(prefix, torch.Generator().manual_seed(3))
    late = planner.plan(prefix, torch.Generator().manual_seed(3), deadline=time.monotonic() + 3600.0)
    np.testing.assert_array_equal(late.tokens, full.tokens)
    assert planner.last_stats["horizon_planned"] == 4
    cut = planner.plan(prefix, torch.Generator().manual_seed(3), deadline=time.monotonic() - 1.0)
    assert planner.last_stats["horizon_planned"] == 1 and cut.tokens.shape == (1, model.cfg.transition_dim)
    short = BeamPlanner(model, disc, PlannerConfig(**{**cfg.to_dict(), "horizon": 1}), kernel=kernel)
    ref = short.plan(prefix, torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(cut.tokens, ref.tokens)
    assert cut.score == pytest.approx(ref.score, rel=1e-6)
    assert not np.array_equal(full.tokens[:1], ref.tokens) or full.score != pytest.approx(ref.score)
    with pytest.raises(ValueError, match="time_budget_ms"):
        PlannerConfig(time_budget_ms=-1.0)


def test_time_budget_cut_after_a_window_move_equals_the_shorter_plan(monkeypatch):
    """A plan that moved its window and is then cut equals the plan with the shorter horizon (which moves its
    window at the same transitions). The clock is a counter: the deadline passes at the check after transition 5."""
    model, disc = make_model(34, max_transitions=6)
    cfg = PlannerConfig(horizon=10, beam_width=4, n_expand=2, max_context_transitions=3)
    prefix = random_prefix(model.cfg, 3, 34)
    planner = BeamPlanner(model, disc, cfg)
    assert planner.reencode
    clock = iter(range(1000))
    monkeypatch.setattr(time, "monotonic", lambda: float(next(clock)))
    cut = planner.plan(prefix, torch.Generator().manual_seed(4), deadline=4.5)
    assert cut.tokens.shape == (6, model.cfg.transition_dim)  # checks after transitions 0..5 read 0..5
    ref, ref_score = reference_plan(model, disc, PlannerConfig(**{**cfg.to_dict(), "horizon": 6}), prefix,
                                    torch.Generator().manual_seed(4))
    np.testing.assert_array_equal(cut.tokens, ref.numpy())
    assert cut.score == pytest.approx(ref_score, rel=1e-4, abs=1e-4)
