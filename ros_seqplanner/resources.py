"""Where the package's data folders (``models/``, ``sim/``, ``config/``, ``launch/``) live.

Three install models, tried in order:
1. a source checkout or editable install: the folders next to the ``ros_seqplanner`` package;
2. a pip install into a prefix (venv): ``<prefix>/share/ros_seqplanner/<folder>`` (setup.py's data_files);
3. a colcon/ament install: ``ament_index_python``'s share directory of ``ros_seqplanner``.
``SEQPLANNER_<FOLDER>_DIR`` (e.g. ``SEQPLANNER_MODELS_DIR``) overrides all three.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

PACKAGE = "ros_seqplanner"


def _candidates(folder: str) -> list[Path]:
    out = [Path(__file__).resolve().parents[1] / folder, Path(sys.prefix) / "share" / PACKAGE / folder]
    if any(p.is_dir() for p in out):
        return out
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        with contextlib.suppress(PackageNotFoundError, ValueError, LookupError, OSError):
            out.append(Path(get_package_share_directory(PACKAGE)) / folder)
    except ImportError:
        pass
    return out


def data_dir(folder: str) -> Path:
    """The first existing ``folder`` among the install locations (the checkout's path if none exists,
    so error messages name a sensible place)."""
    override = os.environ.get(f"SEQPLANNER_{folder.upper()}_DIR")
    if override:
        return Path(override)
    candidates = _candidates(folder)
    return next((p for p in candidates if p.is_dir()), candidates[0])


def models_dir() -> Path:
    return data_dir("models")


def sim_dir() -> Path:
    return data_dir("sim")


def config_dir() -> Path:
    return data_dir("config")
