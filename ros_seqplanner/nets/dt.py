"""Decision Transformer (Chen et al. 2021): a causal transformer over (return-to-go, state, action) tokens.

Layout follows the official code (kzl/decision-transformer, ``gym/decision_transformer/models``):
per step three tokens [R_t, s_t, a_t], each a linear embedding of its modality plus a learned
*absolute* timestep embedding (no positional embedding), LayerNorm over the embedded sequence, a
GPT-2 style pre-LN causal transformer (ReLU MLP of width 4C) and the action predicted from the
hidden state at the s_t token through Linear + tanh. Deviations from the reference:

- tanh is scaled to the action bounds (the reference outputs [-1, 1]);
- no return/state prediction heads (the reference defines them but never trains them);
- a padded query may attend to itself, so fully masked rows never produce NaNs (outputs at padded
  positions are ignored anyway; real tokens never attend to padding).

:class:`DTStepper` is the lean inference path used by the policy: a fixed ring buffer of the last K
steps, embedding only the three new tokens per step. Because the embeddings use absolute timesteps
and no positional term, a token's embedding and its layer-0 query/key/value never change while it
stays in the window, so those are cached exactly. A K/V cache for deeper layers would not be exact:
once the window is full it loses its oldest step every time it slides, which changes the attention
(hence the hidden states) of every token left in it, so layers >= 1 are recomputed over the K-step
window each step (K = 20 steps = 59 tokens). The last layer only needs the s_t query. Every layer's key and
output projections are folded algebraically into its query and value sides (see
:meth:`DTStepper._fold_attention`), which halves the window projections of the middle layers (one head)
and removes them from the last one. Work buffers are pre-allocated; matrix products write into them
(``out=``), residual adds are in place, and the step runs as one TorchScript function (:func:`_step`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ros_seqplanner.nets.bounds import ActionBoundsMixin
from ros_seqplanner.nets.checkpoint import CheckpointError, load_checkpoint, load_state_into, save_checkpoint
from ros_seqplanner.nets.config import config_from_dict


@dataclass(frozen=True)
class DTConfig(ActionBoundsMixin):
    obs_dim: int
    act_dim: int
    context: int = 20  # K, steps per training window
    max_ep_len: int = 1000  # size of the timestep embedding; later steps clamp to max_ep_len - 1
    n_layer: int = 3
    n_head: int = 1
    n_embd: int = 128
    dropout: float = 0.1
    action_low: tuple[float, ...] = field(default=())  # empty = [-1, 1] per dimension
    action_high: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.obs_dim < 1 or self.act_dim < 1:
            raise ValueError(f"obs_dim and act_dim must be >= 1, got {self.obs_dim}, {self.act_dim}")
        if self.context < 1 or self.max_ep_len < 1 or self.n_layer < 1:
            raise ValueError("context, max_ep_len and n_layer must be >= 1")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        self._check_action_bounds()


    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> DTConfig:
        return config_from_dict(cls, d)


class SelfAttention(nn.Module):
    def __init__(self, cfg: DTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # fused q, k, v
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).view(b, t, 3, self.n_head, c // self.n_head).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.resid_drop(self.c_proj(y.transpose(1, 2).reshape(b, t, c)))


class MLP(nn.Module):
    def __init__(self, cfg: DTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.c_proj(F.relu(self.c_fc(x))))  # ReLU as in the official DT config


class Block(nn.Module):
    def __init__(self, cfg: DTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = SelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class DecisionTransformer(nn.Module):
    """Training/reference forward over whole windows. Inputs: states already normalised, returns-to-go
    already scaled. ``mask`` (B, T) marks real (non-padded) steps; padding is on the left."""

    def __init__(self, cfg: DTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.n_embd
        self.embed_timestep = nn.Embedding(cfg.max_ep_len, c)
        self.embed_return = nn.Linear(1, c)
        self.embed_state = nn.Linear(cfg.obs_dim, c)
        self.embed_action = nn.Linear(cfg.act_dim, c)
        self.embed_ln = nn.LayerNorm(c)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(c)
        self.predict_action = nn.Linear(c, cfg.act_dim)
        low, high = (torch.tensor(b, dtype=torch.float32) for b in cfg.bounds())
        self.register_buffer("act_mid", (high + low) / 2, persistent=False)
        self.register_buffer("act_half", (high - low) / 2, persistent=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # GPT-2 initialisation (as used by the reference through HF GPT2Model).
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def embed(self, states: torch.Tensor, actions: torch.Tensor, returns_to_go: torch.Tensor,
              timesteps: torch.Tensor) -> torch.Tensor:
        """(B, T, *) inputs -> (B, 3T, C) interleaved [R_t, s_t, a_t] tokens after LayerNorm."""
        b, t = timesteps.shape
        time = self.embed_timestep(timesteps.clamp(0, self.cfg.max_ep_len - 1))
        r = self.embed_return(returns_to_go.reshape(b, t, 1)) + time
        s = self.embed_state(states) + time
        a = self.embed_action(actions) + time
        return self.embed_ln(torch.stack((r, s, a), dim=2).reshape(b, 3 * t, self.cfg.n_embd))

    def forward(self, states: torch.Tensor, actions: torch.Tensor, returns_to_go: torch.Tensor,
                timesteps: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Returns predicted actions (B, T, A) read at every s_t token, within the action bounds."""
        b, t = timesteps.shape
        if t > self.cfg.context:
            raise ValueError(f"window of {t} steps exceeds the model's context K={self.cfg.context}")
        x = self.drop(self.embed(states, actions, returns_to_go, timesteps))
        attn_mask = None if mask is None else self._attention_mask(mask)
        for block in self.blocks:
            x = block(x, attn_mask)
        x = self.ln_f(x).view(b, t, 3, self.cfg.n_embd)
        return self.scale_action(self.predict_action(x[:, :, 1]))

    def scale_action(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z) * self.act_half + self.act_mid

    @staticmethod
    def _attention_mask(mask: torch.Tensor) -> torch.Tensor:
        """(B, T) step mask -> (B, 1, 3T, 3T) boolean: causal, real keys only (plus self, see module doc)."""
        keys = mask.bool().repeat_interleave(3, dim=1)
        n = keys.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=mask.device).tril()
        eye = torch.eye(n, dtype=torch.bool, device=mask.device)
        return (causal & (keys[:, None, :] | eye))[:, None]


