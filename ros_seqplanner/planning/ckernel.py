"""The fused C decoder step (``_tt_kernel.c``) for CPU beam search: built on first use, loaded with ctypes.

Why: on one CPU thread the torch decoder (:mod:`ros_seqplanner.planning.engine`) spends about half of a
halfcheetah plan outside the linear layers, in ~50 small ops per layer and token (per-beam attention
matmuls of 1-2 rows, softmax, copies, op dispatch). :class:`CBeamDecoder` does a whole token (every
layer, attention and head) in one foreign call: the matrix products go to the same BLAS ``sgemm`` that
torch uses (MKL in the x86 wheels; its address is looked up in the loaded ``libtorch_cpu``), the rest is
AVX2/FMA C. It keeps the engine's interface (``set_prefix``, ``allocate``, ``step``, ``merge``), and adds
:meth:`CBeamDecoder.plan`, the whole beam search of :class:`~ros_seqplanner.planning.beam.BeamPlanner` in one
call (``ttk_plan``: token sampling, greedy choices, scores, selection and merges in C too, so no Python runs
between tokens; its sampler is tested against :func:`~ros_seqplanner.planning.sampling.sample_bins`).

Build: ``cc -O3 -march=native`` on the source shipped in the package, cached under
``$SEQPLANNER_CACHE`` (default ``~/.cache/ros_seqplanner``) keyed by source, flags, compiler and CPU;
about a second, once. Everything that can go wrong (no compiler, no exported sgemm, a non-x86 torch)
makes :func:`load_kernel` return ``None`` with the reason in :data:`LOAD_ERROR`, and the planner falls back
to the torch decoder (same plans). ``SEQPLANNER_KERNEL=torch`` forces the fallback.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from ros_seqplanner.nets.tt import PrefixState, TrajectoryTransformer
from ros_seqplanner.planning.engine import layer_weights

SOURCE = Path(__file__).with_name("_tt_kernel.c")
ABI_VERSION = 11
CFLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fPIC", "-shared", "-std=gnu11")
LOAD_ERROR: str | None = None
_LIB: ctypes.CDLL | None = None
_TRIED = False

_p, _i = ctypes.c_void_p, ctypes.c_int


class _Ctx(ctypes.Structure):
    """Mirror of ``ttk_ctx`` in ``_tt_kernel.c`` (checked against ``ttk_ctx_size`` on load)."""

    _fields_ = [("n_layer", _i), ("C", _i), ("H", _i), ("hd", _i), ("F", _i), ("D", _i), ("n_bins", _i),
                ("n1b", _i), ("eps", ctypes.c_float), ("lw", _p), ("lnf_w", _p), ("lnf_b", _p), ("tok", _p),
                ("pos", _p), ("head", _p), ("kp", _p), ("vp", _p), ("tp", _i), ("tpp", _i), ("sk", _p), ("sv", _p),
                ("ck", _p), ("cv", _p), ("anc", _p), ("order", _p), ("runs", _p), ("nodes", _p), ("inv", _p), ("W", _i),
                ("E", _i), ("S", _i), ("L", _i), ("LK", _i), ("SK", _i), ("n_seg", _i), ("x", _p), ("ln", _p),
                ("qkv", _p), ("y", _p), ("ff", _p), ("sc", _p), ("sc_stride", _i), ("sgemm", _p)]


class _PlanArgs(ctypes.Structure):
    """Mirror of ``ttk_plan_args`` (checked against ``ttk_plan_args_size`` on load)."""

    _fields_ = [("H", _i), ("W", _i), ("E", _i), ("A", _i), ("O", _i), ("logp", _i), ("use_cdf", _i), ("topk", _i),
                ("cdf", ctypes.c_float), ("pos0", _i), ("u", _p), ("disc", _p), ("mid_r", _p), ("mid_v", _p),
                ("logits0", _p), ("first_obs", _p), ("out_bins", _p), ("out_score", _p), ("obs_lo", _p),
                ("obs_hi", _p), ("out_viol", _p), ("deadline", ctypes.c_double), ("out_h", _p)]


def cache_dir() -> Path:
    """Where built kernels are kept (``$SEQPLANNER_CACHE``, else ``$XDG_CACHE_HOME``/``~/.cache``)."""
    env = os.environ.get("SEQPLANNER_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ros_seqplanner"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _cpu_id() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags"))][:2]
    return "\n".join(keep)


def build(force: bool = False) -> Path:
    """Compile the kernel (if not cached) and return the shared library's path. Raises on failure."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc/gcc/clang) on PATH")
    ver = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()[:1]
    key = hashlib.sha256("\n".join([SOURCE.read_text(), " ".join(CFLAGS), *ver, _cpu_id(),
                                    platform.machine()]).encode()).hexdigest()[:16]
    out = cache_dir() / f"tt_kernel_{key}.so"
    if out.is_file() and not force:
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out.parent, os.W_OK):
            raise PermissionError(out.parent)
    except OSError:  # e.g. a service account without a writable home: build in the temp dir instead
        out = Path(tempfile.gettempdir()) / f"ros_seqplanner-{os.getuid()}" / out.name
        if out.is_file() and not force:
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        so = Path(tmp) / out.name
        res = subprocess.run([cc, *CFLAGS, "-o", str(so), str(SOURCE), "-lm"], capture_output=True, text=True,
                             timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE.name} failed:\n{res.stderr[-2000:]}")
        os.replace(so, out)  # atomic: concurrent builders never see a half-written library
    return out


