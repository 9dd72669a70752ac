#!/usr/bin/env python
"""Pretrain wav2vec 2.0; see `wav2vec2/train/cli.py` for usage. Same as `wav2vec2-train`.

    python scripts/train.py --config-name base_librispeech data.manifest_dir=DIR run_dir=DIR
    torchrun --nproc_per_node=8 scripts/train.py --config-name base_librispeech ...
"""

from __future__ import annotations

from wav2vec2.train.cli import main

if __name__ == "__main__":
    main()
