"""D4RL-style HDF5 import / export.

Layout (as in D4RL): flat per-step datasets ``observations`` (N, O), ``actions`` (N, A),
``rewards`` (N,), ``terminals`` (N,) and ``timeouts`` (N,) (bool), optionally ``next_observations``
(N, O). Episode boundaries are the steps where ``terminals | timeouts``. We also write file
attributes ``env_id``, ``dataset_id`` and a JSON ``metadata`` blob (ignored by D4RL readers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ros_seqplanner.data.episodes import DatasetError, EpisodeDataset

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
OPTIONAL_KEYS = ("timeouts", "next_observations")


def read_d4rl_arrays(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read the flat arrays and file attributes. Raises DatasetError on missing keys / unreadable files."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path} is not a readable HDF5 file ({e})") from e
    with f:
        missing = [k for k in REQUIRED_KEYS if k not in f]
        if missing:
            raise DatasetError(f"{path} is missing D4RL keys {missing}; it has {sorted(f.keys())} "
                               f"(needed: {list(REQUIRED_KEYS)}, optional: {list(OPTIONAL_KEYS)})")
        arrays = {k: f[k][()] for k in REQUIRED_KEYS + OPTIONAL_KEYS if k in f}
        attrs = {k: _attr(v) for k, v in f.attrs.items()}
    return arrays, attrs


def _attr(v: Any) -> Any:
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v


def load_d4rl_hdf5(path: str | Path, env_id: str | None = None, dataset_id: str | None = None) -> EpisodeDataset:
    """Read a D4RL-style HDF5 file into an :class:`EpisodeDataset`.

    ``terminals`` and ``timeouts`` stay distinct (terminated vs truncated episodes); a trailing run with
    neither flag becomes a truncated episode. ``env_id`` / ``dataset_id`` override the file attributes.
    """
    arrays, attrs = read_d4rl_arrays(path)
    _check_arrays(arrays, str(path))
    meta = attrs.get("metadata") if isinstance(attrs.get("metadata"), dict) else {}
    low, high = meta.pop("action_low", None), meta.pop("action_high", None)
    ds = EpisodeDataset.from_flat(
        arrays,
        env_id=env_id or str(attrs.get("env_id", "")),
        dataset_id=dataset_id or str(attrs.get("dataset_id", Path(path).stem)),
        action_low=None if low is None else np.asarray(low, dtype=np.float32),
        action_high=None if high is None else np.asarray(high, dtype=np.float32),
        metadata={**meta, "source_file": str(path)},
    )
    return ds


def _check_arrays(arrays: dict[str, np.ndarray], where: str) -> None:
    n = len(arrays["observations"])
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise DatasetError(f"{where}: inconsistent array lengths {lengths} (all must have {n} rows)")
    if n == 0:
        raise DatasetError(f"{where}: the dataset is empty")
    if arrays["observations"].ndim != 2 or arrays["actions"].ndim != 2:
        raise DatasetError(f"{where}: observations and actions must be 2-D (N, dim)")
    if "next_observations" in arrays and arrays["next_observations"].shape != arrays["observations"].shape:
        raise DatasetError(f"{where}: next_observations shape {arrays['next_observations'].shape} "
                           f"!= observations shape {arrays['observations'].shape}")
    for k in ("observations", "actions", "rewards"):
        if not np.all(np.isfinite(arrays[k])):
            raise DatasetError(f"{where}: {k} contains NaN or Inf")


def save_d4rl_hdf5(dataset: EpisodeDataset, path: str | Path, next_observations: bool = True,
                   compression: str | None = "gzip") -> Path:
    """Write ``dataset`` as a D4RL-style HDF5 file (float32 arrays, bool terminals/timeouts)."""
    flat = dataset.to_flat()
    if not next_observations:
        flat.pop("next_observations")
    meta = dict(dataset.metadata)
    if dataset.action_low is not None and dataset.action_high is not None:
        meta["action_low"] = dataset.action_low.tolist()
        meta["action_high"] = dataset.action_high.tolist()
    return write_d4rl_arrays(path, flat, env_id=dataset.env_id, dataset_id=dataset.dataset_id,
                             metadata=meta, compression=compression)


def write_d4rl_arrays(path: str | Path, arrays: dict[str, np.ndarray], env_id: str = "", dataset_id: str = "",
                      metadata: dict[str, Any] | None = None, compression: str | None = "gzip") -> Path:
    """Write flat arrays (float32 data, bool flags) atomically to ``path``."""
    import h5py

    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise DatasetError(f"cannot write D4RL file: missing arrays {missing}")
    _check_arrays(arrays, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        for k, v in arrays.items():
            v = np.asarray(v)
            v = v.astype(bool) if k in ("terminals", "timeouts") else v.astype(np.float32)
            f.create_dataset(k, data=v, compression=compression)
        f.attrs["env_id"] = env_id
        f.attrs["dataset_id"] = dataset_id
        f.attrs["metadata"] = json.dumps(metadata or {}, default=_json_default)
    tmp.replace(path)
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return str(o)
