"""Random-number state: seeding the global generators and saving / restoring them, and the
switch to deterministic kernels.

Checkpoints carry every rank's states (torch CPU and CUDA, NumPy, Python) so a resumed run
draws the same dropout masks and LayerDrop decisions as an uninterrupted one. Masks,
negatives, Gumbel noise and crops do not need this: they are seeded per batch
(`wav2vec2.data.batching.batch_seed`).
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def seed_global_rngs(seed: int) -> None:
    """Seed the torch, NumPy and Python global RNGs whose states `rng_state()` saves."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def set_deterministic() -> None:
    """Deterministic kernels (cuBLAS workspace, cuDNN, `use_deterministic_algorithms`): the
    same run gives the same bits on a GPU too, slower (`train.deterministic`)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """The global RNG states as tensors and plain containers only, so a checkpoint holding
    them loads with torch's weights-only unpickler (no code runs)."""
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": random.getstate(),  # (version, tuple of ints, float or None)
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (numpy_state["name"], numpy_state["key"].numpy().astype(np.uint32), numpy_state["pos"],
                       numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    np.random.set_state(numpy_state)  # checkpoints written before this change hold the tuple
    random.setstate(state["python"])