def _step(packed: torch.Tensor, table_row: torch.Tensor, w_in: torch.Tensor, ring_x: torch.Tensor,
          ring_qkv: torch.Tensor, widx: torch.Tensor, ridx: torch.Tensor, x: torch.Tensor, qkv: torch.Tensor,
          hid: torch.Tensor, bufs: list[torch.Tensor], layers: list[list[torch.Tensor]], eps: list[float],
          head: list[torch.Tensor], n_head: int) -> torch.Tensor:
    """One :class:`DTStepper` step over a window of ``n`` tokens (``x``, ``qkv``, ``hid``: the leading n rows of
    the work buffers). TorchScript-able, and scripted once at import when available (as ``planning/engine.py``
    does): it removes most of the Python cost of the ~50 small ops per step. Every matrix product writes into a
    buffer (``bufs``: embedding (1, 3C), new ring rows (3, (2H+1)C), middle-layer [q' | V'] (3K-1, 2HC), last
    query (1, HC), action pre-activation (1, A)): TorchScript splits an out-of-place addmm into mm + add.
    Attention is in folded form (see :meth:`DTStepper._fold_attention`): per head, query q'_h = h M_qk,h +
    b_qk,h (C wide) against keys h itself and values V'_h = h M_vo,h, summed over heads, plus b_vo.
    ``layers[i]`` = [ln_1 w, b, W, b_W, M_vo (HC, C), b_vo, ln_2 w, b, W_fc^T, b_fc, W_proj^T, b_proj] with
    W = [M_qk | I | M_vo per head] for layer 0 (the ring rows), [M_qk | M_vo per head] for the middle layers
    and M_qk for the last one; ``eps`` = [embed_ln, (ln_1, ln_2) per layer, ln_f]; ``head`` = [embed_ln w, b,
    ln_f w, b, W_action^T, b_action, act_half, act_mid]."""
    n, c = x.shape
    hc = n_head * c
    last = len(layers) - 1
    # Embed the three new tokens, LayerNorm, layer-0 [q', h, V']; write them (and only them) into the rings.
    new = F.layer_norm(torch.addmm(table_row, packed, w_in, out=bufs[0]).view(3, c), [c], head[0], head[1], eps[0])
    p = layers[0]
    ring_x.index_copy_(0, widx, new)
    ring_qkv.index_copy_(0, widx, torch.addmm(p[3], F.layer_norm(new, [c], p[0], p[1], eps[1]), p[2], out=bufs[1]))
    torch.index_select(ring_x, 0, ridx, out=x)  # the window, in time order
    torch.index_select(ring_qkv, 0, ridx, out=qkv)
    for i in range(len(layers)):
        p = layers[i]
        if i == 0:
            q, k, v = qkv[:, :hc], qkv[:, hc:hc + c], qkv[:, hc + c:]
        else:
            h = F.layer_norm(x, [c], p[0], p[1], eps[2 * i + 1])
            if i < last:
                qv = torch.addmm(p[3], h, p[2], out=bufs[2][:n])
                q, k, v = qv[:, :hc], h, qv[:, hc:]
            else:  # last layer: one query (s_t) against the window
                scores = h @ torch.addmm(p[3], h[n - 1:], p[2], out=bufs[3]).view(n_head, c).t()  # (n, H)
                mix = torch.softmax(scores, dim=0).t() @ h  # (H, C): attention-weighted LN inputs
                x = x[n - 1:]
                x.addmm_(mix.view(1, -1), p[4]).add_(p[5])
                k = v = q = h  # not used below (TorchScript wants them defined on every path)
        if i < last or i == 0:
            # 4-D inputs: the CPU kernel is ~2x faster than with 3-D ones at this size.
            q4 = q.view(n, n_head, c).transpose(0, 1).unsqueeze(0)
            v4 = v.view(n, n_head, c).transpose(0, 1).unsqueeze(0)
            k4 = k.view(1, 1, n, c).expand(1, n_head, n, c)
            if i == last:  # a one-layer model
                q4, x, hid = q4[:, :, n - 1:], x[n - 1:], hid[:1]
            y = F.scaled_dot_product_attention(q4, k4, v4, is_causal=i != last, scale=1.0)  # (1, H, n, C)
            x.add_(y[0, 0] if n_head == 1 else y[0].sum(0)).add_(p[5])
        else:
            hid = hid[:1]
        torch.addmm(p[9], F.layer_norm(x, [c], p[6], p[7], eps[2 * i + 2]), p[8], out=hid).relu_()
        x.addmm_(hid, p[10]).add_(p[11])
    z = torch.addmm(head[5], F.layer_norm(x, [c], head[2], head[3], eps[-1]), head[4], out=bufs[4])
    return torch.tanh(z).mul_(head[6]).add_(head[7])[0]


