#!/usr/bin/env python
"""Train wav2vec 2.0, any task: the preset names it (pretraining, CTC fine-tuning). Same as
`wav2vec2-train`; see `wav2vec2/train/cli.py` for usage.

    python scripts/train.py --config-name base_librispeech data.manifest_dir=DIR run_dir=DIR
    python scripts/train.py --config-name ctc_base_10h task.init=runs/base/checkpoint_best.pt ...
    torchrun --nproc_per_node=8 scripts/train.py --config-name base_librispeech ...
"""

from __future__ import annotations

from wav2vec2.train.cli import main

if __name__ == "__main__":
    main()
