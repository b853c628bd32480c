"""Per-dimension discretizer for Trajectory Transformer tokens.

Every dimension d of a (..., D) array gets its own N bins with edges ``edges[d]`` (N + 1 values,
non-decreasing). ``encode`` maps a value to the bin containing it (values outside the fitted range
go to the first/last bin); ``decode`` returns the bin midpoint. Two strategies:

- ``uniform``: N equal-width bins between the per-dimension min and max of the fitted data;
- ``quantile``: equal-mass bins (edges are data quantiles), the strategy behind the paper's final
  results (official code: ``QuantileDiscretizer``).

Degenerate dimensions are handled without division: if a dimension is constant, all of its edges
are that constant, every value encodes to the last bin and decodes back to the constant exactly.
Quantile edges may repeat where the data has a point mass (e.g. rewards that are mostly 0); a
value equal to a repeated edge goes to the last of the equal-edge bins (``searchsorted`` with
``right=True``), whose midpoint is the edge itself when the run of equal edges reaches the top.

Both numpy arrays and torch tensors are accepted; the result has the input's type (and device).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

STRATEGIES = ("uniform", "quantile")
ArrayLike = np.ndarray | torch.Tensor


class Discretizer:
    """N bins per dimension. Build with :meth:`fit` or :meth:`from_dict`; edges are (D, N+1)."""

    def __init__(self, edges: np.ndarray, strategy: str = "quantile") -> None:
        edges = np.asarray(edges, dtype=np.float64)
        if edges.ndim != 2 or edges.shape[1] < 2:
            raise ValueError(f"edges must be (D, N+1) with N >= 1, got shape {edges.shape}")
        if not np.all(np.isfinite(edges)):
            raise ValueError("discretizer edges contain NaN/inf")
        if np.any(np.diff(edges, axis=1) < 0):
            raise ValueError("discretizer edges must be non-decreasing along each dimension")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.strategy = strategy
        self.edges = edges
        self.midpoints_np = (0.5 * (edges[:, :-1] + edges[:, 1:])).astype(np.float32)
        self._inner = edges[:, 1:-1]  # (D, N-1): thresholds between bins
        self._torch: dict[tuple[str, int | None], tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def fit(cls, data: np.ndarray, n_bins: int = 100, strategy: str = "quantile") -> Discretizer:
        """Fit edges on ``data`` (M, D). Raises ValueError on empty data or NaN/inf."""
        data = np.asarray(data, dtype=np.float64)
        if data.ndim != 2 or data.shape[0] == 0:
            raise ValueError(f"fit needs a non-empty (M, D) array, got shape {data.shape}")
        if not np.all(np.isfinite(data)):
            bad = np.flatnonzero(~np.all(np.isfinite(data), axis=0)).tolist()
            raise ValueError(f"cannot fit a discretizer: NaN/inf in dimensions {bad}")
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        if strategy == "uniform":
            lo, hi = data.min(axis=0), data.max(axis=0)
            frac = np.linspace(0.0, 1.0, n_bins + 1)
            edges = lo[:, None] + (hi - lo)[:, None] * frac[None, :]
        elif strategy == "quantile":
            # Official code takes every ceil(M/N)-th sorted value as a threshold; np.quantile interpolates the
            # same equal-mass edges without the stride rounding.
            edges = np.quantile(data, np.linspace(0.0, 1.0, n_bins + 1), axis=0).T
            edges = np.maximum.accumulate(edges, axis=1)  # guard against interpolation round-off
        else:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        # Exact endpoints (quantile interpolation can round; linspace can overshoot by 1 ulp).
        edges[:, 0], edges[:, -1] = data.min(axis=0), data.max(axis=0)
        return cls(edges, strategy)

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "n_bins": self.n_bins, "edges": self.edges.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Discretizer:
        try:
            disc = cls(np.asarray(d["edges"], dtype=np.float64), d["strategy"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"bad discretizer description ({e}); expected keys strategy, n_bins, edges") from e
        if "n_bins" in d and int(d["n_bins"]) != disc.n_bins:
            raise ValueError(f"discretizer n_bins {d['n_bins']} does not match {disc.n_bins} edges")
        return disc

    # ------------------------------------------------------------------ properties
    @property
    def n_bins(self) -> int:
        return self.edges.shape[1] - 1

    @property
    def dim(self) -> int:
        return self.edges.shape[0]

    @property
    def midpoints(self) -> torch.Tensor:
        """(D, N) float32 bin midpoints (CPU tensor)."""
        return torch.from_numpy(self.midpoints_np)

    def bin_widths(self) -> np.ndarray:
        return np.diff(self.edges, axis=1)

    # ------------------------------------------------------------------ encode / decode
    def encode(self, x: ArrayLike) -> ArrayLike:
        """(..., D) values -> (..., D) int64 bin indices in [0, N)."""
        return self.encode_dims(x, 0, self.dim)

    def decode(self, bins: ArrayLike) -> ArrayLike:
        """(..., D) bin indices -> (..., D) float32 midpoints."""
        return self.decode_dims(bins, 0, self.dim)

    def encode_dims(self, x: ArrayLike, start: int, stop: int) -> ArrayLike:
        """Encode (..., stop-start) values of dimensions [start, stop) only."""
        self._check_slice(x, start, stop)
        if isinstance(x, torch.Tensor):
            inner, _ = self._tensors(x.device, start, stop)
            flat = x.reshape(-1, stop - start).to(inner.dtype).T.contiguous()  # (d, M)
            out = torch.searchsorted(inner, flat, right=True)
            return out.T.reshape(x.shape)
        x = np.asarray(x, dtype=np.float64)
        flat = x.reshape(-1, stop - start)
        out = np.empty(flat.shape, dtype=np.int64)
        for j, d in enumerate(range(start, stop)):
            out[:, j] = np.searchsorted(self._inner[d], flat[:, j], side="right")
        return out.reshape(x.shape)

    def decode_dims(self, bins: ArrayLike, start: int, stop: int) -> ArrayLike:
        """Decode (..., stop-start) bin indices of dimensions [start, stop) to midpoints."""
        self._check_slice(bins, start, stop)
        if isinstance(bins, torch.Tensor):
            _, mids = self._tensors(bins.device, start, stop)
            b = bins.long().clamp(0, self.n_bins - 1)
            cols = torch.arange(stop - start, device=bins.device)
            return mids[cols, b]  # broadcasting gather: (..., d)
        b = np.clip(np.asarray(bins, dtype=np.int64), 0, self.n_bins - 1)
        return self.midpoints_np[start:stop][np.arange(stop - start), b]

    def _check_slice(self, x: ArrayLike, start: int, stop: int) -> None:
        if not (0 <= start < stop <= self.dim):
            raise ValueError(f"dimension slice [{start}, {stop}) outside [0, {self.dim})")
        if x.shape[-1] != stop - start:
            raise ValueError(f"last axis has {x.shape[-1]} values, expected {stop - start} (dims [{start}, {stop}))")

    def _tensors(self, device: torch.device, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device.type, device.index)
        if key not in self._torch:
            # float64 thresholds on CPU; float32 elsewhere (searchsorted on CUDA is fine in fp32).
            dtype = torch.float64 if device.type == "cpu" else torch.float32
            self._torch[key] = (torch.as_tensor(self._inner, dtype=dtype, device=device),
                                torch.as_tensor(self.midpoints_np, device=device))
        inner, mids = self._torch[key]
        return inner[start:stop].contiguous(), mids[start:stop]

    def __repr__(self) -> str:
        return f"Discretizer(strategy={self.strategy!r}, dim={self.dim}, n_bins={self.n_bins})"
