"""CTC fine-tuning (paper §4, fairseq `audio_finetuning` + `ctc` criterion + `Wav2VecCtc`).

The model is `Wav2Vec2Ctc`: a pretrained encoder (this project's checkpoint or a
transformers directory, `task.init`; or random, for comparisons) and a Linear to the letter
vocabulary of `dict.ltr.txt`. As fairseq (`models/wav2vec/wav2vec2_asr.py`, `criterions/ctc.py`):

- the architecture comes from the pretrained model; dropouts, masks, LayerDrop and
  `feature_grad_mult` come from this run's `model` section (the recipes' fine-tuning
  values), and a `data.normalize` that differs from pretraining's is an error;
- the CNN is frozen when `model.feature_encoder.grad_mult` is 0, the whole encoder for
  the first `task.freeze_finetune_updates` updates (only the head trains);
- the loss is `ctc_loss` summed over utterances (blank 0, `zero_infinity`), and the sample
  size is the number of utterances (`sentence_avg`);
- validation decodes greedily and reports `wer` and `cer` in percent; the best
  checkpoint is the one with the lowest WER (or CER: `task.best_metric`).

With `model.upstream` (frozen, layer-weighted: `configs/probe_ctc_*.yaml`) the same task is
SUPERB's PR/ASR probe: a Linear on a weighted sum of a frozen model's hidden states.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wav2vec2.config import TrainConfig
from wav2vec2.data import Dictionary, LabelledAudioDataset
from wav2vec2.data.labels import BLANK, SPECIALS
from wav2vec2.infer.decode import error_counts, greedy_ctc, wer_cer
from wav2vec2.model.ctc import Wav2Vec2Ctc, ctc_loss_sum
from wav2vec2.model.flops import ctc_update_flops
from wav2vec2.model.losses import LN2
from wav2vec2.tasks.base import LossOutput, Panel, Task
from wav2vec2.tasks.probing import layer_weight_metrics, layer_weight_panels, layer_weight_sums, load_init

log = logging.getLogger(__name__)


@dataclass
class CtcTaskConfig:
    """CTC fine-tuning. The fine-tuning values of dropouts, masks and LayerDrop are in
    `model` (they override the pretrained model's); the rest is here."""

    name: str = "ctc"
    """The task; chosen by the preset's `task: ctc` default, not set by hand."""
    init: str = ""
    """Pretrained weights to fine-tune (fairseq `w2v_path`): a checkpoint of this project
    (`checkpoint_best.pt` of a pretraining run; of a CTC run, its encoder), a fairseq
    wav2vec 2.0 checkpoint (pretraining or fine-tuned), or a local transformers
    `Wav2Vec2ForPreTraining` / `Wav2Vec2Model` / `Wav2Vec2ForCTC` directory.
    Its architecture replaces `model`'s. "" starts from random weights of `model`."""
    labels: str = "ltr"
    """Transcripts are `{subset}.{labels}` beside each `{subset}.tsv`, line for line."""
    dictionary: str = ""
    """The letter dictionary; "" means `dict.{labels}.txt` in `data.manifest_dir`."""
    final_dropout: float = 0.0
    """Dropout before the output Linear (fairseq `final_dropout`)."""
    freeze_finetune_updates: int = 0
    """Updates during which the whole encoder is frozen and only the output layer trains."""
    best_metric: str = "wer"
    """The validation metric that picks checkpoint_best.pt: "wer" (fairseq's recipes) or
    "cer"; lower is better. Where WER is stuck near 100% (a few minutes of labels, a small
    model), an empty output scores best on it, and CER is the one that tells models apart."""
    num_examples: int = 3
    """Validation hypotheses logged next to their references."""
    only_blanks_after: float = 0.25
    """Warn when validation still emits nothing but blanks this far into the run (a
    fraction of `optim.max_update`) and after the freeze: CTC's blank phase should be over."""


class CtcTask(Task):
    name = "ctc"
    Config = CtcTaskConfig
    best_metric = "wer"
    higher_is_better = False
    interval_weights = {"loss": "utterances", "loss_per_token": "tokens"}
    console = (("loss_per_token", "loss/letter", ".3f"), ("blank_frac", "blank", ".3f"), ("wer", "WER", ".2f"),
               ("cer", "CER", ".2f"))

    def __init__(self, cfg: TrainConfig, *, dictionary: Dictionary | None = None,
                 architecture_overrides: tuple[str, ...] = ()) -> None:
        """`dictionary`: the vocabulary of a trained model (from its checkpoint); by default
        it is read from `task.dictionary` / `dict.{labels}.txt`."""
        super().__init__(cfg, architecture_overrides=architecture_overrides)
        t, d = self.task_cfg, cfg.data
        if d.max_sample_size:
            raise ValueError(f"data.max_sample_size must be 0 for CTC fine-tuning (got {d.max_sample_size}): "
                             "cropping would cut audio away from its transcript")
        if t.best_metric not in ("wer", "cer"):
            raise ValueError(f"task.best_metric must be 'wer' or 'cer', got {t.best_metric!r}")
        self.best_metric = t.best_metric
        self.dictionary_path = Path(t.dictionary or Path(d.manifest_dir) / f"dict.{t.labels}.txt")
        self._dictionary = dictionary
        self._init_weights: dict[str, torch.Tensor] | None = None
        self._prepared = False
        self._examples: list[tuple[str, str]] = []

    def prepare(self) -> None:
        """Read the dictionary, and the pretrained model of `task.init`: its architecture
        replaces `model`'s, its weights wait for `build_model`."""
        if self._prepared:
            return
        t = self.task_cfg
        if self._dictionary is None:
            if not self.dictionary_path.is_file():
                raise FileNotFoundError(f"no letter dictionary at {self.dictionary_path} (task.dictionary, "
                                        f"or dict.{t.labels}.txt in data.manifest_dir)")
            self._dictionary = Dictionary.load(self.dictionary_path)
        if t.init:
            # The shapes come from the pretrained model, everything else from this config.
            self._init_weights = load_init(t.init, self.cfg, self.architecture_overrides)
        self._prepared = True

    @property
    def dictionary(self) -> Dictionary:
        self.prepare()
        return self._dictionary

    # ------------------------------------------------------------------ building
    def build_model(self) -> nn.Module:
        self.prepare()
        model = Wav2Vec2Ctc(self.cfg.model, vocab_size=len(self.dictionary), final_dropout=self.task_cfg.final_dropout,
                            blank=BLANK)
        if self._init_weights is not None:
            model.wav2vec2.load_state_dict(self._init_weights, strict=True)
            log.info("fine-tuning the encoder of %s (%d tensors); new output layer for %d symbols",
                     self.task_cfg.init, len(self._init_weights), len(self.dictionary))
        else:
            log.info("fine-tuning from random initialisation (task.init is empty)")
        return model

    def build_dataset(self, subset: str) -> LabelledAudioDataset:
        d, t = self.cfg.data, self.task_cfg
        if d.train_shards:
            raise ValueError("data.train_shards: fine-tuning reads transcripts line-aligned with a manifest "
                             "({subset}.tsv and .ltr); shards hold audio only. Drop data.train_shards")
        dataset = LabelledAudioDataset(
            self.manifest(subset), labels_path=Path(d.manifest_dir) / f"{subset}.{t.labels}",
            dictionary=self.dictionary, sample_rate=d.sample_rate, min_sample_size=d.min_sample_size,
            normalize=d.normalize, bad_files=d.bad_files,
        )
        self._warn_unalignable(dataset, subset)
        return dataset

    def _warn_unalignable(self, dataset: LabelledAudioDataset, subset: str) -> None:
        """CTC needs a frame per letter, plus a blank between repeated letters; shorter
        utterances get an infinite loss, zeroed by `zero_infinity` (they teach nothing)."""
        frames = self.cfg.model.feature_encoder.output_lengths(dataset.lengths)
        needed = [len(y) + sum(a == b for a, b in zip(y, y[1:])) for y in dataset.labels]
        short = [i for i, n in enumerate(needed) if frames[i] < n]
        if short:
            log.warning("%s: %d of %d utterances have fewer frames than their transcript needs and "
                        "contribute no loss (first: %s)", subset, len(short), len(dataset),
                        dataset.describe(short[0]))

    def has_unused_parameters(self) -> bool:
        # A frozen encoder or a skipped layer leaves parameters without gradient (a frozen
        # upstream has none: it is out of DDP's bookkeeping, and never drops a layer).
        return self.task_cfg.freeze_finetune_updates > 0 or (
            self.cfg.model.transformer.layerdrop > 0 and not self.cfg.model.upstream.freeze)

    # ------------------------------------------------------------------ training
    def _forward(self, model: nn.Module, batch: dict[str, Any], *, num_updates: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, dict[str, Any], Any]:
        frozen = num_updates < self.task_cfg.freeze_finetune_updates
        out = model(batch["source"], batch.get("padding_mask"), freeze_encoder=frozen, generator=generator)
        target_lengths = batch["target_lengths"]
        loss = ctc_loss_sum(out.logits, out.lengths, batch["target"], target_lengths, blank=BLANK)
        # Frames whose best symbol is the blank, among the unpadded ones.
        unpadded = torch.ones_like(out.logits[..., 0], dtype=torch.bool) if out.padding_mask is None \
            else ~out.padding_mask
        blank = (out.logits.argmax(dim=-1) == BLANK) & unpadded
        sums = {
            "loss": loss.detach(),
            "tokens": target_lengths.sum(),
            "frames": out.lengths.sum(),
            "blank_frames": blank.sum(),
            "frozen": float(frozen),
            **layer_weight_sums(self.cfg.model, out.layer_weights),
        }
        return loss, sums, out

    def loss(self, model: nn.Module, batch: dict[str, Any], *, num_updates: int,
             generator: torch.Generator) -> LossOutput:
        loss, sums, _ = self._forward(model, batch, num_updates=num_updates, generator=generator)
        return LossOutput(loss=loss, sample_size=batch["source"].shape[0], sums=sums)

    def update_flops(self, batch: dict[str, Any], sample_size: float, *, num_updates: int) -> float | None:
        B, L = batch["source"].shape
        frozen = num_updates < self.task_cfg.freeze_finetune_updates or self.cfg.model.upstream.freeze
        return ctc_update_flops(self.cfg.model, B, L, len(self.dictionary), frozen_encoder=frozen)

    def metrics(self, sums: dict[str, float], *, num_updates: int) -> dict[str, float]:
        return {
            "loss": sums["loss"] / sums["sample_size"] / LN2,  # bits per utterance, as fairseq
            "loss_per_token": sums["loss"] / max(sums["tokens"], 1.0) / LN2,
            "blank_frac": sums["blank_frames"] / max(sums["frames"], 1.0),
            "tokens": sums["tokens"],
            "encoder_frozen": float(sums["frozen"] > 0),
            **layer_weight_metrics(self.cfg.model, sums),
        }

    # ------------------------------------------------------------------ validation
    def valid_step(self, model: nn.Module, batch: dict[str, Any], *, num_updates: int,
                   generator: torch.Generator) -> LossOutput:
        loss, sums, out = self._forward(model, batch, num_updates=num_updates, generator=generator)
        hyps = [self.dictionary.words(ids) for ids in greedy_ctc(out.logits, out.lengths, blank=BLANK)]
        refs = [self.dictionary.words(y[:n]) for y, n in zip(batch["target"].tolist(),
                                                            batch["target_lengths"].tolist())]
        counts = error_counts(refs, hyps)
        if len(self._examples) < self.task_cfg.num_examples:
            self._examples += list(zip(refs, hyps))[: self.task_cfg.num_examples - len(self._examples)]
        return LossOutput(loss=loss, sample_size=batch["source"].shape[0], sums={**sums, **counts})

    def valid_metrics(self, sums: dict[str, float], *, num_updates: int) -> dict[str, float]:
        metrics = self.metrics(sums, num_updates=num_updates)
        del metrics["encoder_frozen"]
        metrics["wer"], metrics["cer"] = wer_cer(sums)
        for ref, hyp in self._examples:
            log.info("  ref: %s", ref)
            log.info("  hyp: %s", hyp or "(nothing)")
        self._examples = []
        return metrics

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        # The output layer's vocabulary travels with the weights it indexes.
        return {"dictionary": self.dictionary.symbols[len(SPECIALS):]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("dictionary")
        if saved is not None and saved != self.dictionary.symbols[len(SPECIALS):]:
            raise ValueError(f"{self.dictionary_path} differs from the dictionary the checkpoint was trained "
                             "with: the output layer would mean other letters. Use the original dictionary.")

    # ------------------------------------------------------------------ judging a run
    def checks(self, metrics: dict[str, float]) -> dict[str, bool]:
        checks = {"emits letters, not only blanks": metrics["blank_frac"] < 0.999}
        if "wer" in metrics:  # a validation result
            checks["WER below 100%"] = metrics["wer"] < 100.0
        return checks

    def panels(self) -> list[Panel]:
        return [
            Panel("CTC loss", train=(("loss_per_token", "train"),), valid=(("loss_per_token", "valid"),),
                  ylabel="bits per letter"),
            Panel("error rates (greedy decoding)", valid=(("wer", "valid WER"), ("cer", "valid CER")), ylabel="%"),
            Panel("frames whose best symbol is the blank", train=(("blank_frac", "train"),),
                  valid=(("blank_frac", "valid"),), ylim=(0.0, 1.02)),
            Panel("freeze and learning rate", train=(("encoder_frozen", "encoder frozen (1)"),), lr=True),
            *layer_weight_panels(self.cfg.model),
        ]

    def describe(self, metrics: dict[str, float]) -> list[str]:
        lines = [f"  WER {metrics['wer']:.2f}%   CER {metrics['cer']:.2f}%"] if "wer" in metrics else []
        return lines + [
            f"  blank frames {100 * metrics['blank_frac']:.1f}%   loss {metrics['loss_per_token']:.3f} bits per letter"]

    def health(self, history: list[dict[str, Any]]) -> list[str]:
        if not history or history[-1]["split"] != "valid":
            return []
        record, t = history[-1], self.task_cfg
        start = max(t.freeze_finetune_updates, t.only_blanks_after * self.cfg.optim.max_update)
        if record["num_updates"] >= start and record["blank_frac"] >= 0.999:
            return [
                f"the model still emits only blanks at update {record['num_updates']} (WER "
                f"{record['wer']:.1f}%): the usual causes are an lr too low or too high for the batch "
                "(optim.lr), a freeze too long for the run (task.freeze_finetune_updates), or too few "
                "updates (optim.max_update); a different data.normalize than pretraining also does it"
            ]
        return []
