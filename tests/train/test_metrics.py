"""Averaging over a logging interval, and the history a resumed run reads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from wav2vec2.config import tiny
from wav2vec2.model.flops import ctc_update_flops, train_flops
from wav2vec2.train.metrics import Averager, MetricLogger

from helpers import make_trainer, records


def test_averager_weights_losses_by_masked_frames() -> None:
    avg = Averager(weights={"loss": "masked_frames"})
    avg.add({"loss": 1.0, "masked_frames": 100.0, "lr": 1.0, "code_perplexity": 10.0})
    avg.add({"loss": 4.0, "masked_frames": 300.0, "lr": 3.0, "code_perplexity": 30.0})
    mean = avg.mean()
    assert mean["loss"] == pytest.approx(3.25)  # frame-weighted
    assert mean["lr"] == 2.0 and mean["code_perplexity"] == 20.0  # plain means, as fairseq


def test_history_survives_a_resume_without_what_a_killed_run_logged_past_it(tmp_path: Path) -> None:
    logger = MetricLogger(tmp_path, tensorboard=False, max_update=10)
    for u in (1, 2, 3):
        logger.log("train", u, {"loss": float(u)})
    logger.log("valid", 2, {"loss": 0.5, "wer": 40.0})
    logger.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1] == {"split": "valid", "num_updates": 2, "time": rows[-1]["time"], "loss": 0.5, "wer": 40.0}
    assert rows[0]["loss"] == 1.0  # the same key in train and valid rows: one name per metric
    resumed = MetricLogger(tmp_path, tensorboard=False, max_update=10, start_update=2)
    assert [(r["split"], r["num_updates"]) for r in resumed.history] == [("train", 1), ("train", 2), ("valid", 2)]
    assert resumed.history[-1]["wer"] == 40.0
    resumed.close()


def test_history_reads_files_with_the_old_valid_prefix(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"split": "train", "num_updates": 1, "loss": 3.0}) + "\n"
        + json.dumps({"split": "valid", "num_updates": 1, "valid_loss": 2.0, "valid_best_loss": 2.0}) + "\n")
    history = MetricLogger(tmp_path, tensorboard=False, max_update=5, start_update=1).history
    assert history[1] == {"split": "valid", "num_updates": 1, "loss": 2.0, "best_loss": 2.0}


def test_console_line_shows_throughput_per_device_and_mfu(tmp_path: Path) -> None:
    logger = MetricLogger(tmp_path, tensorboard=False, max_update=10)
    one = logger._console_line("train", 1, {"audio_sec_per_sec": 80.0, "device_audio_sec_per_sec": 80.0})
    assert "80 audio-s/s" in one and "device" not in one and "MFU" not in one
    many = logger._console_line("train", 2, {"audio_sec_per_sec": 800.0, "device_audio_sec_per_sec": 100.0,
                                             "mfu": 0.3125})
    assert "800 audio-s/s (100/device)" in many and "MFU 31.2%" in many
    logger.close()


@pytest.mark.parametrize("peak_tflops", [0.0, 0.001])
def test_train_rows_carry_per_device_throughput_and_mfu_when_the_peak_is_set(
        make_tiny_cfg, tmp_path: Path, peak_tflops: float) -> None:
    """`logging.peak_tflops` 0 (unknown): no MFU anywhere; set: the task's analytical FLOPs
    per second over it, in the JSONL rows and TensorBoard."""
    cfg = make_tiny_cfg("optim.max_update=2", "train.validate_every=0", "data.valid_subset=",
                        "logging.tensorboard=true", f"logging.peak_tflops={peak_tflops}")
    trainer = make_trainer(cfg)
    trainer.fit()
    rows = records(Path(cfg.run_dir))
    assert len(rows) == 2
    for r in rows:
        assert r["device_audio_sec_per_sec"] == r["audio_sec_per_sec"] > 0  # one process
        assert ("mfu" in r) == (peak_tflops > 0)
    if peak_tflops:
        assert all(0 < r["mfu"] < 1e3 for r in rows)  # 1 GFLOP/s: a CPU runs tiny at a few
        assert trainer.update_flops >= train_flops(tiny(), 1, 4000, 1)  # at least one short clip
        acc = EventAccumulator(str(Path(cfg.run_dir) / "tb"))
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        assert {"train/mfu", "train/device_audio_sec_per_sec"} <= tags


def test_ctc_mfu_counts_no_encoder_backward_while_the_encoder_is_frozen(make_ctc_cfg, tmp_path: Path) -> None:
    """ctc_tiny freezes the encoder for 2 updates: those count forward + the head's backward."""
    cfg = make_ctc_cfg("optim.max_update=3", "train.validate_every=0", "data.valid_subset=",
                       "logging.peak_tflops=0.001", "task.freeze_finetune_updates=2")
    trainer = make_trainer(cfg)
    batch = {"source": torch.zeros(2, 16_000)}
    frozen, thawed = (trainer.task.update_flops(batch, 2.0, num_updates=u) for u in (1, 2))
    assert frozen == ctc_update_flops(cfg.model, 2, 16_000, len(trainer.task.dictionary), frozen_encoder=True)
    assert frozen < thawed == ctc_update_flops(cfg.model, 2, 16_000, len(trainer.task.dictionary))
    trainer.fit()
    rows = records(Path(cfg.run_dir))
    assert len(rows) == 3 and all(r["mfu"] > 0 for r in rows)
