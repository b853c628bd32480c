"""One entry point for every dataset source: ``load_dataset(path_or_minari_id)``.

* ``*.hdf5`` / ``*.h5`` file -> D4RL-style HDF5 (:func:`load_d4rl_hdf5`)
* a Minari dataset folder or a Minari id (``[namespace/]name-vN``) -> :func:`load_minari`
"""

from __future__ import annotations

from pathlib import Path

from ros_seqplanner.data.d4rl_hdf5 import load_d4rl_hdf5
from ros_seqplanner.data.episodes import DatasetError, EpisodeDataset
from ros_seqplanner.data.minari_io import load_minari

__all__ = ["load_d4rl_hdf5", "load_dataset", "load_minari"]


def load_dataset(path_or_id: str | Path, data_dir: str | Path | None = None) -> EpisodeDataset:
    """Load a dataset by file path, Minari folder or Minari id. Raises DatasetError with the reason."""
    p = Path(path_or_id)
    if p.suffix.lower() in (".hdf5", ".h5"):
        if not p.is_file():
            raise DatasetError(f"dataset file {p} does not exist")
        return load_d4rl_hdf5(p)
    if p.is_dir():
        if (p / "data").is_dir():
            return load_minari(p)
        raise DatasetError(f"{p} is a directory but not a Minari dataset (no data/ folder inside)")
    if p.suffix and p.suffix.lower() not in (".hdf5", ".h5") and p.exists():
        raise DatasetError(f"{p}: unsupported dataset file type {p.suffix!r} (use .hdf5/.h5 or a Minari id)")
    return load_minari(str(path_or_id), data_dir=data_dir)
