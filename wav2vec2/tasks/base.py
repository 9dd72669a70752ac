"""The task contract: everything the training loop needs to know about one kind of training.

The loop (`wav2vec2.train.trainer.Trainer`) owns devices, DDP, gradient accumulation,
precision and loss scaling, clipping, the learning-rate schedule, checkpoints, exact
resume, logging and the validation cadence. A task owns its model, data, loss, metrics and
the judgement of a run. A new task is one file beside `pretrain.py` and `ctc.py`, one line
in `wav2vec2/tasks/__init__.py` and a YAML preset; if the loop ever needs
`if task == ...`, this contract is missing a method.

What the loop calls, in this order:

1. `prepare()`, before anything else (it may fix `cfg.model`'s architecture from a
   pretrained model); then `build_model()` under `torch.manual_seed(seed)`, so every rank
   builds the same weights, and `has_unused_parameters()` for DDP. A fresh run (nothing
   to resume) then loads `carried_moments()` into the optimizer, if the task has any.
2. `build_dataset(data.train_subset)`, then `build_dataset(data.valid_subset)` if set.
3. `load_state_dict(...)` when the run resumes or continues from a checkpoint.
4. Each update, for each micro-batch: `loss(model, batch, ...)`; the loop back-propagates
   `LossOutput.loss`, adds the sums over micro-batches and ranks, divides the gradient by
   the summed `sample_size` (fairseq's update), then calls `metrics(sums, ...)` once, unless
   the update is skipped (inf/nan). `interval_weights` say how the logged rows average
   updates; `console` which metrics the progress line shows. With `logging.peak_tflops`
   set, `update_flops(batch, sample_size, ...)` per micro-batch too, after the sums are
   all-reduced, for the row's MFU (None, the default: no MFU).
5. Each validation, for each batch on each rank: `valid_step(model, batch, ...)`; then
   `valid_metrics(sums, ...)` once. `best_metric` / `higher_is_better` pick `checkpoint_best`.
6. After each logged row (train or valid), on rank 0: `health(history)`, printed as warnings.
7. `state_dict()` at every checkpoint, on every rank.
8. At the end of a run (rank 0), and from `python -m wav2vec2.train.plots RUN`: `verdict(history)`
   (through `checks` and `describe`) and `panels()` for `curves.png`.

What a task may assume:

- `batch` is on the model's device: "id" (B,), "source" (B, L) float, "padding_mask"
  (B, L) with True = padding only when some utterance is padded, and "target" /
  "target_lengths" from a `LabelledAudioDataset`. The loop has taken "bad_files" out.
- `loss` runs in train mode with autocast active under bf16/fp16, the model wrapped in DDP
  (call it, do not reach into it); `valid_step` runs the unwrapped model in eval mode under
  `no_grad`, also under autocast.
- `generator` is on the device and seeded for this batch from (seed, epoch, global batch
  position): its draws (masks, negatives, Gumbel noise) are the same whatever the number of
  ranks or micro-batches and after a resume. Dropout uses the global RNG, per rank, saved
  in checkpoints.
- `num_updates` counts the updates done before this one (0 first) and does not advance on a
  skipped update: schedules that are functions of it survive resume with no state.
- `metrics` / `valid_metrics` get Python floats: the task's own sums, summed over
  micro-batches (or batches) and ranks, plus "sample_size".

What a task must not do:

- name a sum or a metric after one of the loop's own (`RESERVED`, and `best_{best_metric}`):
  the loop raises ValueError naming the name and the task;
- return other sum names from one call to the next;
- back-propagate, step or all-reduce itself, or turn sums into Python numbers inside
  `loss` (one host sync per update is the loop's);
- keep state a resumed run needs outside `state_dict()` (none so far: the Gumbel
  temperature and the fine-tuning freeze are functions of `num_updates`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from wav2vec2.data import RawAudioDataset
from wav2vec2.config import ModelConfig, TrainConfig


RESERVED = frozenset({
    "sample_size",  # the summed LossOutput.sample_size, added to the sums `metrics` gets
    "utterances", "lr", "grad_norm", "loss_scale",  # the loop's numbers of each update
    "data_wait_sec", "audio_sec_per_sec", "device_audio_sec_per_sec", "mfu",  # throughput
    "nonfinite_skips", "bad_files",  # run totals
    "split", "num_updates", "time",  # every record of metrics.jsonl
})
"""Names the loop writes itself: a task's sums and metrics must not use them, nor
`best_{best_metric}` (validation rows), or the loop raises ValueError naming the name."""


def check_architecture_overrides(model: ModelConfig, source: ModelConfig, overrides: tuple[str, ...], *,
                                 where: str) -> None:
    """Raise ValueError, naming the field, if an architecture field the user set explicitly
    (`overrides`: dotted names under `model.`) differs from `source`'s: the architecture comes
    from `where` (a task's init), whose weights would not load into another."""
    for name in overrides:
        ours, theirs = model, source
        for part in name.split("."):
            ours, theirs = getattr(ours, part), getattr(theirs, part)
        if (list(ours) if isinstance(ours, (list, tuple)) else ours) != (
                list(theirs) if isinstance(theirs, (list, tuple)) else theirs):
            raise ValueError(f"model.{name}={ours} contradicts the architecture of {where} (model.{name}={theirs}): "
                             "the architecture comes from task.init; drop the override")


@dataclass
class LossOutput:
    loss: Tensor
    """0-dim: the loss summed over this micro-batch (what is back-propagated)."""
    sample_size: Tensor | float
    """What `loss` is a sum over (masked frames for pretraining, utterances for CTC)."""
    sums: dict[str, Tensor | float]
    """Named, detached metric sums over this micro-batch; the loop adds them over
    micro-batches and ranks before `Task.metrics` turns them into logged numbers."""


@dataclass(frozen=True)
class Panel:
    """One panel of a run's curves (`python -m wav2vec2.train.plots RUN`), against updates."""

    title: str
    train: tuple[tuple[str, str], ...] = ()
    """(metric, legend label) of the lines drawn from the train rows."""
    valid: tuple[tuple[str, str], ...] = ()
    """(metric, legend label) of the lines drawn, with markers, from the validation rows."""
    references: tuple[tuple[float, str], ...] = ()
    """(value, legend label) of dashed horizontal lines: chance, a collapse floor..."""
    ylabel: str = ""
    ylim: tuple[float, float] | None = None
    """Fixed y range, where one curve would squash the others; None: matplotlib's."""
    lr: bool = False
    """Also draw the learning rate, on a second y axis."""


class Task:
    """Base class of the tasks (see the module docstring)."""

    name: ClassVar[str]
    Config: ClassVar[type]
    """The dataclass of this task's `task:` config section."""
    best_metric: ClassVar[str] = "loss"
    """The validation metric that picks `checkpoint_best.pt`."""
    higher_is_better: ClassVar[bool] = False
    interval_weights: ClassVar[dict[str, str]] = {}
    """Over a logging interval, metric -> the per-update count it is averaged weighted by;
    metrics not listed are plain means over the updates."""
    console: ClassVar[tuple[tuple[str, str, str], ...]] = (("loss", "loss", ".3f"),)
    """(metric, label, format) of the short console line, before lr, throughput and ETA."""

    def __init__(self, cfg: TrainConfig, *, architecture_overrides: tuple[str, ...] = ()) -> None:
        """`architecture_overrides`: the architecture fields (dotted, under `model.`) the
        user set explicitly; a task whose `task.init` fixes the architecture refuses those
        that contradict it (`check_architecture_overrides`)."""
        self.cfg = cfg
        self.task_cfg = cfg.task
        self.architecture_overrides = tuple(architecture_overrides)

    # ------------------------------------------------------------------ building
    def prepare(self) -> None:
        """Reading what training needs beyond the config (a vocabulary, pretrained weights
        and the architecture they fix). The trainer calls it first; judging a finished run
        (`verdict`) does not need it. Must be idempotent."""

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def carried_moments(self) -> dict[str, Tensor] | None:
        """Adam's moments to start from, by parameter name (`{name: {"step", "exp_avg",
        "exp_avg_sq"}}`), when a fresh run continues a pretrained model's training; None by
        default. The loop loads them once, never over a resumed run's own."""
        return None

    def build_dataset(self, subset: str) -> RawAudioDataset:
        raise NotImplementedError

    def manifest(self, subset: str) -> Path:
        """`{data.manifest_dir}/{subset}.tsv`, or an error that says how to make one."""
        directory = Path(self.cfg.data.manifest_dir)
        path = directory / f"{subset}.tsv"
        if not path.is_file():
            found = sorted(p.stem for p in directory.glob("*.tsv")) if directory.is_dir() else []
            there = (f"{directory} has {', '.join(found)} (data.train_subset / data.valid_subset name them)"
                     if found else "write one with `wav2vec2-manifest AUDIO_DIR --dest DIR`, or "
                                   "scripts/prepare_asterisk.py (--finetune-splits for labelled splits)")
            raise FileNotFoundError(f"no manifest {path} (data.manifest_dir={directory}, subset {subset!r}): {there}")
        return path

    def has_unused_parameters(self) -> bool:
        """True when some parameters may get no gradient in an update (LayerDrop, a frozen
        encoder), which DDP must be told (`find_unused_parameters`)."""
        return False

    # ------------------------------------------------------------------ training
    def loss(
        self, model: nn.Module, batch: dict[str, Any], *, num_updates: int, generator: torch.Generator
    ) -> LossOutput:
        """One micro-batch (already on the model's device) in training mode."""
        raise NotImplementedError

    def update_flops(self, batch: dict[str, Any], sample_size: float, *, num_updates: int) -> float | None:
        """Analytical FLOPs of forward and backward of one training micro-batch (`batch` as
        `loss` got it, `sample_size` its `LossOutput.sample_size`), for the log's MFU
        (`wav2vec2.model.flops`); None (the default): unknown, no MFU is logged."""
        return None

    def metrics(self, sums: dict[str, float], *, num_updates: int) -> dict[str, float]:
        """Logged training metrics of one update from its summed `LossOutput.sums`."""
        raise NotImplementedError

    # ------------------------------------------------------------------ validation
    def valid_step(
        self, model: nn.Module, batch: dict[str, Any], *, num_updates: int, generator: torch.Generator
    ) -> LossOutput:
        """One validation batch, in eval mode under no_grad. Defaults to `loss`."""
        return self.loss(model, batch, num_updates=num_updates, generator=generator)

    def valid_metrics(self, sums: dict[str, float], *, num_updates: int) -> dict[str, float]:
        """Logged validation metrics from the sums of every `valid_step` on every rank."""
        return self.metrics(sums, num_updates=num_updates)

    # ------------------------------------------------------------------ judging a run
    def checks(self, metrics: dict[str, float]) -> dict[str, bool]:
        """Named pass/fail checks of a validation result: the definition of a healthy run,
        used by the end-of-run summary, the demo and the tests."""
        return {}

    def health(self, history: list[dict[str, Any]]) -> list[str]:
        """Warnings about the newest record of `history` (every logged record so far, each
        with "split", "num_updates" and the metrics), in the light of the ones before."""
        return []

    def panels(self) -> list[Panel]:
        """What `curves.png` shows, panel by panel."""
        return [Panel("loss", train=(("loss", "train"),), valid=(("loss", "valid"),), lr=True)]

    def describe(self, metrics: dict[str, float]) -> list[str]:
        """The lines of the end-of-run summary that show `metrics` (a validation result)."""
        shown = {key: label for key, label, _ in self.console}
        return [f"  {shown[key]} {value:.4g}" for key, value in metrics.items() if key in shown]

    def verdict(self, history: list[dict[str, Any]]) -> tuple[list[str], bool]:
        """The end-of-run summary and whether the run is healthy, judged by `checks` on the
        last validation (the last training log if the run never validated)."""
        valid = [r for r in history if r["split"] == "valid"]
        record = valid[-1] if valid else [r for r in history if r["split"] == "train"][-1]
        checks = self.checks(record)
        healthy = all(checks.values())
        lines = [f"after {record['num_updates']} updates ({'validation' if valid else 'training'}):"]
        lines += self.describe(record)
        lines += [f"  [{'ok' if ok else 'FAIL'}] {name}" for name, ok in checks.items()]
        lines.append("healthy: the model learned" if healthy else "NOT healthy: see the README's troubleshooting")
        return lines, healthy

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
