"""Random-number state: seeding the global generators and saving / restoring them.

Checkpoints carry every rank's states (torch CPU and CUDA, NumPy, Python) so a resumed run
draws the same dropout masks and LayerDrop decisions as an uninterrupted one. Masks,
negatives, Gumbel noise and crops do not need this: they are seeded per batch
(`wav2vec2.data.batching.batch_seed`).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_global_rngs(seed: int) -> None:
    """Seed the torch, NumPy and Python global RNGs whose states `rng_state()` saves."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