class _StepKernel(nn.Module):
    """Holds a :class:`DTStepper`'s buffers, per-phase ring indices and weight lists as attributes, so that a
    (scripted) call passes two arguments instead of ~60 tensors (TorchScript converts every argument on each
    call, ~25 us for the flat :func:`_step` signature)."""

    def __init__(self, w_in: torch.Tensor, table: torch.Tensor, ring_x: torch.Tensor, ring_qkv: torch.Tensor,
                 x: torch.Tensor, qkv: torch.Tensor, hid: torch.Tensor, bufs: list[torch.Tensor],
                 widx: list[torch.Tensor], ridx: list[torch.Tensor], layers: list[list[torch.Tensor]],
                 eps: list[float], head: list[torch.Tensor], n_head: int, context: int) -> None:
        super().__init__()
        self.w_in, self.table, self.ring_x, self.ring_qkv = w_in, table, ring_x, ring_qkv
        self.x, self.qkv, self.hid, self.bufs = x, qkv, hid, bufs
        self.widx, self.ridx, self.layers, self.eps, self.head = widx, ridx, layers, eps, head
        self.n_head, self.context, self.max_t = n_head, context, table.shape[0] - 1

    def forward(self, packed: torch.Tensor, t: int) -> torch.Tensor:
        k = self.context
        phase = t if t < k else k + t % k
        ridx = self.ridx[phase]
        n = ridx.shape[0]
        return _step(packed, self.table[min(t, self.max_t)], self.w_in, self.ring_x, self.ring_qkv, self.widx[phase],
                     ridx, self.x[:n], self.qkv[:n], self.hid[:n], self.bufs, self.layers, self.eps, self.head,
                     self.n_head)


