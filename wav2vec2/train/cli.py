"""The `wav2vec2-train` command (and `scripts/train.py`): Hydra in, plain dataclasses out.

Hydra composes `configs/<config-name>.yaml` over the typed schema registered by
`register_configs()`, so unknown keys and wrong types fail before any compute:

    wav2vec2-train --config-name tiny data.manifest_dir=DIR run_dir=runs/tiny
    torchrun --nproc_per_node=8 scripts/train.py --config-name base_librispeech \
        data.manifest_dir=DIR run_dir=runs/base
    wav2vec2-train --config-name base_librispeech hydra/launcher=slurm -m \
        data.manifest_dir=DIR run_dir=runs/base          # SLURM via submitit

Rerunning the same command with the same run_dir resumes from its last checkpoint.
This is the only module of the package that imports hydra at import time.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from wav2vec2.train.config import register_configs, to_train_config

# The repository's configs/ (an editable or source install); `--config-dir` adds another.
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")

register_configs()


@hydra.main(config_path=CONFIG_DIR, config_name="tiny", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from wav2vec2.train.trainer import Trainer  # imported late: --help and --cfg stay fast

    Trainer(to_train_config(cfg)).fit()
