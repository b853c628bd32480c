"""Checkpoint = two files: ``<name>.safetensors`` (weights) + ``<name>.json`` (everything else).

Nothing is ever unpickled. Loading validates that both files exist, parse, agree with each other
and carry the expected ``kind``; any problem raises :class:`CheckpointError` with what to do next.
Model-specific modules (TT, DT, BC) build their own metadata and then validate tensor shapes
against the module they construct (see :func:`load_state_into`).
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
KINDS = ("tt", "dt", "bc", "mlp_dynamics", "behaviour")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, of the wrong kind or does not fit the model."""


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """Accept ``name``, ``name.json`` or ``name.safetensors``; return (weights, metadata) paths."""
    p = Path(path)
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def versions() -> dict[str, str]:
    from ros_seqplanner import __version__

    return {"ros_seqplanner": __version__, "torch": torch.__version__,
            "python": platform.python_version()}


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write weights + JSON next to each other; returns the JSON path. ``meta['kind']`` is required."""
    from safetensors.torch import save_file

    if meta.get("kind") not in KINDS:
        raise CheckpointError(f"meta['kind'] must be one of {KINDS}, got {meta.get('kind')!r}")
    weights, js = checkpoint_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    full = {"format_version": FORMAT_VERSION, "versions": versions(),
            "command": " ".join(sys.argv), **meta}
    full["tensors"] = {k: list(v.shape) for k, v in tensors.items()}
    # safetensors needs contiguous, non-shared tensors.
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(weights),
              metadata={"kind": str(meta["kind"])})
    tmp = js.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(full, indent=2, sort_keys=True, default=_json_default))
    tmp.replace(js)
    return js


def load_checkpoint(path: str | Path, kind: str | None = None,
                    device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and cross-check both files. Raises :class:`CheckpointError` on any problem."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, js = checkpoint_paths(path)
    for f in (js, weights):
        if not f.is_file():
            raise CheckpointError(f"checkpoint file {f} does not exist (a checkpoint is {weights.name} + {js.name})")
    try:
        meta = json.loads(js.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{js} is not valid JSON ({e}); the file is truncated or not a checkpoint") from e
    if not isinstance(meta, dict) or "kind" not in meta:
        raise CheckpointError(f"{js} has no 'kind' field; not a ros_seqplanner checkpoint")
    if kind is not None and meta["kind"] != kind:
        raise CheckpointError(f"{js} is a {meta['kind']!r} checkpoint, expected {kind!r}")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{js} has format_version {meta['format_version']}; this build reads <= {FORMAT_VERSION}")
    try:
        tensors = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} cannot be read ({e}); the file is truncated or corrupt") from e
    expected = meta.get("tensors")
    if expected is not None:
        got = {k: list(v.shape) for k, v in tensors.items()}
        if got != expected:
            diff = sorted(set(got) ^ set(expected))
            raise CheckpointError(
                f"{weights} does not match {js}: tensor names/shapes differ"
                + (f" (names only in one: {diff})" if diff else " (shapes differ)")
            )
    return tensors, meta


def load_state_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strictly load ``tensors`` into ``module``, turning any mismatch into a clear CheckpointError."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    bad = sorted(k for k in set(own) & set(tensors) if tuple(own[k].shape) != tuple(tensors[k].shape))
    if missing or extra or bad:
        details = []
        if missing:
            details.append(f"missing {missing[:5]}")
        if extra:
            details.append(f"unexpected {extra[:5]}")
        if bad:
            details.append("shape mismatch " + ", ".join(
                f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}" for k in bad[:5]))
        raise CheckpointError(f"{source} does not fit the model built from its config: " + "; ".join(details))
    module.load_state_dict(tensors, strict=True)


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
