"""Continuing pretraining from a model somebody already pretrained (the pretrain task's
`task.init`): what is read, what carries over and what restarts, and the health guards that
fit a run which starts far below chance.

What carries over (each `task.init_*` field of `PretrainTaskConfig` says why):

- the weights, always, all of them: the encoder, the quantizer's codebooks and the two
  projections (a source without them is refused unless `task.init_fresh_heads`);
- the architecture, from the source: an explicit override that contradicts it is an error;
- Adam's moments only with `task.init_optimizer` (off by default);
- the Gumbel temperature goes on from the source's anneal (`task.init_temperature`);
- the learning-rate schedule, the update count and the data position restart: the preset's
  warm-up, `optim.max_update` updates of this run, epoch 1 of the new data.

The first lines of the run's log say which of these happened.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from wav2vec2.config import ModelConfig, QuantizerConfig
from wav2vec2.interop.load import load_model
from wav2vec2.interop.loaded import PRETRAINING, LoadedModel
from wav2vec2.model.quantizer import gumbel_temperature

log = logging.getLogger(__name__)

TEMPERATURES = ("continue", "restart")


class Continuation:
    """The source of a continued pretraining run, read once by `PretrainTask.prepare`."""

    def __init__(self, task_cfg: Any, *, optim_cfg: Any) -> None:
        if task_cfg.init_temperature not in TEMPERATURES:
            raise ValueError(f"task.init_temperature must be one of {TEMPERATURES}, got {task_cfg.init_temperature!r}")
        self.cfg, self.optim_cfg = task_cfg, optim_cfg
        try:
            self.source: LoadedModel = load_model(task_cfg.init)
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(f"task.init: {err}") from None
        if self.source.kind != PRETRAINING and not task_cfg.init_fresh_heads:
            self.source.require_pretraining_heads(
                "continuing pretraining needs them (the codebooks define its targets); set task.init_fresh_heads=true "
                "to start them from random weights, knowing the run then starts near chance")

    @property
    def config(self) -> ModelConfig:
        return self.source.config

    def temperature_offset(self) -> int | None:
        """Updates to add to this run's count for the Gumbel temperature: the source's count
        ("continue"; None when the source does not record it, which means its floor), or 0."""
        if self.cfg.init_temperature == "restart":
            return 0
        return self.source.num_updates

    def load_into(self, model: nn.Module) -> int:
        """The source's weights into `model` (the pretraining heads fresh where the source has
        none); returns how many tensors came from the source."""
        if self.source.kind == PRETRAINING:
            model.load_state_dict(self.source.weights, strict=True)
            return len(self.source.weights)
        weights = self.source.encoder_weights()
        missing, unexpected = model.load_state_dict(weights, strict=False)
        fresh = sorted({k.split(".")[0] for k in missing})
        if unexpected or fresh != ["final_proj", "project_q", "quantizer"]:
            raise ValueError(f"task.init: {self.source.describe()} does not fit the model: missing {missing}, "
                             f"unexpected {unexpected}")
        log.warning("task.init_fresh_heads: the quantizer, project_q and final_proj start from random weights "
                    "(%s has none): the run starts near chance", self.source.path)
        return len(weights)

    def moments(self) -> dict[str, dict[str, torch.Tensor]] | None:
        """Adam's moments by parameter name, if asked for (`task.init_optimizer`) and there."""
        if not self.cfg.init_optimizer:
            return None
        if self.source.optimizer_state is None:
            raise ValueError(f"task.init_optimizer=true but {self.source.describe()} carries no Adam moments "
                             "(transformers directories never do; fairseq and this project's checkpoints may)")
        return self.source.optimizer_state

    def report(self, num_tensors: int, quantizer: QuantizerConfig) -> list[str]:
        """What carried over and what was reset, for the first lines of the log."""
        s, offset = self.source, self.temperature_offset()
        if offset is None:
            temperature = f"continues at its floor {quantizer.min_temp:g} ({s.path} does not record its updates)"
        elif offset == 0:
            temperature = f"restarts its anneal at {gumbel_temperature(0, quantizer):g} (task.init_temperature=restart)"
        else:
            temperature = (f"continues from the source's update {offset}: {gumbel_temperature(offset, quantizer):g} "
                           "(task.init_temperature=continue)")
        heads = "" if s.kind == PRETRAINING else " (the quantizer and projections fresh: task.init_fresh_heads)"
        o = self.optim_cfg
        warmup = (f"warm-up {o.warmup_updates} updates to lr {o.lr:g}" if o.schedule == "polynomial_decay"
                  else f"{o.schedule} to lr {o.lr:g}")
        return [
            f"continuing pretraining from {s.describe()}"
            + (f", trained {s.num_updates} updates" if s.num_updates is not None else ""),
            f"  carried: the architecture, {num_tensors} weight tensors{heads}"
            + (", Adam's moments (task.init_optimizer)" if self.cfg.init_optimizer else ""),
            f"  Gumbel temperature {temperature}",
            "  reset: " + ", ".join(
                ([] if self.cfg.init_optimizer else ["Adam's moments (task.init_optimizer=false)"])
                + [f"the lr schedule ({warmup})", "the update count (0; optim.max_update counts this run's)",
                   "the data position (epoch 1)"]),
        ]


def temperature(num_updates: int, quantizer: QuantizerConfig, offset: int | None) -> float:
    """The Gumbel temperature of update `num_updates` of a run whose anneal started `offset`
    updates earlier (None: long enough ago to be at its floor)."""
    if offset is None:
        return quantizer.min_temp
    return gumbel_temperature(num_updates + offset, quantizer)
