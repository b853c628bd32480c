"""``load_policy(path)``: open any checkpoint as a :class:`~ros_seqplanner.policies.base.Policy`.

Dispatches on the JSON ``kind`` (tt | dt | bc | behaviour); the policy modules are imported lazily so
loading a behaviour policy never imports the transformer code.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from ros_seqplanner.nets.checkpoint import CheckpointError, checkpoint_paths

POLICY_CLASSES: dict[str, tuple[str, str]] = {
    "tt": ("ros_seqplanner.policies.tt", "TTPolicy"),
    "dt": ("ros_seqplanner.policies.dt", "DTPolicy"),
    "bc": ("ros_seqplanner.policies.bc", "BCPolicy"),
    "behaviour": ("ros_seqplanner.policies.behaviour", "BehaviourPolicy"),
}


def checkpoint_kind(path: str | Path) -> str:
    """Read ``kind`` from a checkpoint's JSON (``name``, ``name.json`` or ``name.safetensors``)."""
    _, js = checkpoint_paths(path)
    if not js.is_file():
        raise CheckpointError(f"checkpoint metadata {js} does not exist")
    try:
        meta = json.loads(js.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{js} is not valid JSON ({e})") from e
    kind = meta.get("kind") if isinstance(meta, dict) else None
    if kind is None:
        raise CheckpointError(f"{js} has no 'kind' field; not a ros_seqplanner checkpoint")
    return str(kind)


def load_policy(path: str | Path, device: str = "cpu", **options: Any) -> Any:
    """Build the policy for the checkpoint at ``path``; ``options`` go to its ``from_checkpoint``."""
    kind = checkpoint_kind(path)
    if kind not in POLICY_CLASSES:
        raise CheckpointError(f"a {kind!r} checkpoint is not a policy; policy kinds: {sorted(POLICY_CLASSES)}")
    module, cls_name = POLICY_CLASSES[kind]
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except (ImportError, AttributeError) as e:
        raise CheckpointError(f"policy class {module}.{cls_name} for kind {kind!r} is not available ({e})") from e
    return cls.from_checkpoint(path, device=device, **options)
