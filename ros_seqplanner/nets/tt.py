"""Trajectory Transformer (Janner et al., 2021): a GPT over discretized transitions, with an exact K/V cache.

Token layout (see notes/TT_API.md): a transition is D = O + A + 2 tokens
``[obs_0..obs_{O-1}, act_0..act_{A-1}, reward, value]``; token id = bin + N * (dimension index), one shared
STOP id = N * D. Trajectory position p has dimension ``p % D``; the logits at p predict the token at p + 1,
i.e. dimension ``(p + 1) % D``, with output head ``p % D`` (the official ``EinLinear`` indexes heads by the
*input* token's position in the transition; ``head_dim_for_position`` gives the predicted dimension).

Attention: causal, and no query attends to a value token (also the value token itself), as in the official
code. With ``goal_conditioned`` O goal-observation tokens are prepended with their own position embeddings;
trajectory positions attend to all of them, goal positions attend causally among themselves only.

Deviation from the official code: it crops the context to the block size and re-bases positions on every
forward pass while planning. Here the block (``max_transitions``) is meant to cover the planner's
context + horizon (e.g. 5 + 15 transitions), positions are absolute, and exceeding the block is an error,
which is what makes an exact K/V cache possible.

Inference API (planner): ``prefill`` once per plan (shared prefix K/V, batch 1), ``new_cache`` for per-beam
buffers, ``decode`` / ``decode_many`` to append tokens for all beams at once. Decoding attends to the shared
prefix by a per-head batched matmul (no copy per beam) and to the beam's own buffer; results equal the full
forward pass (tested). Decoding is inference-only: no dropout is applied there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ros_seqplanner.nets.checkpoint import CheckpointError, load_checkpoint, load_state_into, save_checkpoint
from ros_seqplanner.nets.config import config_from_dict
from ros_seqplanner.nets.discretizer import Discretizer


@dataclass(frozen=True)
class TTConfig:
    obs_dim: int
    act_dim: int
    n_bins: int = 100
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.1
    max_transitions: int = 20  # block size in transitions; must cover planner context + horizon
    action_weight: float = 5.0
    reward_weight: float = 1.0
    value_weight: float = 1.0
    goal_conditioned: bool = False
    # Dropout on the attention weights; None = ``dropout`` (official: attn_pdrop = 0.1). On CPU it is about
    # half the training step time (no fused kernel for mask + dropout), so CPU runs may want 0.
    attn_dropout: float | None = None

    def __post_init__(self) -> None:
        for name in ("obs_dim", "act_dim", "n_bins", "n_layer", "n_head", "n_embd", "max_transitions"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")

    @property
    def transition_dim(self) -> int:
        return self.obs_dim + self.act_dim + 2

    @property
    def block_size(self) -> int:
        return self.max_transitions * self.transition_dim

    @property
    def vocab_size(self) -> int:
        return self.n_bins * self.transition_dim + 1

    @property
    def stop_token(self) -> int:
        return self.n_bins * self.transition_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TTConfig:
        return config_from_dict(cls, d)


# ---------------------------------------------------------------------------------------------- inference state
@dataclass
class PrefixState:
    """K/V of the shared prefix (batch 1), computed once per plan by :meth:`TrajectoryTransformer.prefill` (batch B
    when the planner re-encodes its beams' windows)."""

    k: tuple[torch.Tensor, ...]  # per layer (B, H, G + T0, hd)
    v: tuple[torch.Tensor, ...]
    length: int  # trajectory tokens T0 (goal tokens not counted)
    goal_len: int  # G (0 without goal)
    key_valid: torch.Tensor  # (G + T0,) bool: key may be attended by trajectory queries (not a value token)
    last_logits: torch.Tensor  # (B, N+1) logits at trajectory position T0 - 1


class KVCache:
    """Pre-allocated per-beam K/V buffers (n_layer, B, H, max_new_tokens, hd); ``length`` tokens are filled.

    ``static_shapes=True`` makes :meth:`TrajectoryTransformer.decode` attend over the whole buffer with a
    length mask computed from the device tensor ``length_t`` (constant shapes, CUDA-graph friendly);
    the default slices the buffer to the filled length (fewer FLOPs on CPU). Results are identical.
    """

    def __init__(self, n_layer: int, batch: int, n_head: int, max_new_tokens: int, head_dim: int,
                 device: torch.device | str, dtype: torch.dtype, static_shapes: bool = False) -> None:
        shape = (n_layer, batch, n_head, max_new_tokens, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.length_t = torch.zeros((), dtype=torch.long, device=device)
        self.static_shapes = static_shapes

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def reset(self) -> None:
        self.length = 0
        self.length_t.zero_()

    def reorder(self, index: torch.Tensor) -> None:
        """Beam i becomes old beam index[i] (permute/duplicate), in place; index is (B,) long."""
        if index.ndim != 1 or index.shape[0] != self.batch:
            raise ValueError(f"reorder index must have shape ({self.batch},), got {tuple(index.shape)}")
        n = self.capacity if self.static_shapes else self.length
        if n == 0:
            return
        index = index.to(self.k.device)
        self.k[:, :, :, :n] = self.k[:, :, :, :n].index_select(1, index)
        self.v[:, :, :, :n] = self.v[:, :, :, :n].index_select(1, index)


# ---------------------------------------------------------------------------------------------- modules
class SelfAttention(nn.Module):
    def __init__(self, cfg: TTConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.proj._residual = True  # scaled init (GPT-2)
        self.dropout = cfg.dropout if cfg.attn_dropout is None else cfg.attn_dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        shape = (b, t, self.n_head, self.head_dim)
        return tuple(z.view(shape).transpose(1, 2) for z in (q, k, v))  # (B, H, T, hd)

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        b, h, t, hd = y.shape
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, h * hd)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.split(x)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.merge(y), k, v


class Block(nn.Module):
    """Pre-LayerNorm transformer block (nanoGPT)."""

    def __init__(self, cfg: TTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.fc_out = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.fc_out._residual = True
        self.mlp_drop = nn.Dropout(cfg.dropout)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp_drop(self.fc_out(F.gelu(self.fc(self.ln2(x)))))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, k, v = self.attn(self.ln1(x), mask)
        x = x + a
        return x + self.mlp(x), k, v


class TrajectoryTransformer(nn.Module):
    def __init__(self, cfg: TTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, e = cfg.transition_dim, cfg.n_embd
        self.tok_emb = nn.Embedding(cfg.vocab_size, e)
        self.pos_emb = nn.Parameter(torch.zeros(cfg.block_size, e))
        self.goal_pos_emb = nn.Parameter(torch.zeros(cfg.obs_dim, e)) if cfg.goal_conditioned else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(e)
        # One head per position-in-transition (official EinLinear, no bias): (D, n_embd, N + 1).
        self.head = nn.Parameter(torch.empty(d, e, cfg.n_bins + 1))
        self.head._matmul_weight = True  # weight decay applies (training/common.adamw_param_groups)
        dims = torch.arange(cfg.block_size) % d
        self.register_buffer("pos_dim", dims, persistent=False)  # dimension of each trajectory position
        w = torch.ones(d)
        w[cfg.obs_dim:cfg.obs_dim + cfg.act_dim] = cfg.action_weight
        w[-2], w[-1] = cfg.reward_weight, cfg.value_weight
        self.register_buffer("dim_weight", w, persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        std = 0.02
        for m in self.modules():
            if isinstance(m, nn.Linear):
                scale = 1.0 / math.sqrt(2 * self.cfg.n_layer) if getattr(m, "_residual", False) else 1.0
                nn.init.normal_(m.weight, 0.0, std * scale)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, std)
        nn.init.normal_(self.pos_emb, 0.0, std)  # official TT starts pos_emb at zeros; nanoGPT-style here
        if self.goal_pos_emb is not None:
            nn.init.normal_(self.goal_pos_emb, 0.0, std)
        nn.init.normal_(self.head, 0.0, std)

    # ------------------------------------------------------------------------------------------ helpers
    def head_dim_for_position(self, p: int) -> int:
        """Dimension (0..D-1) predicted by the logits at trajectory position p."""
        return (p + 1) % self.cfg.transition_dim

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _attn_mask(self, t: int, g: int, device: torch.device) -> torch.Tensor:
        """(g+t, g+t) bool, True = may attend. Goal block causal; trajectory causal minus value keys."""
        d = self.cfg.transition_dim
        n = g + t
        i = torch.arange(n, device=device)
        causal = i[None, :] <= i[:, None]
        traj_q = (i >= g)[:, None]
        key_is_goal = (i < g)[None, :]
        key_is_value = ((i - g) % d == d - 1)[None, :] & ~key_is_goal
        allowed = causal & ~key_is_value
        return torch.where(traj_q & key_is_goal, torch.ones_like(allowed), allowed)

    def _embed(self, tokens: torch.Tensor, goal: torch.Tensor | None, pos0: int = 0) -> tuple[torch.Tensor, int]:
        t = tokens.shape[1]
        if pos0 + t > self.cfg.block_size:
            raise ValueError(f"sequence of {pos0 + t} tokens exceeds block size {self.cfg.block_size} "
                             f"({self.cfg.max_transitions} transitions x {self.cfg.transition_dim})")
        x = self.tok_emb(tokens) + self.pos_emb[pos0:pos0 + t]
        g = 0
        if self.cfg.goal_conditioned:
            if goal is None:
                raise ValueError("this model is goal-conditioned: pass goal tokens (B, obs_dim)")
            if goal.shape[-1] != self.cfg.obs_dim or goal.shape[0] != tokens.shape[0]:
                raise ValueError(f"goal must be ({tokens.shape[0]}, {self.cfg.obs_dim}), got {tuple(goal.shape)}")
            x = torch.cat([self.tok_emb(goal) + self.goal_pos_emb, x], dim=1)
            g = self.cfg.obs_dim
        elif goal is not None:
            raise ValueError("goal given but the model is not goal-conditioned")
        return self.drop(x), g

    def _logits(self, h: torch.Tensor, pos0: int) -> torch.Tensor:
        """h (B, T, E) at trajectory positions pos0.. -> (B, T, N+1) via heads W[p % D]."""
        b, t, e = h.shape
        d = self.cfg.transition_dim
        h = self.ln_f(h)
        if pos0 % d or t < d:  # short or unaligned (prefill's last position): gather the heads
            return torch.einsum("bte,ten->btn", h, self.head[self.pos_dim[pos0:pos0 + t]])
        # Aligned: view as (B, transitions, D, E) and apply head d to slot d (no (T, E, N+1) gather).
        pad = (-t) % d
        h = F.pad(h, (0, 0, 0, pad)).view(b, (t + pad) // d, d, e)
        return torch.einsum("bmde,den->bmdn", h, self.head).reshape(b, t + pad, -1)[:, :t]

    # ------------------------------------------------------------------------------------------ full forward
    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None, goal: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """tokens (B, T) global ids -> logits (B, T, N+1) (float32) and the weighted CE loss if targets given."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be (B, T), got {tuple(tokens.shape)}")
        x, g = self._embed(tokens, goal)
        mask = self._attn_mask(tokens.shape[1], g, tokens.device)
        for block in self.blocks:
            x, _, _ = block(x, mask)
        logits = self._logits(x[:, g:], 0).float()
        loss = None if targets is None else self.loss(logits, targets, loss_mask)
        return logits, loss

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy over each target's dimension (N bins + stop), weighted per dimension (action x5)
        and by ``loss_mask``, normalised by the mask sum. (The official code averages over all positions,
        masked ones included; normalising by the mask makes the loss independent of padding.)"""
        cfg = self.cfg
        tgt_dim = torch.arange(1, targets.shape[1] + 1, device=targets.device) % cfg.transition_dim
        local = targets - cfg.n_bins * tgt_dim
        local = torch.where(targets == cfg.stop_token, torch.full_like(local, cfg.n_bins), local)
        if bool(((local < 0) | (local > cfg.n_bins)).any()):
            raise ValueError("targets hold token ids of the wrong dimension for their position (expected bin + "
                             "N * ((p + 1) % D) or the stop token)")
        ce = F.cross_entropy(logits.reshape(-1, cfg.n_bins + 1), local.reshape(-1), reduction="none").view_as(targets)
        w = self.dim_weight[tgt_dim].expand_as(ce)
        if loss_mask is not None:
            w = w * loss_mask.to(ce.dtype)
            return (ce * w).sum() / loss_mask.sum().clamp_min(1.0)
        return (ce * w).mean()

    # ------------------------------------------------------------------------------------------ K/V cache
    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor, goal: torch.Tensor | None = None) -> PrefixState:
        """Run the shared prefix (1, T0) once; keep its K/V per layer and the logits at its last position.
        Also takes B > 1 equal-length prefixes (B, T0) (the planner's window re-encode; ``goal`` then (B, O))."""
        if tokens.ndim != 2 or tokens.shape[0] < 1 or tokens.shape[1] < 1:
            raise ValueError(f"prefill takes prefixes (B, T0 >= 1), got {tuple(tokens.shape)}")
        x, g = self._embed(tokens, goal)
        mask = self._attn_mask(tokens.shape[1], g, tokens.device)
        ks, vs = [], []
        for block in self.blocks:
            x, k, v = block(x, mask)
            ks.append(k)
            vs.append(v)
        t0 = tokens.shape[1]
        key_valid = mask[-1].clone()  # what the last query may see = what every later query may see
        logits = self._logits(x[:, -1:], t0 - 1)[:, 0].float()
        return PrefixState(tuple(ks), tuple(vs), t0, g, key_valid, logits)

    def new_cache(self, batch: int, max_new_tokens: int, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32, static_shapes: bool = False) -> KVCache:
        if batch < 1 or max_new_tokens < 1:
            raise ValueError("new_cache needs batch >= 1 and max_new_tokens >= 1")
        device = device if device is not None else self.head.device
        cfg = self.cfg
        return KVCache(cfg.n_layer, batch, cfg.n_head, max_new_tokens, cfg.n_embd // cfg.n_head,
                       device, dtype, static_shapes)

    @torch.no_grad()
    def decode(self, token: torch.Tensor, prefix: PrefixState, cache: KVCache) -> torch.Tensor:
        """Append one token per beam (B,) at position prefix.length + cache.length -> (B, N+1) logits there."""
        return self.decode_many(token.reshape(-1, 1), prefix, cache)[:, 0]

    @torch.no_grad()
    def decode_many(self, tokens: torch.Tensor, prefix: PrefixState, cache: KVCache) -> torch.Tensor:
        """Append k tokens per beam (B, k) -> (B, k, N+1) logits; equals k calls of :meth:`decode`."""
        b, kk = tokens.shape
        if b != cache.batch:
            raise ValueError(f"{b} beams but the cache holds {cache.batch}")
        if cache.length + kk > cache.capacity:
            raise ValueError(f"cache full: {cache.length} + {kk} > max_new_tokens {cache.capacity}")
        if prefix.k[0].shape[0] != 1:
            raise ValueError(f"decode takes a shared prefix (batch 1), got batch {prefix.k[0].shape[0]}")
        if prefix.length + cache.length + kk > self.cfg.block_size:
            raise ValueError(f"position {prefix.length + cache.length + kk - 1} is beyond the block size "
                             f"{self.cfg.block_size}; raise TTConfig.max_transitions at training time")
        d = self.cfg.transition_dim
        # Positions of the new tokens relative to the cache start, as device tensors (no host sync).
        new_idx = cache.length_t + torch.arange(kk, device=tokens.device)  # (k,)
        pos = prefix.length + new_idx
        x = self.tok_emb(tokens) + self.pos_emb[pos]
        s = cache.capacity if cache.static_shapes else cache.length + kk
        j = torch.arange(s, device=tokens.device)
        # Cache key j may be seen by new query i iff j <= new_idx[i] and j is not a value token.
        own_valid = (j[None, :] <= new_idx[:, None]) & (((prefix.length + j) % d) != d - 1)[None, :]  # (k, S)
        pre_valid = prefix.key_valid  # (Lp,)
        for li, block in enumerate(self.blocks):
            attn = block.attn
            q, k, v = attn.split(block.ln1(x))  # (B, H, k, hd)
            cache.k[li].index_copy_(2, new_idx, k.to(cache.k.dtype))
            cache.v[li].index_copy_(2, new_idx, v.to(cache.v.dtype))
            y = _two_part_attention(q, prefix.k[li][0], prefix.v[li][0], pre_valid,
                                    cache.k[li][:, :, :s], cache.v[li][:, :, :s], own_valid)
            x = x + attn.proj(y.transpose(1, 2).reshape(b, kk, -1))
            x = x + block.fc_out(F.gelu(block.fc(block.ln2(x))))
        cache.length += kk
        cache.length_t += kk
        w = self.head[pos % d]  # (k, E, N+1)
        h = self.ln_f(x)
        return torch.einsum("bke,ken->bkn", h, w.to(h.dtype)).float()


def _two_part_attention(q: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, pre_valid: torch.Tensor,
                        kc: torch.Tensor, vc: torch.Tensor, own_valid: torch.Tensor) -> torch.Tensor:
    """Softmax attention of q (B, H, k, hd) over shared prefix keys kp/vp (H, Lp, hd) and per-beam keys
    kc/vc (B, H, S, hd), with validity masks pre_valid (Lp,) and own_valid (k, S). The prefix is used via a
    per-head batched matmul over all B*k queries, so it is never copied per beam."""
    b, h, k, hd = q.shape
    scale = 1.0 / math.sqrt(hd)
    kp, vp, kc, vc = (z.to(q.dtype) for z in (kp, vp, kc, vc))
    qh = q.permute(1, 0, 2, 3).reshape(h, b * k, hd)  # (H, B*k, hd)
    s_pre = torch.bmm(qh, kp.transpose(1, 2)).view(h, b, k, -1).permute(1, 0, 2, 3) * scale  # (B, H, k, Lp)
    s_own = torch.matmul(q, kc.transpose(-1, -2)) * scale  # (B, H, k, S)
    neg = torch.finfo(s_pre.dtype).min
    s_pre = s_pre.masked_fill(~pre_valid, neg)
    s_own = s_own.masked_fill(~own_valid, neg)
    probs = torch.softmax(torch.cat([s_pre, s_own], dim=-1).float(), dim=-1).to(q.dtype)
    lp = kp.shape[1]
    p_pre, p_own = probs[..., :lp], probs[..., lp:]
    y_pre = torch.bmm(p_pre.permute(1, 0, 2, 3).reshape(h, b * k, lp), vp).view(h, b, k, hd).permute(1, 0, 2, 3)
    return y_pre + torch.matmul(p_own, vc)  # (B, H, k, hd)


# ---------------------------------------------------------------------------------------------- checkpoints
def save_tt(path: str | Path, model: TrajectoryTransformer, discretizer: Discretizer,
            meta: dict[str, Any] | None = None) -> Path:
    """Write ``path.safetensors`` + ``path.json`` (config, discretizer edges, and ``meta``). Returns the JSON path."""
    raw = model.module if hasattr(model, "module") else model  # unwrap DistributedDataParallel
    cfg = raw.cfg
    if discretizer.dim != cfg.transition_dim or discretizer.n_bins != cfg.n_bins:
        raise ValueError(f"discretizer ({discretizer.dim} dims x {discretizer.n_bins} bins) does not fit the model "
                         f"({cfg.transition_dim} x {cfg.n_bins})")
    full = dict(meta or {})
    full.update(kind="tt", model_config=cfg.to_dict(), discretizer=discretizer.to_dict(),
                obs_dim=cfg.obs_dim, act_dim=cfg.act_dim)
    return save_checkpoint(path, dict(raw.state_dict()), full)


def load_tt(path: str | Path, device: str | torch.device = "cpu"
            ) -> tuple[TrajectoryTransformer, Discretizer, dict[str, Any]]:
    """Load a TT checkpoint (eval mode). Raises CheckpointError for missing/truncated/mismatched files."""
    tensors, meta = load_checkpoint(path, kind="tt", device="cpu")
    try:
        cfg = TTConfig.from_dict(meta["model_config"])
        disc = Discretizer.from_dict(meta["discretizer"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad TT metadata ({e})") from e
    if disc.dim != cfg.transition_dim or disc.n_bins != cfg.n_bins:
        raise CheckpointError(f"{path}: discretizer ({disc.dim} x {disc.n_bins}) does not fit the model config "
                              f"({cfg.transition_dim} x {cfg.n_bins})")
    model = TrajectoryTransformer(cfg)
    load_state_into(model, tensors, source=str(path))
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: tensor {name} contains NaN/inf")
    return model.to(device).eval(), disc, meta

