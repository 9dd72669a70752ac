"""Utterance classification: SUPERB's keyword spotting / speaker ID / emotion recognition
task, on any labelled audio (language ID in docs/probing.md).

The model is `Wav2Vec2Classifier`: the encoder of `task.init` (any format the one loader
reads; "" for random weights), usually frozen and read through a learned layer-weighted sum
(`model.upstream`, SUPERB's protocol), then a projector, the mean over each utterance's
unpadded frames and a Linear to the classes.

- Labels: `{subset}.{task.labels}` (default `.lbl`) beside each `{subset}.tsv`, one class
  name per manifest line. The classes are `task.classes`, or the sorted distinct labels of
  the training subset. A missing line, an empty one, or a class outside them is an error
  naming the file and line.
- Loss: cross-entropy summed over utterances (sample size: utterances), logged in bits.
- Validation: accuracy (the best checkpoint is the most accurate) and the confusion matrix,
  as `confusion_{true}_{predicted}` counts in the validation rows (class indices in the order
  of the `classes` the run logs at its start; up to `CONFUSION_MAX_CLASSES` classes) and as a
  table in the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wav2vec2.config import TrainConfig
from wav2vec2.data import ClassLabelledAudioDataset, read_manifest
from wav2vec2.data.labels import read_class_labels
from wav2vec2.model.classifier import Wav2Vec2Classifier
from wav2vec2.model.losses import LN2
from wav2vec2.tasks.base import LossOutput, Panel, Task
from wav2vec2.tasks.probing import layer_weight_metrics, layer_weight_panels, layer_weight_sums, load_init

log = logging.getLogger(__name__)

CONFUSION_MAX_CLASSES = 50
"""Above this many classes (speaker ID's 1,251) the confusion matrix is neither summed nor
logged: N^2 numbers per validation row would swamp metrics.jsonl. Accuracy always is."""


@dataclass
class ClassifyTaskConfig:
    """Utterance classification; the upstream options (frozen, layer-weighted) are in `model.upstream`."""

    name: str = "classify"
    """The task; chosen by the preset's `task: classify` default, not set by hand."""
    init: str = ""
    """The upstream: a checkpoint of this project, a fairseq wav2vec 2.0 checkpoint or a
    transformers directory, read by `wav2vec2.interop.load.load_model`; its architecture
    replaces `model`'s. "" starts from random weights of `model` (the baseline a probe of a
    pretrained model must beat)."""
    labels: str = "lbl"
    """Class labels are `{subset}.{labels}` beside each `{subset}.tsv`, one name per line."""
    classes: list[str] = field(default_factory=list)
    """The class names, in the order of the output layer; empty: the sorted distinct labels
    of `data.train_subset`."""
    projector_dim: int = 256
    """Width of the projector before pooling (SUPERB's `projector_dim`, 256)."""


class ClassifyTask(Task):
    name = "classify"
    Config = ClassifyTaskConfig
    best_metric = "accuracy"
    higher_is_better = True
    interval_weights = {"loss": "utterances", "accuracy": "utterances"}
    console = (("loss", "loss", ".3f"), ("accuracy", "acc", ".3f"))

    def __init__(self, cfg: TrainConfig, *, architecture_overrides: tuple[str, ...] = ()) -> None:
        super().__init__(cfg, architecture_overrides=architecture_overrides)
        if cfg.data.max_sample_size:
            raise ValueError(f"data.max_sample_size must be 0 for classification (got {cfg.data.max_sample_size}): "
                             "the utterance is classified whole")
        self.classes: list[str] = list(self.task_cfg.classes)
        self._init_weights: dict[str, torch.Tensor] | None = None
        self._prepared = False

    def labels_path(self, subset: str) -> Path:
        return Path(self.cfg.data.manifest_dir) / f"{subset}.{self.task_cfg.labels}"

    def prepare(self) -> None:
        """The classes (from the training labels unless `task.classes` lists them) and the
        upstream of `task.init`: its architecture replaces `model`'s."""
        if self._prepared:
            return
        if not self.classes:
            subset = self.cfg.data.train_subset
            _, entries = read_manifest(self.manifest(subset))
            path = self.labels_path(subset)
            if not path.is_file():
                raise FileNotFoundError(f"no class labels {path} for {self.manifest(subset)} (task.labels="
                                        f"{self.task_cfg.labels!r}: one class name per manifest line)")
            self.classes = sorted(set(read_class_labels(path, num_lines=len(entries))))
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classification needs at least 2 distinct classes, got {self.classes} "
                             "(task.classes, or the training labels)")
        self.task_cfg.classes = list(self.classes)  # so the run's config.yaml lists them
        log.info("%d classes: %s", len(self.classes), " ".join(self.classes))
        if self.task_cfg.init:
            self._init_weights = load_init(self.task_cfg.init, self.cfg, self.architecture_overrides)
        self._prepared = True

    # ------------------------------------------------------------------ building
    def build_model(self) -> nn.Module:
        self.prepare()
        model = Wav2Vec2Classifier(self.cfg.model, num_classes=len(self.classes),
                                   projector_dim=self.task_cfg.projector_dim)
        if self._init_weights is not None:
            model.wav2vec2.load_state_dict(self._init_weights, strict=True)
            log.info("upstream: %s (%d tensors)%s", self.task_cfg.init, len(self._init_weights),
                     ", frozen" if self.cfg.model.upstream.freeze else "")
        else:
            log.info("upstream: random initialisation (task.init is empty)")
        return model

    def build_dataset(self, subset: str) -> ClassLabelledAudioDataset:
        self.prepare()
        d = self.cfg.data
        return ClassLabelledAudioDataset(
            self.manifest(subset), labels_path=self.labels_path(subset), classes=self.classes,
            sample_rate=d.sample_rate, min_sample_size=d.min_sample_size, normalize=d.normalize,
            bad_files=d.bad_files,
        )

    def has_unused_parameters(self) -> bool:
        return self.cfg.model.transformer.layerdrop > 0 and not self.cfg.model.upstream.freeze

    # ------------------------------------------------------------------ training
    def _confusion(self) -> bool:
        return len(self.classes) <= CONFUSION_MAX_CLASSES

    def _step(self, model: nn.Module, batch: dict[str, Any], *, generator: torch.Generator,
              confusion: bool) -> LossOutput:
        out = model(batch["source"], batch.get("padding_mask"), generator=generator)
        target = batch["target"][:, 0]  # (B, 1) -> (B,)
        loss = F.cross_entropy(out.logits.float(), target, reduction="sum")
        predicted = out.logits.argmax(dim=-1)
        sums: dict[str, Any] = {
            "loss": loss.detach(),
            "correct": (predicted == target).sum(),
            **layer_weight_sums(self.cfg.model, out.layer_weights),
        }
        if confusion:
            N = len(self.classes)
            counts = torch.bincount(target * N + predicted, minlength=N * N)  # (N*N,) true-major
            sums.update({f"confusion_{i}_{j}": counts[i * N + j] for i in range(N) for j in range(N)})
        return LossOutput(loss=loss, sample_size=target.numel(), sums=sums)

    def loss(self, model: nn.Module, batch: dict[str, Any], *, num_updates: int,
             generator: torch.Generator) -> LossOutput:
        return self._step(model, batch, generator=generator, confusion=False)

    def metrics(self, sums: dict[str, float], *, num_updates: int) -> dict[str, float]:
        n = max(sums["sample_size"], 1.0)  # utterances
        return {
            "loss": sums["loss"] / n / LN2,  # bits per utterance
            "accuracy": sums["correct"] / n,
            **layer_weight_metrics(self.cfg.model, sums),
        }

    # ------------------------------------------------------------------ validation
    def valid_step(self, model: nn.Module, batch: dict[str, Any], *, num_updates: int,
                   generator: torch.Generator) -> LossOutput:
        return self._step(model, batch, generator=generator, confusion=self._confusion())

    def valid_metrics(self, sums: dict[str, float], *, num_updates: int) -> dict[str, float]:
        metrics = self.metrics(sums, num_updates=num_updates)
        if self._confusion():
            N = len(self.classes)
            matrix = {f"confusion_{i}_{j}": sums[f"confusion_{i}_{j}"] for i in range(N) for j in range(N)}
            metrics.update(matrix)
            log.info("confusion matrix (rows: true class, columns: predicted)\n%s", confusion_table(
                self.classes, [[matrix[f"confusion_{i}_{j}"] for j in range(N)] for i in range(N)]))
        return metrics

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        # The output layer's classes travel with the weights that score them.
        return {"classes": list(self.classes)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("classes")
        if saved is not None and list(saved) != self.classes:
            raise ValueError(f"the checkpoint was trained on classes {saved}, this run has {self.classes}: "
                             "the output layer would mean other classes (set task.classes to the checkpoint's)")

    # ------------------------------------------------------------------ judging a run
    def chance(self) -> float:
        """Accuracy of a uniform guess; 0 before the classes are known (a finished run's
        config.yaml lists them: `prepare` writes them into `task.classes`)."""
        return 1.0 / len(self.classes) if self.classes else 0.0

    def checks(self, metrics: dict[str, float]) -> dict[str, bool]:
        return {"accuracy above chance (a uniform guess)": metrics["accuracy"] > self.chance()}

    def describe(self, metrics: dict[str, float]) -> list[str]:
        return [f"  accuracy {100 * metrics['accuracy']:.2f}%   loss {metrics['loss']:.3f} bits per utterance"]

    def panels(self) -> list[Panel]:
        chance = ((self.chance(), "chance (uniform guess)"),) if self.chance() else ()
        return [
            Panel("cross-entropy", train=(("loss", "train"),), valid=(("loss", "valid"),), ylabel="bits per utterance",
                  lr=True),
            Panel("accuracy", train=(("accuracy", "train"),), valid=(("accuracy", "valid"),), references=chance,
                  ylim=(0.0, 1.02)),
            *layer_weight_panels(self.cfg.model),
        ]


def confusion_table(classes: list[str], matrix: list[list[float]]) -> str:
    """The matrix as aligned text: one row per true class, one column per predicted class."""
    width = max(6, *(len(c) for c in classes))
    lines = [" " * width + " " + " ".join(f"{c:>{width}}" for c in classes)]
    lines += [f"{c:>{width}} " + " ".join(f"{int(v):>{width}d}" for v in row) for c, row in zip(classes, matrix)]
    return "\n".join(lines)