def _script(kernel: _StepKernel) -> nn.Module:
    """TorchScript ``kernel`` (the pattern of ``planning/engine.py``: it removes most of the Python cost of the
    ~50 small ops per step); the eager module if TorchScript is unavailable."""
    try:
        with warnings.catch_warnings():  # deprecated upstream (still the cheapest way to drop Python overhead here)
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.script(kernel)
    except Exception:  # TorchScript unavailable: the same module, eager
        return kernel


class DTStepper:
    """Step-by-step inference over a fixed K-step ring buffer; O(K) work and memory per step.

    A snapshot of the model's weights (rebuild after further training). ``step`` takes the previous
    action (ignored at t = 0), the scaled return-to-go and the normalised state for timestep ``t``
    and returns the action (A,). All buffers are allocated once in ``__init__``.
    """

    def __init__(self, model: DecisionTransformer, jit: bool = True) -> None:
        """``jit``: run the step through TorchScript (default; eager if False or unavailable, see ``self.jit``)."""
        cfg = model.cfg
        self.cfg, self.model = cfg, model
        p = next(model.parameters())
        dev, dt = p.device, p.dtype
        c, a, o, k = cfg.n_embd, cfg.act_dim, cfg.obs_dim, cfg.context
        with torch.no_grad():
            # One block-diagonal matmul embeds [a_{t-1}, R_t, s_t] (A + 1 + O inputs) into three tokens.
            w = torch.zeros(a + 1 + o, 3 * c, device=dev, dtype=dt)
            w[:a, :c] = model.embed_action.weight.T
            w[a, c:2 * c] = model.embed_return.weight[:, 0]
            w[a + 1:, 2 * c:] = model.embed_state.weight.T
            bias = torch.cat((model.embed_action.bias, model.embed_return.bias, model.embed_state.bias))
            # Per-timestep additive table: bias + [E(t-1), E(t), E(t)], clamped like the training forward.
            emb = model.embed_timestep.weight
            n = cfg.max_ep_len
            prev = emb[(torch.arange(n + 1, device=dev) - 1).clamp(0, n - 1)]
            cur = emb[torch.arange(n + 1, device=dev).clamp(max=n - 1)]
            self._w = w
            self._table = (bias + torch.cat((prev, cur, cur), dim=1)).unsqueeze(1).contiguous()  # (n+1, 1, 3C)
        self._tokens = 3 * k  # ring period in tokens
        # Rings of embedded tokens and their layer-0 [q', h, V']; one extra scratch row absorbs a_{-1} at t = 0.
        self._ring_x = torch.zeros(self._tokens + 1, c, device=dev, dtype=dt)
        w0 = (2 * cfg.n_head + 1) * c  # layer-0 ring row: [q' (H*C), h (C), V' (H*C)], see _fold_attention
        self._ring_qkv = torch.zeros(self._tokens + 1, w0, device=dev, dtype=dt)
        self._inp = torch.zeros(1, a + 1 + o, device=dev, dtype=dt)
        # Work buffers for the longest window (3K - 1 tokens); shorter windows use leading rows.
        n = 3 * k - 1
        self._x = torch.zeros(n, c, device=dev, dtype=dt)
        self._qkv = torch.zeros(n, w0, device=dev, dtype=dt)
        self._hid = torch.zeros(n, 4 * c, device=dev, dtype=dt)
        hc = cfg.n_head * c
        self._bufs = [torch.zeros(shape, device=dev, dtype=dt) for shape in
                      ((1, 3 * c), (3, w0), (n, 2 * hc), (1, hc), (1, a))]
        self._h = cfg.n_head
        # Plain tensor lists for :func:`_step` (nn.Module attribute lookups cost ~1 us each at batch 1).
        self._layers = [self._layer_weights(i, blk) for i, blk in enumerate(model.blocks)]
        self._eps = [model.embed_ln.eps, *(e for b in model.blocks for e in (b.ln_1.eps, b.ln_2.eps)),
                     model.ln_f.eps]
        self._head = [model.embed_ln.weight, model.embed_ln.bias, model.ln_f.weight, model.ln_f.bias,
                      model.predict_action.weight.T, model.predict_action.bias, model.act_half, model.act_mid]
        widx, ridx = self._ring_indices(dev)
        kernel = _StepKernel(self._w, self._table, self._ring_x, self._ring_qkv, self._x, self._qkv, self._hid,
                             self._bufs, widx, ridx, self._layers, self._eps, self._head, cfg.n_head, k)
        self._kernel = _script(kernel) if jit else kernel
        self.jit = self._kernel is not kernel
        self.t = 0

    def _fold_attention(self, attn: SelfAttention) -> tuple[torch.Tensor, ...]:
        """Attention with the key and output projections folded into the query and value sides. With h_i =
        LN(x_i) and per head q = Wq h_t + bq, k_i = Wk h_i + bk, v_i = Wv h_i + bv:  q.k_i = (Wk^T q).h_i +
        const(t) (the const cancels in the softmax) and Wo sum_i p_i v_i = sum_i p_i (Wo Wv h_i) + Wo bv
        (sum_i p_i = 1). So per head the query becomes q'_h = M_qk,h h_t + b_qk,h (C wide, 1/sqrt(hd)
        included), the keys are h itself and the values V'_h = M_vo,h h_i, and b_vo = Wo bv + bo is added
        once. For one head (the official DT size) this halves the projection work of a full-window layer
        (2 C^2 instead of 4 C^2 per token); the last layer, which needs one query only, no longer projects the
        window at all. Folded in float64 (exact up to float rounding; checked against the full forward in
        the tests). Returns M_qk (C, H*C), b_qk (H*C), M_vo (H*C, C), b_vo (C)."""
        c, nh = self.cfg.n_embd, self._h
        hd = c // nh
        with torch.no_grad():
            w, b = attn.c_attn.weight.double(), attn.c_attn.bias.double()
            wq, wk, wv = (w[j * c:(j + 1) * c].view(nh, hd, c) for j in range(3))
            bq, bv = b[:c].view(nh, hd), b[2 * c:]
            scale = 1.0 / math.sqrt(hd)
            m_qk = torch.einsum("hdi,hdj->ihj", wq, wk).reshape(c, nh * c) * scale  # h_t -> (H, C)
            b_qk = torch.einsum("hd,hdj->hj", bq, wk).reshape(nh * c) * scale
            wo = attn.c_proj.weight.double().view(c, nh, hd)
            m_vo = torch.einsum("ohd,hdj->hjo", wo, wv).reshape(nh * c, c)  # (H, C) mix -> C
            b_vo = attn.c_proj.weight.double() @ bv + attn.c_proj.bias.double()
        dt = attn.c_attn.weight.dtype
        return m_qk.to(dt), b_qk.to(dt), m_vo.to(dt), b_vo.to(dt)

    def _layer_weights(self, i: int, blk: Block) -> list[torch.Tensor]:
        """Block ``i``'s tensors in the layout :func:`_step` expects (folded attention, transposed weights)."""
        c, nh = self.cfg.n_embd, self._h
        m_qk, b_qk, m_vo, b_vo = self._fold_attention(blk.attn)
        m_vo_cat = m_vo.view(nh, c, c).permute(1, 0, 2).reshape(c, nh * c)  # h -> [V'_1 | ... | V'_H]
        if i == self.cfg.n_layer - 1 and i > 0:
            w, b = m_qk, b_qk
        elif i == 0:  # ring rows [q', h, V'] (the identity block copies h exactly)
            eye = torch.eye(c, device=m_qk.device, dtype=m_qk.dtype)
            w = torch.cat((m_qk, eye, m_vo_cat), dim=1)
            b = torch.cat((b_qk, torch.zeros(c + nh * c, device=b_qk.device, dtype=b_qk.dtype)))
        else:
            w = torch.cat((m_qk, m_vo_cat), dim=1)
            b = torch.cat((b_qk, torch.zeros(nh * c, device=b_qk.device, dtype=b_qk.dtype)))
        return [blk.ln_1.weight, blk.ln_1.bias, w.contiguous(), b, m_vo, b_vo, blk.ln_2.weight, blk.ln_2.bias,
                blk.mlp.c_fc.weight.T, blk.mlp.c_fc.bias, blk.mlp.c_proj.weight.T, blk.mlp.c_proj.bias]

    def _ring_indices(self, dev: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per step phase (t if t < K else K + t % K): ring rows written (3) and read (the window, in time
        order), built once so that a step creates no index tensors."""
        k, p = self.cfg.context, self._tokens
        widx, ridx = [], []
        for t in range(2 * k):
            first = 3 * max(0, t - k + 1)
            widx.append(torch.tensor([(3 * t - 1) % p if t > 0 else p, (3 * t) % p, (3 * t + 1) % p], device=dev))
            ridx.append(torch.tensor([f % p for f in range(first, 3 * t + 2)], device=dev))
        return widx, ridx

    def reset(self) -> None:
        self.t = 0

    def step(self, prev_action: torch.Tensor | None, rtg: float, state: torch.Tensor) -> torch.Tensor:
        """Convenience wrapper around :meth:`step_packed` (previous action ignored at t = 0)."""
        a = self.cfg.act_dim
        inp = self._inp[0]
        if prev_action is not None:
            inp[:a] = prev_action
        inp[a] = rtg
        inp[a + 1:] = state
        return self.step_packed(self._inp)

    @torch.inference_mode()
    def step_packed(self, packed: torch.Tensor) -> torch.Tensor:
        """``packed`` (1, A + 1 + O) = [a_{t-1}, scaled R_t, normalised s_t] -> action (A,) for step t."""
        t = self.t
        out = self._kernel.forward(packed, t)  # .forward skips nn.Module.__call__'s hook handling
        self.t = t + 1
        return out


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


REQUIRED_META = ("config", "obs_mean", "obs_std", "rtg_scale", "target_returns")


def save_dt(path: str | Path, model: DecisionTransformer, meta: dict[str, Any]) -> Path:
    """Write a kind "dt" checkpoint; ``meta`` must carry obs_mean/obs_std, rtg_scale, target_returns."""
    missing = [k for k in REQUIRED_META if k != "config" and k not in meta]
    if missing:
        raise ValueError(f"DT checkpoint metadata lacks {missing}")
    low, high = model.cfg.bounds()
    full = {**meta, "kind": "dt", "config": model.cfg.to_dict(), "context": model.cfg.context,
            "max_ep_len": model.cfg.max_ep_len, "action_low": list(low), "action_high": list(high),
            "obs_dim": model.cfg.obs_dim, "act_dim": model.cfg.act_dim}
    return save_checkpoint(path, dict(model.state_dict()), full)


def load_dt(path: str | Path, device: str | torch.device = "cpu") -> tuple[DecisionTransformer, dict[str, Any]]:
    """Load a kind "dt" checkpoint into an eval-mode model; raises CheckpointError on any problem."""
    tensors, meta = load_checkpoint(path, kind="dt", device=device)
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: DT checkpoint metadata lacks {missing}")
    try:
        cfg = DTConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid DT config in metadata ({e})") from e
    for key, n in (("obs_mean", cfg.obs_dim), ("obs_std", cfg.obs_dim)):
        if len(meta[key]) != n:
            raise CheckpointError(f"{path}: {key} has {len(meta[key])} values, expected obs_dim={n}")
    model = DecisionTransformer(cfg)
    load_state_into(model, tensors, source=str(path))
    return model.to(device).eval(), meta
