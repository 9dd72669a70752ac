"""fairseq wav2vec 2.0 checkpoints (being written: see issue #10)."""

from __future__ import annotations

import argparse
from typing import Any

FAIRSEQ_SAFE_TYPES: list[Any] = [argparse.Namespace]


def is_fairseq_checkpoint(state: dict[str, Any]) -> bool:
    return "args" in state or ("cfg" in state and "model" in state and "config" not in state)


def load_fairseq_ctc(*args: Any, **kwargs: Any):
    raise NotImplementedError("fairseq import is being written")