def sgemm_address() -> int | None:
    """Address of the Fortran ``sgemm_`` inside the loaded libtorch_cpu (MKL on x86 wheels), or None."""
    lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        return ctypes.cast(ctypes.CDLL(str(lib)).sgemm_, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None


def load_kernel() -> ctypes.CDLL | None:
    """The loaded kernel library, or None (reason in :data:`LOAD_ERROR`). Tried once per process."""
    global _LIB, _TRIED, LOAD_ERROR
    if _TRIED:
        return _LIB
    _TRIED = True
    if os.environ.get("SEQPLANNER_KERNEL", "").lower() == "torch":
        LOAD_ERROR = "disabled by SEQPLANNER_KERNEL=torch"
        return None
    if sgemm_address() is None:
        LOAD_ERROR = "this torch build exports no sgemm_ (non-MKL build)"
        return None
    try:
        lib = ctypes.CDLL(str(build()))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        LOAD_ERROR = f"C kernel unavailable: {e}"
        return None
    if (lib.ttk_abi_version() != ABI_VERSION or lib.ttk_ctx_size() != ctypes.sizeof(_Ctx)
            or lib.ttk_plan_args_size() != ctypes.sizeof(_PlanArgs)):
        LOAD_ERROR = "C kernel ABI mismatch (stale build?)"
        return None
    lib.ttk_step.argtypes = [_p, _p, _i, _i, _i, _i, _i, _i, _p]
    lib.ttk_step.restype = None
    lib.ttk_merge.argtypes = [_p, _p, _i, _i, _i]
    lib.ttk_merge.restype = _i
    lib.ttk_plan.argtypes = [_p, _p]
    lib.ttk_plan.restype = _i
    lib.ttk_sample_rows.argtypes = [_p, _i, _i, _i, _p, _i, ctypes.c_float, _i, _p]
    lib.ttk_sample_rows.restype = _i
    _LIB = lib
    return lib


def sample_bins_c(logits: torch.Tensor, u: torch.Tensor, cdf: float | None = None,
                  topk: int | None = None) -> torch.Tensor:
    """The C planner's token sampler on (B, N) logits and (B,) uniforms: the same contract as
    :func:`ros_seqplanner.planning.sampling.sample_bins` (used by the tests to compare the two)."""
    lib = load_kernel()
    if lib is None:
        raise RuntimeError(LOAD_ERROR or "C kernel unavailable")
    x = logits.detach().to(torch.float32).contiguous()
    uu = u.detach().to(torch.float32).contiguous()
    if x.dim() != 2 or uu.shape != (x.shape[0],):
        raise ValueError("sample_bins_c: logits (B, N) and u (B,)")
    out = torch.empty(x.shape[0], dtype=torch.long)
    if lib.ttk_sample_rows(x.data_ptr(), x.shape[0], x.shape[1], x.shape[1], uu.data_ptr(), int(cdf is not None),
                           float(cdf or 0.0), int(topk or 0), out.data_ptr()) != 0:
        raise MemoryError("ttk_sample_rows: out of memory")
    return out


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


class CBeamDecoder:
    """Drop-in for :class:`~ros_seqplanner.planning.engine.BeamDecoder` (dynamic CPU fp32 mode) that runs
    each token through ``ttk_step``.

    Prefix K (layers, H, hd, TPP) / V (layers, H, TPP, hd), zero padded, shared by every row. The beams' history
    is kept as a **tree** instead of one copy per beam: each planning step stores one segment (its action/reward
    tokens + the next observation's, L = D - 1 columns) per surviving beam, and ``anc[w, s]`` says which
    segment of step s beam w descends from. Selection then copies only the winners' step tokens (no history
    reorder), and the kernel visits beams in ancestry order (``order``), so a segment that several beams share
    is read from memory once for all of them: the per-token cost scales with the distinct tree nodes, not with
    beams x history. Keys are stored transposed, (hd, L) per segment, so the score loops vectorise over columns."""

    def __init__(self, model: TrajectoryTransformer, lib: ctypes.CDLL | None = None) -> None:
        lib = lib or load_kernel()
        if lib is None:
            raise RuntimeError(LOAD_ERROR or "C kernel unavailable")
        if model.head.device.type != "cpu":
            raise ValueError("CBeamDecoder runs on CPU only")
        self.lib = lib
        cfg = model.cfg
        self.cfg = cfg
        self.C, self.H = cfg.n_embd, cfg.n_head
        self.hd = self.C // self.H
        self.N, self.D = cfg.n_bins, cfg.transition_dim

        def t(x: torch.Tensor) -> torch.Tensor:
            return x.detach().to("cpu", torch.float32).contiguous().clone()

        eps = {blk.ln1.eps for blk in model.blocks} | {blk.ln2.eps for blk in model.blocks} | {model.ln_f.eps}
        if len(eps) != 1:
            raise ValueError("CBeamDecoder expects one LayerNorm eps for all LayerNorms")
        self._keep: list[torch.Tensor] = []
        lw: list[int] = []
        for lay in layer_weights(model, t):  # attention scale folded into the queries, as the torch engine
            self._keep.extend(lay)
            lw.extend(x.data_ptr() for x in lay)
        self.F = model.blocks[0].fc.weight.shape[0]
        self._lw = (ctypes.c_void_p * len(lw))(*lw)
        self._lnf = (t(model.ln_f.weight), t(model.ln_f.bias))
        self._tok, self._pos, self._head = t(model.tok_emb.weight), t(model.pos_emb), t(model.head)
        self.max_prefix = cfg.block_size + (cfg.obs_dim if cfg.goal_conditioned else 0)
        self.tpp_max = _round_up(self.max_prefix, 8)  # score loops read whole 8-column vectors
        nl = cfg.n_layer
        self.kp = torch.zeros(nl, self.H, self.hd, self.tpp_max)
        self.vp = torch.zeros(nl, self.H, self.tpp_max, self.hd)
        self._shape: tuple[int, int, int, int] | None = None
        c = self.ctx = _Ctx()
        c.n_layer, c.C, c.H, c.hd, c.F, c.D, c.n_bins, c.n1b = nl, self.C, self.H, self.hd, self.F, self.D, self.N, \
            self.N + 1
        c.eps = float(eps.pop())
        c.lw = ctypes.cast(self._lw, ctypes.c_void_p)
        c.lnf_w, c.lnf_b = self._lnf[0].data_ptr(), self._lnf[1].data_ptr()
        c.tok, c.pos, c.head = self._tok.data_ptr(), self._pos.data_ptr(), self._head.data_ptr()
        c.sgemm = sgemm_address()
        c.tpp = self.tpp_max  # fixed stride: buffers never move between plans
        self._kp_ptrs = (ctypes.c_void_p * nl)(*[self.kp[i].data_ptr() for i in range(nl)])
        self._vp_ptrs = (ctypes.c_void_p * nl)(*[self.vp[i].data_ptr() for i in range(nl)])
        c.kp, c.vp = ctypes.cast(self._kp_ptrs, ctypes.c_void_p), ctypes.cast(self._vp_ptrs, ctypes.c_void_p)
        self._ctx_p = ctypes.addressof(c)

    def set_prefix(self, prefix: PrefixState) -> None:
        """Copy the prefix K/V of the keys trajectory queries may attend (value-token keys dropped)."""
        idx = torch.nonzero(prefix.key_valid.cpu()).squeeze(-1)
        tp = idx.numel()
        if tp > self.tpp_max:
            raise ValueError(f"prefix of {tp} keys exceeds the model block ({self.max_prefix})")
        for li, (k, v) in enumerate(zip(prefix.k, prefix.v)):
            self.kp[li, :, :, :tp].copy_(k[0].index_select(1, idx).transpose(1, 2))
            self.kp[li, :, :, tp:].zero_()
            self.vp[li, :, :tp].copy_(v[0].index_select(1, idx))
            self.vp[li, :, tp:].zero_()
        self.ctx.tp = tp
        if self._shape is not None:
            self.order[:] = np.arange(self.order.shape[0], dtype=np.int32)  # a new plan: no ancestry yet

    def allocate(self, beams: int, expand: int, max_hist: int, max_step: int) -> None:
        """Segment storage for ``beams`` beams and up to ``max_hist`` history columns, candidate buffers for
        ``expand * beams`` candidates of ``max_step`` step tokens (no-op if the shapes are unchanged)."""
        shape = (beams, expand, max_hist, max_step)
        if shape == self._shape:
            return
        seg = self.D - 1  # columns a finished planning step adds: actions + reward + next observation
        if max_step > seg:
            raise ValueError(f"{max_step} step tokens per planning step do not fit a segment of {seg}")
        nl, h, hd = self.cfg.n_layer, self.H, self.hd
        lk, sk = _round_up(seg, 8), _round_up(max_step, 8)  # key row strides (score loops read 8 columns at a time)
        n_seg = -(-max_hist // seg) + 1
        self._sk = torch.zeros(nl, n_seg, h, beams, hd, lk)
        self._sv = torch.zeros(nl, n_seg, h, beams, seg, hd)
        self._ck = torch.zeros(nl, h, beams, expand, hd, sk)
        self._cv = torch.zeros(nl, h, beams, expand, max_step, hd)
        self._ptrs = [(ctypes.c_void_p * nl)(*[x[i].data_ptr() for i in range(nl)])
                      for x in (self._sk, self._sv, self._ck, self._cv)]
        self.anc = np.zeros((beams, n_seg), dtype=np.int32)
        self.order = np.arange(beams, dtype=np.int32)
        self._runs = np.zeros(n_seg * beams * 3 + n_seg, dtype=np.int32)
        self._nodes = np.zeros(n_seg * beams * 4, dtype=np.int32)
        self.seg_len = seg
        ss = self.tpp_max + _round_up(max_hist + 1, 32) + 64  # a row's scores: prefix, history, step tokens
        b = beams * expand
        self._scratch = {"x": torch.zeros(b, self.C), "ln": torch.zeros(b, self.C), "qkv": torch.zeros(b, 3 * self.C),
                         "y": torch.zeros(b, self.C), "ff": torch.zeros(b, self.F), "sc": torch.zeros(h * b * ss),
                         "inv": torch.zeros(h * b)}
        c = self.ctx
        c.sk, c.sv, c.ck, c.cv = (ctypes.cast(p, ctypes.c_void_p) for p in self._ptrs)
        c.anc, c.order, c.runs = self.anc.ctypes.data, self.order.ctypes.data, self._runs.ctypes.data
        c.nodes = self._nodes.ctypes.data
        c.W, c.E, c.S, c.L, c.LK, c.SK, c.n_seg = beams, expand, max_step, seg, lk, sk, n_seg
        for k, v in self._scratch.items():
            setattr(c, k, v.data_ptr())
        c.sc_stride = ss
        self._shape = shape

    def step(self, bins: torch.Tensor, pos: int, expand: int, hist_len: int, step_len: int,
             write: str | None) -> torch.Tensor:
        """Same contract as :meth:`BeamDecoder.step`: returns the (B, N+1) float32 logits at ``pos``."""
        bins = bins.contiguous()
        if bins.dtype != torch.long:
            bins = bins.long()
        b = bins.shape[0]
        # Everything the C code indexes with is checked here: a bad index must be an exception, never a
        # stray memory access in a control process.
        if self._shape is None:
            raise ValueError("allocate() first")
        w, e, max_hist, s = self._shape
        mode = {None: 0, "hist": 1, "step": 2}[write]
        n_seg = self.anc.shape[1]
        if not (b == (w * e if mode == 2 else w) and expand == (e if mode == 2 else 1)
                and 0 <= pos < self.cfg.block_size and 0 <= hist_len <= max_hist
                and (hist_len + (mode == 1) + self.seg_len - 1) // self.seg_len <= n_seg
                and (mode != 2 or 0 <= step_len < s)):
            raise ValueError(f"step outside the allocated shapes (rows {b}, expand {expand}, pos {pos}, "
                             f"history {hist_len}, step token {step_len}, allocated {self._shape})")
        if b:
            lo, hi = torch.aminmax(bins)
            if int(lo) < 0 or int(hi) >= self.N:
                raise ValueError(f"bins must be in [0, {self.N}), got [{int(lo)}, {int(hi)}]")
        out = torch.empty(b, self.N + 1)
        self.lib.ttk_step(self._ctx_p, bins.data_ptr(), b, expand, pos, mode, hist_len, step_len, out.data_ptr())
        return out

    def merge(self, parent: torch.Tensor, winners: torch.Tensor, hist_len: int, step_len: int) -> None:
        """After selection at the planning step ending at ``hist_len``: beam i continues the ancestry of
        ``parent[i]`` and its new segment starts with the step tokens of candidate ``winners[i]``."""
        t = hist_len // self.seg_len
        if hist_len % self.seg_len or step_len != self._shape[3] or not 0 <= t < self.anc.shape[1]:
            raise ValueError("merge expects whole planning steps within the allocated history")
        par = parent.cpu().numpy()
        w, e = self._shape[:2]
        win = np.ascontiguousarray(winners.cpu().numpy(), dtype=np.int64)
        if par.shape != (w,) or win.shape != (w,) or (win // e != par).any() or par.min() < 0 or par.max() >= w:
            raise ValueError("merge: parent / winners must be (W,) with winners[i] // E == parent[i] < W")
        if self.lib.ttk_merge(self._ctx_p, win.ctypes.data, w, hist_len, step_len) != 0:  # ancestry + order too
            raise MemoryError("ttk_merge: out of memory")

    def plan(self, last_logits: torch.Tensor, first_obs: torch.Tensor, u: torch.Tensor, discounts: torch.Tensor,
             mids: tuple[torch.Tensor, torch.Tensor], pos0: int, beams: int, expand: int,
             cdf: float | None, topk: int | None, logp: bool,
             bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
             deadline: float | None = None) -> tuple[torch.Tensor, float, int]:
        """The whole beam search in one call (``ttk_plan``; the same algorithm as ``BeamPlanner.plan``), after
        :meth:`set_prefix` and :meth:`allocate`. ``u`` (H, W*E, A) uniforms, ``discounts`` (H+1,), ``mids`` the
        reward / value bin midpoints, ``bounds`` the (O,) lowest / highest in-bounds observation bins (or None),
        ``deadline`` a ``time.monotonic()`` time after which no further transition is started (None: none).
        Returns the best beam's (h, D) bins (h = H, or fewer after the deadline), its score and its count of
        out-of-bounds predicted bins."""
        cfg = self.cfg
        h, a_dim, o = u.shape[0], cfg.act_dim, cfg.obs_dim
        if self._shape is None or self._shape[:2] != (beams, expand) or self._shape[3] != a_dim + 1:
            raise ValueError(f"allocate({beams}, {expand}, ..., {a_dim + 1}) first")
        if h * self.D - o - 1 + pos0 > self.cfg.block_size or h < 1 or pos0 < 0:
            raise ValueError(f"a plan of {h} transitions from position {pos0} exceeds the block")
        if (h - 1) * self.seg_len > self._shape[2]:
            raise ValueError(f"a plan of {h} transitions needs more history than allocated ({self._shape[2]})")
        if u.shape != (h, beams * expand, a_dim) or discounts.shape != (h + 1,) or first_obs.shape != (o,):
            raise ValueError("plan: u must be (H, W*E, A), discounts (H+1,), first_obs (O,)")
        first_obs = first_obs.to(torch.long).contiguous()
        if int(first_obs.min()) < 0 or int(first_obs.max()) >= self.N:
            raise ValueError(f"observation bins must be in [0, {self.N})")
        ins = [x.detach().to(torch.float32).contiguous() for x in (u, discounts, *mids, last_logits.reshape(-1))]
        if ins[2].numel() != self.N or ins[3].numel() != self.N or ins[4].numel() != self.N + 1:
            raise ValueError("plan: midpoints must have n_bins entries and the logits n_bins + 1")
        lo_hi = [None, None]
        if bounds is not None:
            lo_hi = [x.to(torch.long).contiguous() for x in bounds]
            if any(x.shape != (o,) for x in lo_hi) or bool((lo_hi[0] > lo_hi[1]).any()):
                raise ValueError("plan: bounds must be two (O,) bin tensors with lo <= hi")
        out = torch.zeros(h, self.D, dtype=torch.long)
        score, viol, done = ctypes.c_float(), ctypes.c_int32(), ctypes.c_int32()
        args = _PlanArgs(h, beams, expand, a_dim, o, int(logp), int(cdf is not None), int(topk or 0),
                         float(cdf or 0.0), pos0, *(x.data_ptr() for x in ins), first_obs.data_ptr(), out.data_ptr(),
                         ctypes.addressof(score), *(None if x is None else x.data_ptr() for x in lo_hi),
                         ctypes.addressof(viol), float(deadline or 0.0), ctypes.addressof(done))
        if self.lib.ttk_plan(self._ctx_p, ctypes.byref(args)) != 0:
            raise MemoryError("ttk_plan: out of memory")
        return out[:done.value], float(score.value), int(viol.value)
