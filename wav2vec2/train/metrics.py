"""Metrics: `metrics.jsonl`, TensorBoard events, a console progress line, codebook health.

Only rank 0 builds a `MetricLogger`; the trainer has already all-reduced what it logs.
Loss parts are in bits per masked frame, as fairseq logs them (spec §7).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from wav2vec2.model.losses import LN2

log = logging.getLogger("wav2vec2.train")

# Per-update sums the trainer all-reduces in one call, in this order.
SUM_KEYS = ("loss", "contrastive", "diversity", "feature_pen", "correct", "masked_frames",
            "prob_perplexity", "code_perplexity", "forwards", "utterances", "audio_samples", "frames")

# Keys averaged over the updates of a logging interval, weighted by masked frames. The
# others (perplexities, temperature, lr, ...) are plain means, as fairseq averages them.
FRAME_WEIGHTED = ("loss", "contrastive", "diversity", "feature_pen", "accuracy")


class Averager:
    """Accumulates per-update metric dicts between two log lines."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, float] = {}
        self._counts: dict[str, float] = {}

    def add(self, metrics: dict[str, float]) -> None:
        weight = metrics.get("masked_frames", 1.0)
        for key, value in metrics.items():
            w = weight if key in FRAME_WEIGHTED else 1.0
            self._sums[key] = self._sums.get(key, 0.0) + w * value
            self._counts[key] = self._counts.get(key, 0.0) + w

    def mean(self) -> dict[str, float]:
        return {k: self._sums[k] / self._counts[k] for k in self._sums if self._counts[k] > 0}


class MetricLogger:
    """Writes one JSON object per line to `run_dir/metrics.jsonl`, mirrors it to TensorBoard
    (`run_dir/tb`) and prints a console line with rate and ETA."""

    def __init__(self, run_dir: Path, *, tensorboard: bool, max_update: int, start_update: int = 0) -> None:
        """`start_update`: the update the run resumes from. Records logged after it by a run
        that was killed are dropped, so the files read as if the run had never stopped."""
        self.run_dir = Path(run_dir)
        self.max_update = max_update
        path = self.run_dir / "metrics.jsonl"
        _truncate_jsonl(path, start_update)
        self._jsonl = open(path, "a", buffering=1)
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a killed run wrote past the checkpoint.
            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=start_update + 1 if start_update else None)
        self._t0 = time.monotonic()
        self._u0: int | None = None

    def log(self, split: str, num_updates: int, metrics: dict[str, float]) -> None:
        """Record `metrics` under `split` ("train" or "valid") at update `num_updates`."""
        prefix = "" if split == "train" else f"{split}_"
        record: dict[str, Any] = {"split": split, "num_updates": num_updates, "time": time.time()}
        record.update({prefix + k: _clean(v) for k, v in metrics.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(f"{split}/{key}", value, num_updates)
            self._tb.flush()
        log.info(self._console_line(split, num_updates, metrics))

    def _console_line(self, split: str, u: int, m: dict[str, float]) -> str:
        parts = [f"{split:5s} {u:>7d}/{self.max_update}"]
        for key, fmt in (
            ("loss", ".3f"), ("contrastive", ".3f"), ("accuracy", ".3f"),
            ("code_perplexity", ".1f"), ("prob_perplexity", ".1f"), ("temperature", ".3f"),
            ("lr", ".2e"), ("grad_norm", ".3f"), ("loss_scale", ".0f"),
        ):
            if key in m:
                parts.append(f"{key} {m[key]:{fmt}}")
        if split == "train":
            if self._u0 is None:
                self._u0, self._t0 = u, time.monotonic()
            elif u > self._u0:
                rate = (u - self._u0) / (time.monotonic() - self._t0)
                parts.append(f"{rate * 60:.1f} upd/min")
                parts.append(f"ETA {_hms((self.max_update - u) / rate)}")
        return " | ".join(parts)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def codebook_health(
    metrics: dict[str, float],
    *,
    num_codebooks: int,
    num_negatives: int,
    after_warmup: bool,
    collapse_factor: float,
    chance_margin: float,
) -> list[str]:
    """Warnings for the failure modes users report most (spec §10 rows 1-2).

    - code perplexity near G: every frame of a codebook picks the same entry (collapse);
    - contrastive loss at log2(K+1) bits after warmup: the model is not learning;
    - accuracy at 1: usually collapse, where negatives equal the positive and get -inf.
    """
    warnings = []
    code_ppl = metrics.get("code_perplexity")
    if code_ppl is not None and code_ppl < collapse_factor * num_codebooks:
        warnings.append(
            f"codebook collapse: code_perplexity {code_ppl:.2f} is near G={num_codebooks} "
            "(every frame uses one entry per codebook); lower the lr, raise the diversity "
            "weight or the batch size"
        )
    chance = math.log2(num_negatives + 1)
    contrastive = metrics.get("contrastive")
    if after_warmup and contrastive is not None and abs(contrastive - chance) < chance_margin:
        warnings.append(
            f"loss at chance: contrastive {contrastive:.3f} bits ~ log2(K+1) = {chance:.3f} "
            "after warmup; the model is not learning (lr too high for the batch size?)"
        )
    acc = metrics.get("accuracy")
    if acc is not None and acc > 0.99:
        warnings.append(
            f"accuracy {acc:.3f} ~ 1: suspicious; check code_perplexity for a collapse "
            "(negatives identical to the positive are masked to -inf)"
        )
    return warnings


def _truncate_jsonl(path: Path, last_update: int) -> None:
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = []
    for line in lines:
        try:
            if json.loads(line)["num_updates"] <= last_update:
                keep.append(line)
        except (ValueError, KeyError):  # a line torn by a kill
            continue
    if len(keep) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(keep))
        tmp.replace(path)


def _clean(value: Any) -> Any:
    # JSON has no inf/nan; keep them readable instead of crashing the logger.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def metrics_from_sums(sums: Any, *, sample_rate: int) -> dict[str, float]:
    """Per-update metrics from the all-reduced sums (a tensor ordered as SUM_KEYS): losses
    in bits per masked frame, as fairseq logs them (spec §7)."""
    s = dict(zip(SUM_KEYS, sums.tolist()))
    n = s["masked_frames"]
    return {
        "loss": s["loss"] / n / LN2,
        "contrastive": s["contrastive"] / n / LN2,
        "diversity": s["diversity"] / n / LN2,
        "feature_pen": s["feature_pen"] / n / LN2,
        "accuracy": s["correct"] / n,
        # Plain means over forwards (per GPU and micro-batch), as fairseq averages them.
        "prob_perplexity": s["prob_perplexity"] / s["forwards"],
        "code_perplexity": s["code_perplexity"] / s["forwards"],
        "masked_frac": n / s["frames"],
        "masked_frames": n,
        "utterances": s["utterances"],
        "audio_sec": s["audio_samples"] / sample_rate,
    }


def setup_logging(is_main: bool) -> None:
    """Console logging on rank 0 only; other ranks report warnings and errors."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("wav2vec2").setLevel(logging.INFO if is_main else logging.WARNING)
