"""fp16 loss scaling (skipped updates do not advance the schedule) and bf16 autocast."""

from __future__ import annotations

import math

import pytest
import torch

from wav2vec2.train import trainer as trainer_mod
from wav2vec2.config import PrecisionConfig
from wav2vec2.train.optim import DynamicLossScaler, build_loss_scaler

from helpers import make_trainer, records

FAST = ["optim.max_update=4", "model.quantizer.temp_decay=0.9", "train.validate_every=0",
        "data.valid_subset=", "checkpoint.save_every=100"]


def test_auto_precision_is_mixed_on_a_gpu_and_fp32_on_a_cpu() -> None:
    from wav2vec2.train.optim import resolve_precision

    cuda = torch.device("cuda", 0)
    assert resolve_precision("auto", cuda, bf16_supported=True) == "bf16"
    assert resolve_precision("auto", cuda, bf16_supported=False) == "fp16"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    for explicit in ("fp32", "bf16", "fp16"):
        assert resolve_precision(explicit, cuda, bf16_supported=False) == explicit
    # the loss scaler follows the resolved precision, not the word "auto"
    assert build_loss_scaler(PrecisionConfig(dtype="auto"), world_size=1, update_freq=1, dtype="fp16") is not None
    assert build_loss_scaler(PrecisionConfig(dtype="auto"), world_size=1, update_freq=1, dtype="bf16") is None


def test_loss_scaler_follows_fairseq() -> None:
    s = DynamicLossScaler(init_scale=128.0, scale_window=2, min_scale=1e-4)
    s.update(overflow=False)
    assert s.scale == 128.0
    s.update(overflow=False)
    assert s.scale == 256.0  # doubled after scale_window clean updates
    s.update(overflow=True)
    assert s.scale == 128.0
    s.update(overflow=False)
    assert s.scale == 128.0  # the window restarts after an overflow
    tiny = DynamicLossScaler(init_scale=1e-4, scale_window=2, min_scale=1e-4)
    with pytest.raises(FloatingPointError, match="min_loss_scale"):
        tiny.update(overflow=True)


def test_forced_overflow_skips_the_update_without_advancing_the_schedule(make_tiny_cfg, tmp_path, monkeypatch) -> None:
    """Overflow on the 2nd and 3rd update attempts: those updates are skipped, and the lr,
    Gumbel temperature follow the same sequence as a run without overflows (the skipped
    attempts still consume their batches, so the weights differ)."""
    clean = make_trainer(make_tiny_cfg(*FAST, "precision.dtype=fp16", run_dir=tmp_path / "clean"))
    clean.fit()

    real_grad_norm = trainer_mod.grad_norm
    calls = {"n": 0}

    def overflowing(params, clip_norm):
        calls["n"] += 1
        norm = real_grad_norm(params, clip_norm)
        return math.inf if calls["n"] in (2, 3) else norm

    monkeypatch.setattr(trainer_mod, "grad_norm", overflowing)
    run = make_trainer(make_tiny_cfg(*FAST, "precision.dtype=fp16", run_dir=tmp_path / "overflow"))
    steps = []
    original_step = run.train_step

    def recording_step(micro, **kw):
        before = run.num_updates
        out = original_step(micro, **kw)
        steps.append((before, run.num_updates, out is None))
        return out

    run.train_step = recording_step
    run.fit()
    assert calls["n"] == 6 and run.num_updates == 4
    assert steps[1] == (1, 1, True) and steps[2] == (1, 1, True)  # skipped: count stays
    assert run.scaler.scale == 128.0 / 4  # halved twice

    a, b = records(tmp_path / "clean"), records(tmp_path / "overflow")
    assert [r["num_updates"] for r in b] == [1, 2, 3, 4]
    assert [r["lr"] for r in a] == [r["lr"] for r in b]
    assert [r["temperature"] for r in a] == [r["temperature"] for r in b]
    assert [r["loss_scale"] for r in b] == [128.0, 32.0, 32.0, 32.0]


def test_fp16_and_bf16_train_on_cpu(make_tiny_cfg, tmp_path) -> None:
    for dtype in ("bf16", "fp16"):
        run = tmp_path / dtype
        make_trainer(make_tiny_cfg(*FAST, f"precision.dtype={dtype}", run_dir=run)).fit()
        train = records(run)
        assert len(train) == 4 and all(math.isfinite(r["loss"]) for r in train)
        assert ("loss_scale" in train[0]) == (dtype == "fp16")
