"""Self-supervised pretraining (paper §3, fairseq `audio_pretraining` + `wav2vec` criterion).

The model is `Wav2Vec2Model` from `cfg.model`; the loss is contrastive + weighted diversity
+ weighted feature penalty, summed over masked frames (the sample size), at the Gumbel
temperature of the current update. Logged as fairseq logs it (`criterions/wav2vec_criterion.py`): losses in bits per
masked frame, accuracy by fairseq's rule, code and prob perplexity as plain means over
forwards (per GPU and micro-batch).

This file also holds the one definition of a healthy pretraining run (`checks`, and the
warnings of `health`), which the end-of-run summary, the demo and the tests all use.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wav2vec2.data import RawAudioDataset, ShardedAudioDataset
from wav2vec2.model.flops import train_flops
from wav2vec2.model.losses import LN2, pretraining_loss
from wav2vec2.config import with_architecture
from wav2vec2.model.wav2vec2 import Wav2Vec2Model
from wav2vec2.tasks.base import LossOutput, Panel, Task, check_architecture_overrides
from wav2vec2.tasks.continuation import Continuation, temperature

log = logging.getLogger(__name__)


@dataclass
class PretrainTaskConfig:
    """Pretraining: the model, losses and Gumbel schedule are in `model`; this section
    holds where a continued run starts from and how a run is judged (README, "What a
    healthy run looks like")."""

    name: str = "pretrain"
    """The task; chosen by the preset's `task: pretrain` default, not set by hand."""
    init: str = ""
    """Continue pretraining from this model: anything the loader reads (this project's
    checkpoint, a fairseq wav2vec 2.0 checkpoint, a local transformers
    `Wav2Vec2ForPreTraining` directory). Its architecture replaces `model`'s and all its
    weights are the start; what else carries over is below and in the run's first log
    lines (`tasks/continuation.py`). "" pretrains from random weights."""
    init_fresh_heads: bool = False
    """Accept a source without the quantizer and projections (transformers' `Wav2Vec2Model`,
    a CTC model) and start those from random weights. Off, such a source is refused: fresh
    codebooks are new targets the encoder never predicted, so the run starts near chance and
    the early, large gradients can wash out what the encoder knew."""
    init_optimizer: bool = False
    """Start Adam from the source's moments (this project's and fairseq's checkpoints carry
    them). Off: they describe another data set and a decayed lr, and restoring everything is
    what left fairseq#3661's continued runs stuck; fresh moments under a warm-up are safer."""
    init_temperature: str = "continue"
    """"continue": the Gumbel temperature goes on from the source's update count (at its
    floor when the source does not record it, as transformers directories do): the codebooks
    were trained cold, and a hot restart re-randomises the targets the encoder learned to
    predict. "restart": anneal again from `model.quantizer.max_temp`."""
    continue_window: int = 3
    """Continued runs: a warning needs this many validations in a row beyond its threshold."""
    continue_loss_rise: float = 0.05
    """...validation contrastive loss this many bits above its value at update 0 (fairseq#3834)..."""
    continue_code_drop: float = 0.5
    """...code perplexity down this fraction of the way from its value at update 0 to G..."""
    continue_diversity_rise: float = 2.0
    """...or the diversity loss above this multiple of its value at update 0. A recorded
    healthy continued run spent three validations at 1.5-1.9x after its warm-up; one at 10x
    the lr stayed at 2.3-4x (tests/golden/traces/continue_*.jsonl)."""
    chance_margin: float = 0.05
    """"At chance": the contrastive loss within this many bits of log2(K+1)."""
    not_learning_after: float = 0.25
    """Warn that the model is not learning when the train loss is still at chance this far
    into the run (a fraction of `optim.max_update`). Healthy runs sit at chance for a
    while first: the demo leaves it around update 150-200 of 1,200."""
    not_learning_window: int = 5
    """...and has been at chance in each of the last this many train logs."""
    collapse_factor: float = 2.0
    """Codebook collapse: code_perplexity below collapse_factor * G (its floor is G)."""
    learned_fraction: float = 0.85
    """Verdict "learned": validation contrastive loss under this fraction of chance (0.65
    bits at K=20, far beyond run-to-run noise)..."""
    learned_accuracy_factor: float = 3.0
    """...and accuracy above this many times chance: `chance_accuracy`, the mean of
    1/(candidates not identical to the positive), which is 1/(K+1) when none are."""


class PretrainTask(Task):
    name = "pretrain"
    Config = PretrainTaskConfig
    best_metric = "loss"
    higher_is_better = False
    # Losses over a logging interval are weighted by masked frames, as fairseq's; the
    # perplexities are plain means over forwards.
    interval_weights = {k: "masked_frames" for k in ("loss", "contrastive", "diversity", "feature_penalty", "accuracy",
                                                     "chance_accuracy", "identical_negatives")}
    console = (("contrastive", "contrastive", ".3f"), ("accuracy", "accuracy", ".3f"),
               ("code_perplexity", "code ppl", ".1f"), ("temperature", "temp", ".3f"))

    def __init__(self, cfg: Any, **kwargs: Any) -> None:
        super().__init__(cfg, **kwargs)
        self.continuation: Continuation | None = None
        self.temperature_offset: int | None = 0
        """Updates of an earlier run's Gumbel anneal before this run's first (None: at its floor)."""

    def prepare(self) -> None:
        """With `task.init`, read the source: its architecture replaces `model`'s."""
        if not self.task_cfg.init or self.continuation is not None:
            return
        self.continuation = Continuation(self.task_cfg, optim_cfg=self.cfg.optim)
        check_architecture_overrides(self.cfg.model, self.continuation.config, self.architecture_overrides,
                                     where=self.task_cfg.init)
        self.cfg.model = with_architecture(self.cfg.model, self.continuation.config)
        self.temperature_offset = self.continuation.temperature_offset()

    def build_model(self) -> nn.Module:
        model = Wav2Vec2Model(self.cfg.model)
        if self.continuation is not None:
            num_tensors = self.continuation.load_into(model)
            for line in self.continuation.report(num_tensors, self.cfg.model.quantizer):
                log.info("%s", line)
        return model

    def carried_moments(self) -> dict[str, Any] | None:
        return None if self.continuation is None else self.continuation.moments()

    def temperature(self, num_updates: int) -> float:
        """The Gumbel temperature of the update after `num_updates` of this run."""
        return temperature(num_updates, self.cfg.model.quantizer, self.temperature_offset)

    def build_dataset(self, subset: str) -> RawAudioDataset:
        d = self.cfg.data
        if d.train_shards and subset == d.train_subset:
            return ShardedAudioDataset(d.train_shards, sample_rate=d.sample_rate, min_sample_size=d.min_sample_size,
                                       max_sample_size=d.max_sample_size or None, normalize=d.normalize,
                                       bad_files=d.bad_files)
        return RawAudioDataset(
            self.manifest(subset), sample_rate=d.sample_rate,
            min_sample_size=d.min_sample_size, max_sample_size=d.max_sample_size or None,
            normalize=d.normalize, bad_files=d.bad_files,
        )

    def has_unused_parameters(self) -> bool:
        return self.cfg.model.transformer.layerdrop > 0  # a skipped layer gets no gradient

    # ------------------------------------------------------------------ training
    def loss(
        self, model: nn.Module, batch: dict[str, Any], *, num_updates: int, generator: torch.Generator
    ) -> LossOutput:
        out = model(batch["source"], padding_mask=batch.get("padding_mask"), temperature=self.temperature(num_updates),
                     generator=generator)
        loss = pretraining_loss(out, self.cfg.model.loss)
        frames = out.time_mask.numel() if out.padding_mask is None else (~out.padding_mask).sum()
        # Candidates per masked frame that can win: negatives identical to the positive (the
        # same codes) get -inf, so chance is 1/(their number), not 1/(K+1).
        candidates = torch.isfinite(out.logits).sum(dim=-1)  # (N, 1+K) -> (N,)
        sums = {
            "loss": loss.total.detach().float(),
            "contrastive": loss.contrastive.detach(),
            "diversity": loss.diversity.detach(),
            "feature_penalty": loss.feature_penalty.detach(),
            "correct": loss.correct.float(),
            "masked_frames": loss.sample_size,
            "prob_perplexity": out.prob_perplexity.detach().float(),
            "code_perplexity": out.code_perplexity.detach().float(),
            "forwards": 1.0,
            "frames": frames,
            "chance_correct": (1.0 / candidates.double()).sum(),
            "identical_negatives": (out.logits.shape[1] - candidates).sum(),
        }
        return LossOutput(loss=loss.total, sample_size=loss.sample_size, sums=sums)

    def update_flops(self, batch: dict[str, Any], sample_size: float, *, num_updates: int) -> float | None:
        B, L = batch["source"].shape
        return train_flops(self.cfg.model, B, L, sample_size / B)  # sample_size: the masked frames

    def metrics(self, sums: dict[str, float], *, num_updates: int) -> dict[str, float]:
        n = sums["masked_frames"]
        return {
            "loss": sums["loss"] / n / LN2,
            "contrastive": sums["contrastive"] / n / LN2,
            "diversity": sums["diversity"] / n / LN2,
            "feature_penalty": sums["feature_penalty"] / n / LN2,
            "accuracy": sums["correct"] / n,
            # Plain means over forwards (per GPU and micro-batch), as fairseq averages them.
            "prob_perplexity": sums["prob_perplexity"] / sums["forwards"],
            "code_perplexity": sums["code_perplexity"] / sums["forwards"],
            "masked_frac": n / sums["frames"],
            "masked_frames": n,
            # What accuracy a model that cannot tell the candidates apart would get here, and
            # the share of negatives equal to their positive (masked to -inf) behind it.
            "chance_accuracy": sums["chance_correct"] / n,
            "identical_negatives": sums["identical_negatives"] / (n * self.cfg.model.num_negatives),
            "temperature": self.temperature(num_updates),
        }

    # ------------------------------------------------------------------ judging a run
    @property
    def chance_bits(self) -> float:
        """log2(K+1): the loss of a model that cannot tell the positive from K negatives."""
        return math.log2(self.cfg.model.num_negatives + 1)

    @property
    def chance_accuracy(self) -> float:
        return 1.0 / (self.cfg.model.num_negatives + 1)

    def panels(self) -> list[Panel]:
        chance, G = self.chance_bits, self.cfg.model.quantizer.num_codebooks
        return [
            # The total starts far above chance: the y range keeps the contrastive part readable.
            Panel("loss", train=(("contrastive", "train contrastive"), ("loss", "train total")),
                  valid=(("contrastive", "valid contrastive"),),
                  references=((chance, f"chance log2(K+1) = {chance:.2f}"),), ylabel="bits per masked frame",
                  ylim=(0.0, 1.5 * chance)),
            Panel("accuracy", train=(("accuracy", "train"),), valid=(("accuracy", "valid"),),
                  references=((self.chance_accuracy, "chance 1/(K+1)"),)),
            Panel("codebook perplexity",
                  train=(("code_perplexity", "code perplexity"), ("prob_perplexity", "prob perplexity")),
                  references=((G, f"collapse (G = {G})"),)),
            Panel("temperature and learning rate", train=(("temperature", "Gumbel temperature"),),
                  ylabel="temperature", lr=True),
        ]

    def checks(self, metrics: dict[str, float]) -> dict[str, bool]:
        t, G = self.task_cfg, self.cfg.model.quantizer.num_codebooks
        return {
            "contrastive loss under chance": metrics["contrastive"] < t.learned_fraction * self.chance_bits,
            "accuracy above chance": metrics["accuracy"] > t.learned_accuracy_factor * self._chance_accuracy(metrics),
            "codebook not collapsed": metrics["code_perplexity"] > t.collapse_factor * G,
            "accuracy not degenerate": metrics["accuracy"] < 0.99,
        }

    def _chance_accuracy(self, metrics: dict[str, float]) -> float:
        """Measured (identical negatives excluded) when logged, else 1/(K+1)."""
        return metrics.get("chance_accuracy", self.chance_accuracy)

    def describe(self, metrics: dict[str, float]) -> list[str]:
        G = self.cfg.model.quantizer.num_codebooks
        return [
            f"  contrastive loss {metrics['contrastive']:.3f} bits   (chance log2(K+1) = {self.chance_bits:.3f})",
            f"  accuracy         {metrics['accuracy']:.3f}        (chance {self._chance_accuracy(metrics):.3f})",
            f"  code perplexity  {metrics['code_perplexity']:.1f}         (collapse at G = {G})",
        ]

    def health(self, history: list[dict[str, Any]]) -> list[str]:
        """The failure modes users report most (fairseq issues #3661, #3718 for
        the first; #3687, #3735, #4530 for the collapse):

        - code perplexity near G: every frame of a codebook picks the same entry (collapse);
        - accuracy at 1: usually that collapse, negatives equal to the positive get -inf;
        - contrastive loss still at log2(K+1) well into the run: not learning.
        """
        if not history:
            return []
        record, t = history[-1], self.task_cfg
        G = self.cfg.model.quantizer.num_codebooks
        warnings = []
        code_ppl = record.get("code_perplexity")
        if code_ppl is not None and code_ppl <= t.collapse_factor * G:
            warnings.append(
                f"codebook collapse: code_perplexity {code_ppl:.2f} is near G={G} (every frame "
                "uses one entry per codebook); lower the lr, raise model.loss.diversity_weight "
                "or the batch size"
            )
        acc = record.get("accuracy")
        if acc is not None and acc >= 0.99:
            warnings.append(
                f"accuracy {acc:.3f} ~ 1: suspicious; check code_perplexity for a collapse "
                "(negatives identical to the positive are masked to -inf)"
            )
        train = [r for r in history if r["split"] == "train"]
        recent = train[-t.not_learning_window:]
        late = record["num_updates"] >= t.not_learning_after * self.cfg.optim.max_update
        if (record["split"] == "train" and late and len(recent) == t.not_learning_window
                and all(abs(r["contrastive"] - self.chance_bits) < t.chance_margin for r in recent)):
            warnings.append(
                f"not learning: contrastive loss {record['contrastive']:.3f} bits is still at chance "
                f"(log2(K+1) = {self.chance_bits:.3f}) at update {record['num_updates']}; lower "
                "optim.lr or raise the batch (optim.update_freq) (fairseq issues #3661, #3718)"
            )
        if self.task_cfg.init and record["split"] == "valid":
            warnings += self._continuation_health([r for r in history if r["split"] == "valid"])
        return warnings

    def _continuation_health(self, valid: list[dict[str, Any]]) -> list[str]:
        """A continued run starts far below chance, so leaving chance says nothing; what goes
        wrong is that it unlearns. Measured against its first validation (update 0 when
        `train.validate_at_start`, as the continue_* presets do), over the last
        `continue_window` validations: the contrastive loss rising above where it started
        (fairseq#3834), code perplexity falling toward G, the diversity loss climbing."""
        t, G = self.task_cfg, self.cfg.model.quantizer.num_codebooks
        if len(valid) < 1 + t.continue_window:
            return []
        start, recent = valid[0], valid[-t.continue_window:]
        at = f"in the last {t.continue_window} validations (update {recent[0]['num_updates']} on)"
        warnings = []
        if all(r["contrastive"] > start["contrastive"] + t.continue_loss_rise for r in recent):
            warnings.append(
                f"continued run unlearning: validation contrastive loss {recent[-1]['contrastive']:.3f} bits is above "
                f"its starting {start['contrastive']:.3f} {at}; lower optim.lr (a continued run wants a smaller peak "
                "than one from scratch) or lengthen optim.warmup_updates, and check that data.normalize is the "
                "source's (fairseq#3834)")
        floor = start["code_perplexity"] - t.continue_code_drop * (start["code_perplexity"] - G)
        if all(r["code_perplexity"] < floor for r in recent):
            warnings.append(
                f"continued run's codebooks narrowing: code perplexity {recent[-1]['code_perplexity']:.1f}, from "
                f"{start['code_perplexity']:.1f} at the start toward G={G}, {at}; lower optim.lr, raise "
                "model.loss.diversity_weight, and keep task.init_temperature=continue")
        if all(r["diversity"] > t.continue_diversity_rise * start["diversity"] for r in recent):
            warnings.append(
                f"continued run's diversity loss climbing: {recent[-1]['diversity']:.4f}, "
                f"{t.continue_diversity_rise:g}x its starting {start['diversity']:.4f}, {at}: fewer codebook "
                "entries in use; lower optim.lr or raise model.loss.diversity_weight")
        return warnings

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        # A continued run's temperature offset travels with it (a fresh run keeps no state).
        return {"temperature_offset": self.temperature_offset} if self.task_cfg.init else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "temperature_offset" in state:
            self.temperature_offset = state["temperature_offset"]
