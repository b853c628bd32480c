"""Beam-search decoder for a :class:`~ros_seqplanner.nets.tt.TrajectoryTransformer`: the inner loop of the
planner, written for few ops per token.

Why not ``model.decode``: the generic per-beam cache has to be physically reordered (all W*E beams, all
cached tokens) twice per planning step, and every candidate reads its own full copy of the history.
Beam search has more structure, which this decoder exploits:

- **Shared prefix.** The context (prefilled once by ``model.prefill``) is kept once per layer as
  (H, hd, Tp) keys / (H, Tp, hd) values, only the keys a trajectory query may see (value-token keys,
  masked for every query, are dropped, so no mask is needed), and attended by one batched matmul per
  head for all candidates (never copied per beam).
- **History at beam width.** Tokens of *finished* planning steps live in a (W, H, L, hd) buffer per
  layer. The E expansions of a beam share it: their queries are stacked as (W, H, E, hd), so the
  history is read once per beam, not once per candidate, and never copied for expansion.
- **Step block at W*E.** The action and reward tokens of the current planning step, one row per
  candidate. After the top-W selection, history rows are gathered by parent (``index_select`` into a
  second buffer, ping-pong, no allocation) and the winners' step rows appended: one copy per planning
  step instead of two full reorders.
- **Value tokens are never cached**: no query attends to them (official mask), so they are only run
  as queries (to get the logits of the next observation).
- Attention scale folded into the query weights; embedding by per-dimension table slices (no id
  arithmetic); heads by a contiguous (C, N+1) slice per dimension; buffers allocated once per shape.

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

import torch
import torch.nn.functional as F

from ros_seqplanner.nets.tt import PrefixState, TrajectoryTransformer


class _Layer:
    # w_* are contiguous (in, out) copies of the (out, in) weights, so each linear layer is one ``addmm``
    # (MKL runs the contiguous (in, out) layout up to ~1.8x faster than a transposed view at these sizes).
    __slots__ = ("b_fc", "b_o", "b_out", "b_qkv", "ln1", "ln2", "w_fc", "w_o", "w_out", "w_qkv")


class BeamDecoder:
    """Cached decoding for beam search. Usage per plan: :meth:`set_prefix`, :meth:`allocate` (no-op if
    the shapes are unchanged), then :meth:`step` for each token and :meth:`merge` after each selection."""

    def __init__(self, model: TrajectoryTransformer, dtype: torch.dtype | None = None, static: bool = False,
                 cuda_graphs: bool | None = None) -> None:
        cfg = model.cfg
        p0 = model.head
        self.cfg = cfg
        self.device = p0.device
        self.dtype = dtype or p0.dtype
        self.C, self.H = cfg.n_embd, cfg.n_head
        self.hd = self.C // self.H
        self.N, self.D = cfg.n_bins, cfg.transition_dim
        scale = 1.0 / math.sqrt(self.hd)

        def t(x: torch.Tensor) -> torch.Tensor:
            return x.detach().to(self.device, self.dtype).contiguous().clone()

        self.layers: list[_Layer] = []
        for blk in model.blocks:
            lay = _Layer()
            w, b = t(blk.attn.qkv.weight), t(blk.attn.qkv.bias)
            w[: self.C] *= scale
            b[: self.C] *= scale
            lay.w_qkv, lay.b_qkv = w.t().contiguous(), b
            lay.w_o, lay.b_o = t(blk.attn.proj.weight).t().contiguous(), t(blk.attn.proj.bias)
            lay.ln1 = (t(blk.ln1.weight), t(blk.ln1.bias), blk.ln1.eps)
            lay.ln2 = (t(blk.ln2.weight), t(blk.ln2.bias), blk.ln2.eps)
            lay.w_fc, lay.b_fc = t(blk.fc.weight).t().contiguous(), t(blk.fc.bias)
            lay.w_out, lay.b_out = t(blk.fc_out.weight).t().contiguous(), t(blk.fc_out.bias)
            self.layers.append(lay)
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
        """Keep the prefix K/V of the keys trajectory queries may attend (value-token keys dropped)."""
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

    def allocate(self, beams: int, expand: int, max_hist: int, max_step: int) -> None:
        """History (2 ping-pong buffers) at ``beams`` rows, step block at ``beams*expand`` rows."""
        shape = (beams, expand, max_hist, max_step)
        if shape == self._shape:
            return
        nl, h, hd = len(self.layers), self.H, self.hd
        kw = {"device": self.device, "dtype": self.dtype}
        # (n_layer, 2 [k, v], rows, H, T, hd): one copy writes both k and v; [l, 0] is (rows, H, T, hd).
        self.hist = [torch.zeros(nl, 2, beams, h, max_hist, hd, **kw) for _ in range(1 if self.static else 2)]
        self.step_kv = torch.zeros(nl, 2, beams * expand, h, max_step, hd, **kw)
        self.cur = 0
        self._shape = shape
        if self.static:
            self._ar_h = torch.arange(max_hist, device=self.device)
            self._ar_s = torch.arange(max_step, device=self.device)
            self._neg = torch.tensor(float("-inf"), device=self.device, dtype=self.dtype)
            self._zero = torch.zeros((), device=self.device, dtype=self.dtype)
        # Per-layer views, made once (each saves several view ops per token): history K/V as
        # (W*H, T, hd) for batched matmuls, K/V write targets, step-block K/V.
        self._views = [[(hb[li], hb[li, 0].view(beams * h, max_hist, hd), hb[li, 1].view(beams * h, max_hist, hd))
                        for li in range(nl)] for hb in self.hist]
        self._step_views = [(self.step_kv[li], self.step_kv[li, 0], self.step_kv[li, 1]) for li in range(nl)]
        self._graphs = {}
        if self.cuda_graphs:
            self._capture_graphs(beams, expand)

    # ------------------------------------------------------------------------------------------ decoding
    @torch.inference_mode()
    def step(self, bins: torch.Tensor, pos: int, expand: int, hist_len: int, step_len: int,
             write: str | None) -> torch.Tensor:
        """Feed one token per row at trajectory position ``pos`` (its dimension is ``pos % D``).

        ``bins`` (B,) are bin indices of that dimension; B = beams*expand when the step block is in use
        (``step_len`` > 0 or ``write == 'step'``), rows ordered ``beam*expand + e``; otherwise B = beams
        and ``expand`` must be 1. The token attends to the prefix, ``hist_len`` history tokens of its
        beam, ``step_len`` step-block tokens of its row, and itself if written. ``write``: 'hist' (at
        column ``hist_len``), 'step' (at column ``step_len``) or None (value tokens). Returns the (B, N+1)
        logits at ``pos`` (float32)."""
        if not self.static:
            return self._run(bins, expand, write, pos, hist_len, step_len, None)
        meta = self._meta(pos, hist_len, step_len)
        if self._graphs:
            return self._replay(bins, meta, expand, write)
        return self._run(bins, expand, write, 0, 0, 0, meta)

    def _run(self, bins: torch.Tensor, expand: int, write: str | None, pos: int, hist_len: int, step_len: int,
             meta: torch.Tensor | None) -> torch.Tensor:
        """One decoder step. Dynamic (``meta`` None): Python-int positions, buffers sliced to the filled
        length. Static: ``meta`` = device (3,) [pos, hist_len, step_len]; whole buffers + masks."""
        hist = self.hist[self.cur]
        views = self._views[self.cur]
        b = bins.shape[0]
        w = b // expand
        C, H, hd = self.C, self.H, self.hd
        if meta is None:
            d = pos % self.D
            x = F.embedding(bins, self.tok[d]) + self.pos[pos]
            n_h = hist_len + (write == "hist")
            n_s = step_len + (write == "step")
            masks = None
        else:
            pos_t, hl_t, sl_t = meta[0:1], meta[1:2], meta[2:3]
            d_t = pos_t % self.D
            x = self.tok_all.index_select(0, bins + d_t * self.N) + self.pos.index_select(0, pos_t)
            n_h = hist.shape[-2]
            n_s = self.step_kv.shape[-2] if write == "step" else 0
            neg, zero = self._neg, self._zero
            hmask = torch.where(self._ar_h < hl_t + int(write == "hist"), zero, neg)
            smask = torch.where(self._ar_s < sl_t + 1, zero, neg) if n_s else None
            masks = (self.pmask, hmask, smask)
        for li, lay in enumerate(self.layers):
            qkv = torch.addmm(lay.b_qkv, F.layer_norm(x, (C,), *lay.ln1), lay.w_qkv)
            q = qkv[:, :C].view(b, H, hd)
            if write is not None:
                kv = qkv[:, C:].view(b, 2, H, hd).transpose(0, 1)  # (2, B, H, hd)
                buf, col = (views[li][0], hist_len) if write == "hist" else (self._step_views[li][0], step_len)
                if meta is None:
                    buf[:, :, :, col].copy_(kv)
                else:
                    buf.index_copy_(3, hl_t if write == "hist" else sl_t, kv.unsqueeze(3))
            y = self._attend(q, li, views[li], n_h, n_s, w, expand, masks)
            x = x + torch.addmm(lay.b_o, y, lay.w_o)
            h = F.gelu(torch.addmm(lay.b_fc, F.layer_norm(x, (C,), *lay.ln2), lay.w_fc))
            x = x + torch.addmm(lay.b_out, h, lay.w_out)
        x = F.layer_norm(x, (C,), *self.ln_f)
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
        """Capture one graph per kind of token: action/reward (W*E rows, writes the step block), value
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

    def _attend(self, q: torch.Tensor, li: int, views: tuple, n_h: int, n_s: int, w: int,
                e: int, masks: tuple | None = None) -> torch.Tensor:
        """q (B=w*e, H, hd) (pre-scaled) -> attention output (B, C) over prefix + history + step block.

        Scores are laid out (w, H, e, T): the history part is a batched matmul over (w, H) with the e
        candidates of a beam as rows (history read once per beam). The step block is tiny (<= A+1 keys),
        so it uses broadcast multiply-sum, much cheaper than B*H one-row matmuls on CPU."""
        b, H, hd = q.shape
        kp, vp = self.kp[li], self.vp[li]  # (H, hd, Tp), (H, Tp, hd)
        tp = kp.shape[-1]
        _, hk, hv = views  # (W*H, T, hd)
        parts = [torch.bmm(q.transpose(0, 1), kp).view(H, w, e, tp).permute(1, 0, 2, 3)]  # (w, H, e, Tp)
        if n_h:
            qh = q.view(w, e, H, hd).transpose(1, 2).reshape(w * H, e, hd)
            parts.append(torch.bmm(qh, hk[:, :n_h].transpose(1, 2)).view(w, H, e, n_h))
        if n_s:
            _, sk, sv = self._step_views[li]  # (B, H, S, hd)
            s_s = (q.unsqueeze(2) * sk[:, :, :n_s]).sum(-1)  # (B, H, n_s)
            parts.append(s_s.view(w, e, H, n_s).transpose(1, 2))
        if masks is not None:  # static shapes: additive -inf beyond the filled lengths
            parts = [p + m for p, m in zip(parts, masks)]
        att = torch.softmax(torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0], dim=-1)  # (w, H, e, T)
        y = torch.bmm(att[..., :tp].permute(1, 0, 2, 3).reshape(H, b, tp), vp)  # (H, B, hd)
        y = y.view(H, w, e, hd).permute(1, 0, 2, 3)  # (w, H, e, hd)
        if n_h:
            t = att.shape[-1]
            y = y + torch.bmm(att.view(w * H, e, t)[:, :, tp:tp + n_h], hv[:, :n_h]).view(w, H, e, hd)
        if n_s:
            vs = sv[:, :, :n_s].view(w, e, H, n_s, hd).transpose(1, 2)  # (w, H, e, n_s, hd)
            y = y + (att[..., tp + n_h:].unsqueeze(-1) * vs).sum(-2)
        return y.transpose(1, 2).reshape(b, self.C)

    @torch.inference_mode()
    def merge(self, parent: torch.Tensor, winners: torch.Tensor, hist_len: int, step_len: int) -> None:
        """After selection: new history row i = old history row ``parent[i]`` followed by the step-block row
        ``winners[i]`` (``step_len`` tokens). Writes into the other ping-pong buffer; no allocation
        for the (large) history part."""
        if self.static:  # one buffer (graph input): gather into a temporary, copy back
            hist = self.hist[0]
            if hist_len:
                hist[..., :hist_len, :] = hist[..., :hist_len, :].index_select(2, parent)
            if step_len:
                hist[..., hist_len:hist_len + step_len, :] = self.step_kv[..., :step_len, :].index_select(2, winners)
            return
        src, dst = self.hist[self.cur], self.hist[1 - self.cur]
        if hist_len:
            torch.index_select(src[..., :hist_len, :], 2, parent, out=dst[..., :hist_len, :])
        if step_len:
            dst[..., hist_len:hist_len + step_len, :] = self.step_kv[..., :step_len, :].index_select(2, winners)
        self.cur = 1 - self.cur
