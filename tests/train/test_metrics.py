"""Averaging over a logging interval, and the history a resumed run reads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wav2vec2.train.metrics import Averager, MetricLogger


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
