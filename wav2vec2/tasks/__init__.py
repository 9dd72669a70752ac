"""Tasks the training loop can run: one file each, registered here by name.

A preset picks one with its `task:` default (`configs/pretrain.yaml`: `task: pretrain`,
`configs/ctc.yaml`: `task: ctc`, `configs/classify.yaml`: `task: classify`); `build_task(cfg)`
makes it.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from wav2vec2.tasks.base import LossOutput, Panel, Task
from wav2vec2.tasks.classify import ClassifyTask
from wav2vec2.tasks.ctc import CtcTask
from wav2vec2.tasks.pretrain import PretrainTask
from wav2vec2.config import TrainConfig, migrate_config_dict

TASKS: dict[str, type[Task]] = {task.name: task for task in (PretrainTask, CtcTask, ClassifyTask)}


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """A `TrainConfig` from its plain-dict form (as checkpoints store it), checked against
    the schema of its task: unknown keys and wrong types raise, naming the key. Keys of
    earlier versions are renamed first (`migrate_config_dict`)."""
    d = migrate_config_dict(d)
    task = d.get("task") or {}
    name = task.get("name") if isinstance(task, dict) else None
    if name not in TASKS:
        raise ValueError(f"task.name must be one of {sorted(TASKS)}, got {name!r}")
    schema = OmegaConf.structured(TrainConfig)
    schema.task = OmegaConf.structured(TASKS[name].Config)
    return OmegaConf.to_object(OmegaConf.merge(schema, d))


def build_task(cfg: TrainConfig, *, architecture_overrides: tuple[str, ...] = ()) -> Task:
    """The task `cfg.task` configures. `architecture_overrides`: the architecture fields the
    user set explicitly (`Task.__init__`)."""
    name = getattr(cfg.task, "name", None)
    if name not in TASKS:
        raise ValueError(f"task.name must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name](cfg, architecture_overrides=architecture_overrides)


__all__ = ["TASKS", "LossOutput", "Panel", "Task", "build_task", "config_from_dict"]
