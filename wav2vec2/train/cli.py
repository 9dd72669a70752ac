"""The `wav2vec2-train` command (and `scripts/train.py`): Hydra in, plain dataclasses out.

Hydra composes `configs/<config-name>.yaml` over the typed schema registered by
`register_configs()`, so unknown keys and wrong types fail before any compute; the preset
names its task (`task: pretrain`, `task: ctc`) and that task is trained:

    wav2vec2-train --config-name tiny data.manifest_dir=DIR run_dir=runs/tiny
    wav2vec2-train --config-name ctc_base_10h data.manifest_dir=DIR run_dir=runs/ft \
        task.init=runs/base/checkpoint_best.pt
    torchrun --nproc_per_node=8 scripts/train.py --config-name base_librispeech \
        data.manifest_dir=DIR run_dir=runs/base
    wav2vec2-train --config-name base_librispeech hydra/launcher=slurm -m \
        data.manifest_dir=DIR run_dir=runs/base          # SLURM via submitit

Rerunning the same command with the same run_dir resumes from its last checkpoint.
This is the only module of the package that imports hydra at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from wav2vec2.config import PRESETS
from wav2vec2.tasks import TASKS, config_from_dict
from wav2vec2.train.config import TrainConfig

# The repository's configs/ (an editable or source install); `--config-dir` adds another.
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def register_configs() -> None:
    """Hydra's ConfigStore gets the typed schema (`train_schema`), each task's config in
    the `task` group and each model preset of `wav2vec2.config` in the `model` group, so a
    YAML's `defaults: [train_schema, task: ctc, model: base, _self_]` is type-checked and
    unknown keys fail. Model presets live only in Python: one definition each."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for name, task in TASKS.items():
        cs.store(group="task", name=name, node=task.Config)
    for name, make in PRESETS.items():
        cs.store(group="model", name=name, node=make())


def to_train_config(cfg: Any) -> TrainConfig:
    """A composed Hydra config (DictConfig) as a plain `TrainConfig`.

    Merging into a fresh copy of the schema (with the chosen task's section) rejects keys
    the schema lacks, naming them, even ones Hydra let in with a `+key=value` override.
    """
    return config_from_dict(OmegaConf.to_container(cfg, resolve=True))


register_configs()


@hydra.main(config_path=CONFIG_DIR, config_name="tiny", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from wav2vec2.tasks import build_task  # the loop and models load late: --help and --cfg stay fast
    from wav2vec2.train.trainer import Trainer

    train_cfg = to_train_config(cfg)
    Trainer(train_cfg, build_task(train_cfg)).fit()
