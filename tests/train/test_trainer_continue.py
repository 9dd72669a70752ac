"""Schedule, metrics helpers, seeding, and continuing from another run's checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from wav2vec2.train.config import OptimConfig
from wav2vec2.train.metrics import Averager, codebook_health
from wav2vec2.train.optim import lr_at
from wav2vec2.train.stream import batch_seed
from wav2vec2.train.trainer import Trainer


def test_lr_schedule_is_fairseq_polynomial_decay() -> None:
    cfg = OptimConfig(lr=5e-4, warmup_updates=32_000, max_update=400_000)
    assert lr_at(0, cfg) == 5e-4 / 32_000  # before the first update
    assert lr_at(1, cfg) == 5e-4 / 32_000
    assert lr_at(16_000, cfg) == pytest.approx(2.5e-4)
    assert lr_at(32_000, cfg) == pytest.approx(5e-4)
    assert lr_at(216_000, cfg) == pytest.approx(2.5e-4)  # halfway down
    assert lr_at(400_000, cfg) == 0.0 and lr_at(500_000, cfg) == 0.0
    assert lr_at(0, OptimConfig(lr=1.0, warmup_updates=0, max_update=10)) == 1.0


def test_averager_weights_losses_by_masked_frames() -> None:
    avg = Averager()
    avg.add({"loss": 1.0, "masked_frames": 100.0, "lr": 1.0, "code_perplexity": 10.0})
    avg.add({"loss": 4.0, "masked_frames": 300.0, "lr": 3.0, "code_perplexity": 30.0})
    mean = avg.mean()
    assert mean["loss"] == pytest.approx(3.25)  # frame-weighted
    assert mean["lr"] == 2.0 and mean["code_perplexity"] == 20.0  # plain means, as fairseq


def test_codebook_health_flags_the_three_failure_modes() -> None:
    kw = dict(num_codebooks=2, num_negatives=100, collapse_factor=1.5, chance_margin=0.05)
    healthy = {"contrastive": 3.0, "accuracy": 0.4, "code_perplexity": 150.0}
    assert codebook_health(healthy, after_warmup=True, **kw) == []
    chance = dict(healthy, contrastive=math.log2(101))
    assert "chance" in codebook_health(chance, after_warmup=True, **kw)[0]
    assert codebook_health(chance, after_warmup=False, **kw) == []  # expected before warmup ends
    collapsed = {"contrastive": 0.01, "accuracy": 1.0, "code_perplexity": 2.1}
    warnings = " ".join(codebook_health(collapsed, after_warmup=True, **kw))
    assert "collapse" in warnings and "accuracy" in warnings


def test_batch_seeds_depend_on_position_not_on_rank() -> None:
    seeds = {batch_seed(1, e, p, stream=1) for e in (1, 2) for p in range(100)}
    assert len(seeds) == 200 and all(0 <= s < 2**63 for s in seeds)
    assert batch_seed(1, 1, 5, stream=1) != batch_seed(1, 1, 5, stream=2)


def test_continue_from_with_resets(make_tiny_cfg, tmp_path: Path) -> None:
    """Domain adaptation: weights come from another run; optimizer, schedule and data
    position restart when asked, and the new run directory then resumes on its own."""
    fast = ["optim.max_update=3", "train.validate_every=0", "data.valid_subset=", "checkpoint.save_every=100"]
    source = Trainer(make_tiny_cfg(*fast, run_dir=tmp_path / "source"))
    source.fit()
    weights = {k: v.clone() for k, v in source.model.state_dict().items()}
    src = tmp_path / "source" / "checkpoint_last.pt"

    kept = Trainer(make_tiny_cfg(*fast, "optim.max_update=5", f"checkpoint.continue_from={src}",
                                 run_dir=tmp_path / "kept"))
    assert kept.num_updates == 3 and kept.stream.consumed == source.stream.consumed
    assert len(kept.optimizer.state) > 0

    reset = Trainer(make_tiny_cfg(*fast, f"checkpoint.continue_from={src}", "checkpoint.reset_optimizer=true",
                                  "checkpoint.reset_schedule=true", "checkpoint.reset_dataloader=true",
                                  run_dir=tmp_path / "reset"))
    assert reset.num_updates == 0 and reset.stream.consumed == 0 and len(reset.optimizer.state) == 0
    for name, tensor in reset.model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    reset.fit()
    again = Trainer(make_tiny_cfg(*fast, f"checkpoint.continue_from={src}", "checkpoint.reset_schedule=true",
                                  run_dir=tmp_path / "reset"))
    assert again.num_updates == 3  # its own checkpoint wins over continue_from


def test_continue_from_a_different_architecture_fails_clearly(make_tiny_cfg, tmp_path: Path) -> None:
    fast = ["optim.max_update=2", "train.validate_every=0", "data.valid_subset=", "checkpoint.save_every=100"]
    Trainer(make_tiny_cfg(*fast, run_dir=tmp_path / "source")).fit()
    src = tmp_path / "source" / "checkpoint_last.pt"
    with pytest.raises(ValueError, match="model.transformer.num_layers"):
        Trainer(make_tiny_cfg(*fast, "model.transformer.num_layers=3", f"checkpoint.continue_from={src}",
                              run_dir=tmp_path / "other"))
