"""This project's checkpoints (`checkpoint_*.pt` of a pretraining or CTC fine-tuning run) read
as a `LoadedModel`. The file is the trainer's (`wav2vec2.train.trainer.Trainer.state_dict`):
"model" (the state dict), "config" (the run's whole config as a plain dict), "task" and
"task_state" (a CTC run's dictionary), "num_updates", optimizer and RNG state.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from wav2vec2.config import ModelConfig
from wav2vec2.data.labels import Dictionary
from wav2vec2.interop.loaded import CTC, ENCODER, PRETRAINING, LoadedModel, kind_of_weights, moments_by_name
from wav2vec2.model.wav2vec2 import Wav2Vec2Model

TASK_KINDS = {"pretrain": PRETRAINING, "ctc": CTC}
"""A run's task -> the kind of model its checkpoints hold."""


def is_our_checkpoint(state: Any) -> bool:
    """This project's layout: a "model" state dict and the run's "config" (with its "model" section)."""
    return (isinstance(state, Mapping) and isinstance(state.get("model"), Mapping)
            and isinstance(state.get("config"), Mapping) and isinstance(state["config"].get("model"), Mapping))


def read_ours(path: str | Path, state: Mapping[str, Any]) -> LoadedModel:
    """The model of one of this project's checkpoints. Its kind is the run's task; a checkpoint
    that predates the "task" field is judged by its weights, never assumed."""
    weights, run = state["model"], state["config"]
    found = kind_of_weights(weights)
    task = state.get("task")
    if task is not None:
        if task not in TASK_KINDS:
            raise ValueError(f"{path} is a checkpoint of the {task!r} task, which holds no wav2vec 2.0 model this "
                             f"version can read (tasks: {', '.join(TASK_KINDS)})")
        kind = TASK_KINDS[task]
        if found == ENCODER and kind == PRETRAINING:
            kind = ENCODER  # a pretraining model whose heads were removed
        elif found != kind:
            raise ValueError(f"{path} says it is a {task!r} checkpoint but its weights are not a {kind} model's")
    elif found is None:
        raise ValueError(f"{path}: its weights are neither a Wav2Vec2Model's nor a Wav2Vec2Ctc's")
    else:
        kind = found
    schema = OmegaConf.structured(ModelConfig)
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(schema, run["model"]))
    except Exception as err:  # noqa: BLE001 - omegaconf's errors: an unknown key or a wrong type
        raise ValueError(f"{path}: its model config does not fit this version's schema ({str(err).splitlines()[0]})"
                         ) from None
    data, task_cfg = run.get("data") or {}, run.get("task") or {}
    dictionary = None
    if kind == CTC:
        symbols = (state.get("task_state") or {}).get("dictionary")
        dictionary = Dictionary.from_symbols(list(symbols)) if symbols else None
    normalize = data.get("normalize")
    num_updates = state.get("num_updates")
    moments = _moments(state.get("optimizer"), cfg, kind) if kind != CTC else None
    return LoadedModel(
        kind, cfg, dict(weights), normalize=None if normalize is None else bool(normalize),
        sample_rate=int(data.get("sample_rate", 16000)), dictionary=dictionary,
        final_dropout=float(task_cfg.get("final_dropout", 0.0)) if kind == CTC else 0.0,
        format="wav2vec2", origin="wav2vec2 checkpoint", path=str(path), training=dict(run),
        num_updates=int(num_updates) if num_updates is not None else None, optimizer_state=moments,
    )


def _moments(optimizer: Any, cfg: ModelConfig, kind: str) -> dict[str, dict] | None:
    """The trainer's Adam state by parameter name. Its optimizer holds the model's trainable
    parameters in `named_parameters()` order, in one group (`train/optim.py: build_optimizer`)."""
    if not isinstance(optimizer, Mapping) or not isinstance(optimizer.get("state"), Mapping):
        return None
    with torch.device("meta"):
        model = Wav2Vec2Model(cfg)
    if kind == ENCODER:
        model.remove_pretraining_modules()
    params = [(name, tuple(p.shape)) for name, p in model.named_parameters() if p.requires_grad]
    return moments_by_name([n for n, _ in params], [s for _, s in params], dict(optimizer["state"]))
