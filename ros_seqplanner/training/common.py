"""Pieces every trainer shares: seeding, device choice, AdamW param groups, warm-up/cosine schedule."""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch import nn


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch Generator for data sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; anything else is passed to torch.device (validated)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available (run `seqplanner doctor`)")
    return dev


def adamw_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matmul weights (Linear) only; never on biases, LayerNorms or embeddings.

    Same split as nanoGPT/minGPT and the official TT code.
    """
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_matmul = name == "weight" and isinstance(module, nn.Linear)
            is_matmul |= getattr(p, "_matmul_weight", False)  # custom batched-linear weights opt in
            (decay if is_matmul else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def make_adamw(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float,
               device: torch.device | None = None) -> torch.optim.AdamW:
    fused = device is not None and device.type == "cuda"
    return torch.optim.AdamW(adamw_param_groups(model, weight_decay), lr=lr, betas=betas, fused=fused)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.1) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def linear_warmup(step: int, warmup: int) -> float:
    """LR multiplier: linear warm-up then constant (the Decision Transformer schedule)."""
    return min(1.0, (step + 1) / max(1, warmup))
