"""Continuing from another run's checkpoint: weights, resets, and architecture checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import make_trainer


def test_continue_from_with_resets(make_tiny_cfg, tmp_path: Path) -> None:
    """Domain adaptation: weights come from another run; optimizer, schedule and data
    position restart when asked, and the new run directory then resumes on its own."""
    fast = ["optim.max_update=3", "train.validate_every=0", "data.valid_subset=", "checkpoint.save_every=100"]
    source = make_trainer(make_tiny_cfg(*fast, run_dir=tmp_path / "source"))
    source.fit()
    weights = {k: v.clone() for k, v in source.model.state_dict().items()}
    src = tmp_path / "source" / "checkpoint_last.pt"

    kept = make_trainer(make_tiny_cfg(*fast, "optim.max_update=5", f"checkpoint.continue_from={src}",
                                 run_dir=tmp_path / "kept"))
    assert kept.num_updates == 3 and kept.stream.consumed == source.stream.consumed
    assert len(kept.optimizer.state) > 0

    reset = make_trainer(make_tiny_cfg(*fast, f"checkpoint.continue_from={src}", "checkpoint.reset_optimizer=true",
                                  "checkpoint.reset_schedule=true", "checkpoint.reset_dataloader=true",
                                  run_dir=tmp_path / "reset"))
    assert reset.num_updates == 0 and reset.stream.consumed == 0 and len(reset.optimizer.state) == 0
    for name, tensor in reset.model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    reset.fit()
    again = make_trainer(make_tiny_cfg(*fast, f"checkpoint.continue_from={src}", "checkpoint.reset_schedule=true",
                                  run_dir=tmp_path / "reset"))
    assert again.num_updates == 3  # its own checkpoint wins over continue_from


def test_continue_from_a_different_architecture_fails_clearly(make_tiny_cfg, tmp_path: Path) -> None:
    fast = ["optim.max_update=2", "train.validate_every=0", "data.valid_subset=", "checkpoint.save_every=100"]
    make_trainer(make_tiny_cfg(*fast, run_dir=tmp_path / "source")).fit()
    src = tmp_path / "source" / "checkpoint_last.pt"
    with pytest.raises(ValueError, match="model.transformer.num_layers"):
        make_trainer(make_tiny_cfg(*fast, "model.transformer.num_layers=3", f"checkpoint.continue_from={src}",
                              run_dir=tmp_path / "other"))
