"""Metrics: `metrics.jsonl`, TensorBoard events and a console progress line.

Only rank 0 builds a `MetricLogger`; the trainer has already all-reduced what it logs.
Which metrics exist and what they mean is the task's business (`wav2vec2.tasks`).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import math
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("wav2vec2.train")


class Averager:
    """Accumulates per-update metric dicts between two log lines.

    `weights` maps a metric to the per-update count it is weighted by over the interval
    (pretraining's losses by masked frames, as fairseq); the others are plain means.
    """

    def __init__(self, weights: dict[str, str] | None = None) -> None:
        self.weights = weights or {}
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, float] = {}
        self._counts: dict[str, float] = {}

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            w = metrics[self.weights[key]] if key in self.weights else 1.0
            self._sums[key] = self._sums.get(key, 0.0) + w * value
            self._counts[key] = self._counts.get(key, 0.0) + w

    def mean(self) -> dict[str, float]:
        return {k: self._sums[k] / self._counts[k] for k in self._sums if self._counts[k] > 0}


class MetricLogger:
    """Writes one JSON object per line to `run_dir/metrics.jsonl`, mirrors it to TensorBoard
    (`run_dir/tb`) and prints a console line with rate and ETA."""

    def __init__(
        self, run_dir: Path, *, tensorboard: bool, max_update: int, start_update: int = 0,
        console: tuple[tuple[str, str, str], ...] = (),
    ) -> None:
        """`start_update`: the update the run resumes from. Records logged after it by a run
        that was killed are dropped, so the files read as if the run had never stopped.
        `console`: (metric, label, format) shown on the console line, in order."""
        self.run_dir = Path(run_dir)
        self.max_update = max_update
        self.console = console
        path = self.run_dir / "metrics.jsonl"
        _truncate_jsonl(path, start_update)
        self.history: list[dict[str, Any]] = read_history(path)
        """Every record logged so far, this run's and the resumed one's: "split",
        "num_updates" and the metrics."""
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
        # One name per metric: a validation row says "split": "valid", not valid_loss.
        record: dict[str, Any] = {"split": split, "num_updates": num_updates, "time": time.time()}
        record.update({k: _clean(v) for k, v in metrics.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self.history.append({"split": split, "num_updates": num_updates, **metrics})
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(f"{split}/{key}", value, num_updates)
            self._tb.flush()
        log.info(self._console_line(split, num_updates, metrics))

    def _console_line(self, split: str, u: int, m: dict[str, float]) -> str:
        """A short line; everything else is in metrics.jsonl and TensorBoard."""
        parts = [f"{split:5s} {u:>6d}/{self.max_update}"]
        for key, label, fmt in (*self.console, ("lr", "lr", ".1e"), ("loss_scale", "loss scale", ".0f")):
            if key in m:
                parts.append(f"{label} {m[key]:{fmt}}")
        if split == "train":
            if "audio_sec_per_sec" in m:
                per_device = m.get("device_audio_sec_per_sec", m["audio_sec_per_sec"])
                if per_device < m["audio_sec_per_sec"]:  # more than one device
                    parts.append(f"{m['audio_sec_per_sec']:.0f} audio-s/s ({per_device:.0f}/device)")
                else:
                    parts.append(f"{m['audio_sec_per_sec']:.0f} audio-s/s")
            if "mfu" in m:
                parts.append(f"MFU {100 * m['mfu']:.1f}%")
            if self._u0 is None:
                self._u0, self._t0 = u, time.monotonic()
            elif u > self._u0:
                rate = (u - self._u0) / (time.monotonic() - self._t0)
                parts.append(f"ETA {_hms((self.max_update - u) / rate)}")
        return " | ".join(parts)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def update_flops(task: Any, counted: list[tuple[dict[str, Any], Any]] | None, num_updates: int) -> float | None:
    """This rank's FLOPs of an update's micro-batches, `(batch, sample_size)` pairs, by the
    task's analytical count (`Task.update_flops`; read after the all-reduce, so a sample size
    on the GPU waits for nothing); None if not counted or the task cannot count them."""
    if not counted:
        return None
    flops = [task.update_flops(batch, float(n), num_updates=num_updates) for batch, n in counted]
    return None if any(f is None for f in flops) else float(sum(flops))


def add_throughput(metrics: dict[str, float], *, audio_sec: float, seconds: float, world_size: int,
                   flops: float | None, peak_tflops: float) -> None:
    """Audio-seconds per second of an update (all ranks, then per device) and, when the
    FLOPs and the device's peak are known, the model FLOPs utilisation."""
    metrics["audio_sec_per_sec"] = audio_sec / seconds
    metrics["device_audio_sec_per_sec"] = metrics["audio_sec_per_sec"] / world_size
    if flops is not None and peak_tflops > 0:
        metrics["mfu"] = flops / seconds / (peak_tflops * 1e12)


def read_history(path: Path) -> list[dict[str, Any]]:
    """The records of a `metrics.jsonl`. Files written before metrics kept one name per
    split had `valid_`-prefixed validation keys: those are read under their own names."""
    if not Path(path).exists():
        return []
    history = []
    for line in Path(path).read_text().splitlines():
        if not line:
            continue
        r = json.loads(line)
        prefix = "" if r["split"] == "train" else f"{r['split']}_"
        history.append({k[len(prefix):] if prefix and k.startswith(prefix) else k: v for k, v in r.items()})
    return history


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


def setup_logging(is_main: bool) -> None:
    """Console logging on rank 0 only; other ranks report warnings and errors. Info lines
    carry only the time; warnings say so."""
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_ConsoleFormatter())
    logging.getLogger("wav2vec2").setLevel(logging.INFO if is_main else logging.WARNING)


def hold_log() -> logging.handlers.MemoryHandler:
    """Keep the package's log records until `log_to_file` can write them: the run directory
    only appears once a run has really started, but what was said before belongs in it."""
    held = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    logging.getLogger("wav2vec2").addHandler(held)
    return held


def log_to_file(path: Path, held: logging.handlers.MemoryHandler | None = None) -> logging.Handler:
    """Also write the package's log to `path` (the run's train.log), with full details,
    starting with what `held` kept."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package = logging.getLogger("wav2vec2")
    if held is not None:
        held.setTarget(handler)
        held.flush()
        package.removeHandler(held)
        held.close()
    package.addHandler(handler)
    return handler


def stop_log_to_file(handler: logging.Handler | None) -> None:
    """Undo `log_to_file` (nothing for None): the run's train.log is complete."""
    if handler is not None:
        logging.getLogger("wav2vec2").removeHandler(handler)
        handler.close()


class _ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            time_, _, rest = text.partition(" ")
            text = f"{time_} {record.levelname}: {rest}"
        return text
