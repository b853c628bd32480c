"""Beam-search decoder for a :class:`~ros_seqplanner.nets.tt.TrajectoryTransformer`: the inner loop of the
planner, written for few ops per token, in torch (this module: GPU, bf16, CUDA graphs, and the CPU fallback).
On CPU in fp32 the planner uses :class:`~ros_seqplanner.planning.ckernel.CBeamDecoder` instead (one fused C
call per token, tree-structured beam history, ~1.7x faster); both produce the same plans.

Why not ``model.decode``: the generic per-beam cache has to be physically reordered (all W*E beams, all
cached tokens) twice per planning step, and every candidate reads its own full copy of the history.
Beam search has more structure, which this decoder exploits:

- **Shared prefix.** The context (prefilled once by ``model.prefill``) is kept once per layer as
  (H, hd, Tp) keys / (H, Tp, hd) values, only the keys a trajectory query may see (value-token keys,
  masked for every query, are dropped, so no mask is needed), and attended by one batched matmul per
  head for all candidates (never copied per beam).
- **History at beam width.** Tokens of *finished* planning steps live in one buffer per layer with a
  row per beam, head-major: (2 [k, v], H, W, T, hd). The E expansions of a
  beam share it: their queries are stacked as (H*W, E, hd), so the history is read once per beam, not
  once per candidate, and never copied for expansion.
- **Step region in the same buffer.** The action and reward tokens of the current planning step are
  written behind the history of their beam's row, candidate e at columns ``hist_len + e*S + j``; a
  precomputed additive mask hides a candidate's siblings and its own not-yet-written columns. So one
  batched matmul covers history + step tokens (no separate step-block attention, no concatenation of
  per-part outputs), and one softmax covers prefix + history + step. After the top-W selection, history
  rows are gathered by parent (``index_select`` into a second buffer, ping-pong, no allocation) and the
  winners' step columns appended: one copy per planning step instead of two full reorders.
- **Value tokens are never cached**: no query attends to them (official mask), so they are only run
  as queries (to get the logits of the next observation).
- Attention scale folded into the query weights; embedding by per-dimension table slices (no id
  arithmetic); heads by a contiguous (C, N+1) slice per dimension; linear weights as contiguous (in, out)
  copies (one ``addmm`` each); buffers allocated once per shape.

Numerics equal the model's forward pass up to float rounding (tested through the planner: identical
plans to a full-recompute reference). The decoder snapshots the weights at construction and mirrors
``nets/tt.py``'s pre-LN ``Block`` (fused ``qkv``, ``proj``, ``fc``/``fc_out``, exact GELU, per-dimension
``head``); a change there shows up as a failing planner exactness test.

CPU and GPU run the same code. By default :meth:`BeamDecoder.step` slices buffers to the filled length
(fewer FLOPs; shapes change each token), which is what CPU wants. ``static=True`` attends over whole
buffers with additive length masks and takes positions from device tensors (constant shapes, no
host->device traffic per token); it is tested on CPU for identical plans. On CUDA it is the path captured
into CUDA graphs (``cuda_graphs``, default on for static CUDA decoders), one graph per kind of token.
The graph capture itself is UNTESTED on the dev machine (no GPU).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from ros_seqplanner.nets.tt import PrefixState, TrajectoryTransformer

# Per-layer weights, in the order :func:`_blocks` reads them. w_* are contiguous (in, out) copies of the (out, in)
# weights, so each linear layer is one ``addmm`` on a plain row-major operand.
_LAYER_FIELDS = ("ln1_w", "ln1_b", "w_qkv", "b_qkv", "w_o", "b_o", "ln2_w", "ln2_b", "w_fc", "b_fc", "w_out", "b_out")


def layer_weights(model: TrajectoryTransformer, convert) -> list[list[torch.Tensor]]:
    """Per block, the decoder's weights in :data:`_LAYER_FIELDS` order, each through ``convert`` (device / dtype
    copy): linear weights as contiguous (in, out), the attention scale 1/sqrt(head dim) folded into the query
    rows of the fused qkv weight and bias. Shared by the torch and the C decoder."""
    c = model.cfg.n_embd
    scale = 1.0 / math.sqrt(c // model.cfg.n_head)
    layers = []
    for blk in model.blocks:
        w, b = convert(blk.attn.qkv.weight), convert(blk.attn.qkv.bias)
        w[:c] *= scale
        b[:c] *= scale
        lay = {"ln1_w": convert(blk.ln1.weight), "ln1_b": convert(blk.ln1.bias), "w_qkv": w.t().contiguous(),
               "b_qkv": b, "w_o": convert(blk.attn.proj.weight).t().contiguous(), "b_o": convert(blk.attn.proj.bias),
               "ln2_w": convert(blk.ln2.weight), "ln2_b": convert(blk.ln2.bias),
               "w_fc": convert(blk.fc.weight).t().contiguous(), "b_fc": convert(blk.fc.bias),
               "w_out": convert(blk.fc_out.weight).t().contiguous(), "b_out": convert(blk.fc_out.bias)}
        layers.append([lay[k] for k in _LAYER_FIELDS])
    return layers


def _blocks(x: torch.Tensor, layers: list[list[torch.Tensor]], eps: float, kp: list[torch.Tensor],
            vp: list[torch.Tensor], bufs: list[torch.Tensor], hk: list[torch.Tensor], hv: list[torch.Tensor],
            w: int, e: int, write: bool, col: int, col_t: torch.Tensor | None, s_cols: int, n_h: int,
            hist_len: int, mask: torch.Tensor | None, pmask: torch.Tensor | None) -> torch.Tensor:
    """The transformer blocks for one token per row (pre-LN, as ``nets/tt.py``'s ``Block``). TorchScript-able
    (scripted once at import when available: it removes most of the Python cost of the ~40 small ops per
    layer). x (B=w*e, C). K/V of the token are written (when ``write``) into ``bufs`` (2, H, W, T, hd) at
    columns ``col + e'*s_cols`` (dynamic) or ``col_t`` (static), then attend the shared prefix ``kp``/``vp``
    (H, hd, Tp)/(H, Tp, hd) and the first ``n_h`` columns of the beam's buffer ``hk``/``hv`` (H*W, T, hd).
    ``mask`` is added to the buffer scores from column ``hist_len`` on (dynamic: step-region visibility)
    or to all of them together with ``pmask`` on the padded prefix (static)."""
    b, c = x.shape
    h = kp[0].shape[0]
    hd = c // h
    for li in range(len(layers)):
        p = layers[li]
        qkv = torch.addmm(p[3], F.layer_norm(x, [c], p[0], p[1], eps), p[2])
        q = qkv[:, :c].view(b, h, hd).transpose(0, 1).contiguous()  # (H, B, hd), B = (W, E)
        if write:  # candidate e' of beam w' -> column col + e'*S of row w'
            kv = qkv[:, c:].view(w, e, 2, h, hd).permute(2, 3, 0, 1, 4)  # (2, H, W, E, hd)
            if col_t is None:
                bufs[li][:, :, :, col:col + (e - 1) * s_cols + 1:s_cols].copy_(kv)
            else:
                bufs[li].index_copy_(3, col_t, kv)
        # attention: prefix (one matmul per head for all rows) + the beam's buffer (batched over head x beam,
        # the e candidates of a beam as rows); one softmax over the concatenated scores
        tp = kp[li].shape[-1]
        s_p = torch.bmm(q, kp[li])
        s_h = torch.bmm(q.view(h * w, e, hd), hk[li][:, :n_h].transpose(1, 2))
        if pmask is not None and mask is not None:
            s_p += pmask
            s_h += mask
        elif mask is not None:
            s_h[:, :, hist_len:] += mask
        att = torch.softmax(torch.cat([s_p.view(h, w, e, tp), s_h.view(h, w, e, n_h)], dim=-1), dim=-1)
        y = torch.bmm(att[:, :, :, tp:].reshape(h * w, e, n_h), hv[li][:, :n_h]).view(h, b, hd)
        y += torch.bmm(att[:, :, :, :tp].reshape(h, b, tp), vp[li])  # baddbmm_ here is ~2x slower (MKL)
        x = x + torch.addmm(p[5], y.transpose(0, 1).reshape(b, c), p[4])
        x = x + torch.addmm(p[11], F.gelu(torch.addmm(p[9], F.layer_norm(x, [c], p[6], p[7], eps), p[8])), p[10])
    return x


try:
    with warnings.catch_warnings():  # deprecated upstream (still the cheapest way to drop Python overhead here)
        warnings.simplefilter("ignore", DeprecationWarning)
        _blocks_fast = torch.jit.script(_blocks)
except Exception:  # TorchScript unavailable: the same function, eager
    _blocks_fast = _blocks


class BeamDecoder:
    """Cached decoding for beam search. Usage per plan: :meth:`set_prefix`, :meth:`allocate` (no-op if
    the shapes are unchanged), then :meth:`step` for each token and :meth:`merge` after each selection."""

    def __init__(self, model: TrajectoryTransformer, dtype: torch.dtype | None = None, static: bool = False,
                 cuda_graphs: bool | None = None, jit: bool = True) -> None:
        """``jit``: run the blocks through the TorchScript'ed :func:`_blocks` (default; eager if False)."""
        cfg = model.cfg
        p0 = model.head
        self.cfg = cfg
        self.device = p0.device
        self.dtype = dtype or p0.dtype
        self.C, self.H = cfg.n_embd, cfg.n_head
        self.hd = self.C // self.H
        self.N, self.D = cfg.n_bins, cfg.transition_dim

        def t(x: torch.Tensor) -> torch.Tensor:
            return x.detach().to(self.device, self.dtype).contiguous().clone()

        eps = {blk.ln1.eps for blk in model.blocks} | {blk.ln2.eps for blk in model.blocks}
        if len(eps) != 1:
            raise ValueError("BeamDecoder expects one LayerNorm eps for all blocks")
        self.eps = float(eps.pop())
        self.layers: list[list[torch.Tensor]] = layer_weights(model, t)
        self.jit = jit
        self.ln_f = (t(model.ln_f.weight), t(model.ln_f.bias), model.ln_f.eps)
        tok = t(model.tok_emb.weight)
        self.tok = [tok[d * self.N:(d + 1) * self.N] for d in range(self.D)]  # per-dimension bin tables
        self.pos = t(model.pos_emb)
        head = t(model.head)  # (D, C, N+1): head[p % D] gives the logits at position p
        self.head = [head[d] for d in range(self.D)]
        self._shape: tuple[int, int, int, int] | None = None
        self.kp: list[torch.Tensor] = []
        self.vp: list[torch.Tensor] = []
        self.pmask: torch.Tensor | None = None
        # Static-shape mode (for CUDA graphs; also runs, and is tested, on CPU): attention over whole
        # buffers with additive length masks; positions, write columns and dimension come from device
        # tensors, so one captured graph serves every token of a kind.
        self.static = static
        self.cuda_graphs = bool(static and self.device.type == "cuda" if cuda_graphs is None else cuda_graphs)
        if self.cuda_graphs and not (static and self.device.type == "cuda"):
            raise ValueError("cuda_graphs needs static=True and a CUDA model")
        if static:
            self.tok_all, self.head_all = tok, head
            self.max_prefix = cfg.block_size + (cfg.obs_dim if cfg.goal_conditioned else 0)
        self._meta_cache: dict[tuple[int, int, int], torch.Tensor] = {}
        self._graphs: dict[tuple, tuple] = {}

    # ------------------------------------------------------------------------------------------ setup
    def set_prefix(self, prefix: PrefixState) -> None:
        """Start a plan: keep the prefix K/V of the keys trajectory queries may attend (value-token keys
        dropped); the history starts again in ping-pong buffer 0."""
        if prefix.k[0].shape[0] != 1:
            raise ValueError(f"set_prefix takes a shared prefix (batch 1), got batch {prefix.k[0].shape[0]}")
        self.cur = 0
        idx = torch.nonzero(prefix.key_valid.to(self.device)).squeeze(-1)
        kp = [k[0].index_select(1, idx).to(self.dtype).transpose(1, 2) for k in prefix.k]  # (H, hd, Tp)
        vp = [v[0].index_select(1, idx).to(self.dtype) for v in prefix.v]  # (H, Tp, hd)
        if not self.static:
            self.kp, self.vp = [k.contiguous() for k in kp], [v.contiguous() for v in vp]
            return
        if not self.kp:  # fixed-size, padded buffers (graph inputs)
            kw = {"device": self.device, "dtype": self.dtype}
            self.kp = [torch.zeros(self.H, self.hd, self.max_prefix, **kw) for _ in self.layers]
            self.vp = [torch.zeros(self.H, self.max_prefix, self.hd, **kw) for _ in self.layers]
            self.pmask = torch.full((self.max_prefix,), float("-inf"), **kw)
        tp = idx.numel()
        for dst, src in zip(self.kp, kp):
            dst[..., :tp].copy_(src)
        for dst, src in zip(self.vp, vp):
            dst[:, :tp].copy_(src)
        self.pmask[:tp] = 0.0
        self.pmask[tp:] = float("-inf")

    def load_history(self, window: PrefixState) -> int:
        """Window re-encode (long horizons): the shared prefix becomes empty and beam i's history becomes row i
        of ``window`` (a batch-W :meth:`~ros_seqplanner.nets.tt.TrajectoryTransformer.prefill`), its attendable
        keys only. Call after :meth:`allocate`; returns the new history length."""
        idx = torch.nonzero(window.key_valid.to(self.device)).squeeze(-1)
        n = idx.numel()
        hb = self.hist[self.cur]  # (n_layer, 2, H, W, T, hd)
        if window.k[0].shape[0] != hb.shape[3] or n > hb.shape[-2]:
            raise ValueError(f"window of {window.k[0].shape[0]} rows x {n} keys does not fit the history buffers "
                             f"({hb.shape[3]} beams x {hb.shape[-2]} columns)")
        for li in range(len(self.layers)):
            hb[li, 0, :, :, :n] = window.k[li].index_select(2, idx).transpose(0, 1).to(self.dtype)
            hb[li, 1, :, :, :n] = window.v[li].index_select(2, idx).transpose(0, 1).to(self.dtype)
        if self.static:
            self.pmask.fill_(float("-inf"))
        else:
            self.kp = [k[..., :0] for k in self.kp]
            self.vp = [v[:, :0] for v in self.vp]
        return n

    def allocate(self, beams: int, expand: int, max_hist: int, max_step: int) -> None:
        """History buffers (2 ping-pong) of ``beams`` rows: ``max_hist`` history columns plus a step region of
        ``expand * max_step`` columns (the candidates' action/reward tokens of the current planning step)."""
        shape = (beams, expand, max_hist, max_step)
        if shape == self._shape:
            return
        nl, h, hd = len(self.layers), self.H, self.hd
        t = max_hist + expand * max_step
        kw = {"device": self.device, "dtype": self.dtype}
        # Head-major buffers (n_layer, 2 [k, v], H, W, T, hd): the (H, B, hd) queries serve the prefix and the
        # history matmuls without a copy in between; one copy writes both k and v. Keys stay (T, hd): the
        # filled part of a (head, beam) block is then one contiguous run, which matters once the history
        # outgrows the cache (walker: ~17% faster score matmuls than a padded transposed (hd, T) layout).
        self.hist = [torch.zeros(nl, 2, h, beams, t, hd, **kw) for _ in range(1 if self.static else 2)]
        self.cur = 0
        self._shape = shape
        # Step-region masks: query row e (candidate e of its beam) at step token j sees its own columns
        # e*S .. e*S+j of the region and none of its siblings'.
        rel = torch.arange(expand * max_step, device=self.device)
        own = (rel // max_step)[None] == torch.arange(expand, device=self.device)[:, None]
        self._step_masks = [torch.zeros(expand, rel.numel(), **kw).masked_fill_(~(own & (rel % max_step <= j)),
                                                                             float("-inf"))
                            for j in range(max_step)]
        self._e_cols = torch.arange(expand, device=self.device) * max_step
        if self.static:
            self._ar_h = torch.arange(t, device=self.device)
            self._neg = torch.tensor(float("-inf"), device=self.device, dtype=self.dtype)
            self._zero = torch.zeros((), device=self.device, dtype=self.dtype)
        # Per-layer views, made once (each saves view ops per token): the (2, H, W, T, hd) write targets and
        # K, V as (H*W, T, hd) for batched matmuls; three lists per ping-pong buffer.
        self._views = [([hb[li] for li in range(nl)], [hb[li, 0].view(h * beams, t, hd) for li in range(nl)],
                        [hb[li, 1].view(h * beams, t, hd) for li in range(nl)]) for hb in self.hist]
        self._graphs = {}
        if self.cuda_graphs:
            self._capture_graphs(beams, expand)

    # ------------------------------------------------------------------------------------------ decoding
    @torch.inference_mode()
    def step(self, bins: torch.Tensor, pos: int, expand: int, hist_len: int, step_len: int,
             write: str | None) -> torch.Tensor:
        """Feed one token per row at trajectory position ``pos`` (its dimension is ``pos % D``).

        ``bins`` (B,) are bin indices of that dimension; B = beams*expand for the action/reward tokens of a
        planning step (``write == 'step'``), rows ordered ``beam*expand + e``; otherwise B = beams and
        ``expand`` must be 1. The token attends to the prefix, ``hist_len`` history tokens of its beam, the
        ``step_len`` step tokens of its own candidate, and itself if written. ``write``: 'hist' (at column
        ``hist_len``), 'step' (step token ``step_len`` of each candidate) or None (value tokens: query
        only). Returns the (B, N+1) logits at ``pos`` (float32)."""
        if not self.static:
            return self._run(bins, expand, write, pos, hist_len, step_len, None)
        meta = self._meta(pos, hist_len, step_len)
        if self._graphs:
            return self._replay(bins, meta, expand, write)
        return self._run(bins, expand, write, 0, 0, 0, meta)

    def _run(self, bins: torch.Tensor, expand: int, write: str | None, pos: int, hist_len: int, step_len: int,
             meta: torch.Tensor | None) -> torch.Tensor:
        """One decoder step. Dynamic (``meta`` None): Python-int positions, buffers sliced to the attended
        columns. Static: ``meta`` = device (3,) [pos, hist_len, step_len]; whole buffers + masks."""
        views = self._views[self.cur]
        b = bins.shape[0]
        w = b // expand
        s_cols = self._shape[3]
        if meta is None:
            d = pos % self.D
            x = F.embedding(bins, self.tok[d]) + self.pos[pos]
            col = hist_len + step_len  # write column of candidate 0 (candidate e: col + e*S)
            if write == "step":  # history + the step region up to this candidate's own new column
                n_h = col + (expand - 1) * s_cols + 1
                mask = self._step_masks[step_len][:, :n_h - hist_len]
            else:
                n_h, mask = hist_len + (write == "hist"), None
            pmask = None
        else:
            pos_t, hl_t, sl_t = meta[0:1], meta[1:2], meta[2:3]
            d_t = pos_t % self.D
            x = self.tok_all.index_select(0, bins + d_t * self.N) + self.pos.index_select(0, pos_t)
            n_h = self.hist[0].shape[-2]
            col = hl_t + sl_t + self._e_cols[:expand]
            rel = self._ar_h - hl_t
            if write == "step":
                own = (rel[None] >= self._e_cols[:, None]) & (rel[None] <= self._e_cols[:, None] + sl_t)
                valid = (rel < 0)[None] | own
            else:
                valid = rel < int(write == "hist")
            mask, pmask = torch.where(valid, self._zero, self._neg), self.pmask
        blocks = _blocks_fast if self.jit else _blocks
        col_i, col_t = (col, None) if meta is None else (0, col)
        x = blocks(x, self.layers, self.eps, self.kp, self.vp, views[0], views[1], views[2], w, expand,
                   write is not None, col_i, col_t, s_cols, n_h, hist_len, mask, pmask)
        x = F.layer_norm(x, (self.C,), *self.ln_f)
        head = self.head[d] if meta is None else self.head_all.index_select(0, d_t)[0]
        return torch.mm(x, head).float()

    def _meta(self, pos: int, hist_len: int, step_len: int) -> torch.Tensor:
        """Device tensor [pos, hist_len, step_len], cached: created (one host->device copy) only the first
        time a position occurs, so steady-state planning does no host->device traffic per token."""
        key = (pos, hist_len, step_len)
        t = self._meta_cache.get(key)
        if t is None:
            t = self._meta_cache[key] = torch.tensor(key, dtype=torch.long, device=self.device)
        return t

    # ------------------------------------------------------------------------------------------ CUDA graphs
    # UNTESTED ON THE DEV MACHINE (no GPU there): the static path they replay is tested on CPU.
    def _capture_graphs(self, beams: int, expand: int) -> None:
        """Capture one graph per kind of token: action/reward (W*E rows, writes the step region), value
        (W rows, query only), observation (W rows, writes the history)."""
        if self.pmask is None:  # finite dummy prefix so warm-up runs produce no NaN in the caches
            kw = {"device": self.device, "dtype": self.dtype}
            self.kp = [torch.zeros(self.H, self.hd, self.max_prefix, **kw) for _ in self.layers]
            self.vp = [torch.zeros(self.H, self.max_prefix, self.hd, **kw) for _ in self.layers]
            self.pmask = torch.full((self.max_prefix,), float("-inf"), **kw)
            self.pmask[0] = 0.0
        for key in (("step", expand), (None, 1), ("hist", 1)):
            write, e = key
            bins = torch.zeros(beams * e, dtype=torch.long, device=self.device)
            meta = torch.zeros(3, dtype=torch.long, device=self.device)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(2):
                    self._run(bins, e, write, 0, 0, 0, meta)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.inference_mode():
                out = self._run(bins, e, write, 0, 0, 0, meta)
            self._graphs[key] = (graph, bins, meta, out)

    def _replay(self, bins: torch.Tensor, meta: torch.Tensor, expand: int, write: str | None) -> torch.Tensor:
        graph, bins_in, meta_in, out = self._graphs[(write, expand)]
        bins_in.copy_(bins)
        meta_in.copy_(meta)
        graph.replay()
        return out.clone()

    @torch.inference_mode()
    def merge(self, parent: torch.Tensor, winners: torch.Tensor, hist_len: int, step_len: int) -> None:
        """After selection: new history row i = old row ``parent[i]`` (first ``hist_len`` columns) followed by
        the ``step_len`` step tokens of candidate ``winners[i]`` (= parent*E + e; row ``parent``, columns
        ``hist_len + e*S ..``). Dynamic: written into the other ping-pong buffer (no allocation for the
        large history part); static: one buffer, gathered into temporaries and copied back."""
        _, e, _, s_cols = self._shape
        src = self.cur
        dst = 0 if self.static else 1 - self.cur
        sb, db = self.hist[src], self.hist[dst]  # (n_layer, 2, H, W, T, hd)
        nl, _, h, w, _, hd = sb.shape
        end = hist_len + step_len
        # step region -> (n_layer, 2, H, W*E, S, hd), one row per candidate; then the winners' rows
        step = sb[..., hist_len:hist_len + e * s_cols, :].reshape(nl, 2, h, w * e, s_cols, hd)
        step = step[..., :step_len, :].index_select(3, winners)
        if hist_len and self.static:
            db[..., :hist_len, :] = sb[..., :hist_len, :].index_select(3, parent)
        elif hist_len:
            torch.index_select(sb[..., :hist_len, :], 3, parent, out=db[..., :hist_len, :])
        db[..., hist_len:end, :] = step
        self.cur = dst
