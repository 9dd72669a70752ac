"""Which task wrote a checkpoint: said by version 2 files, told from the weights of version 1
files (no "task" field), never assumed; and version 1 files of either task still resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from wav2vec2.config import tiny
from wav2vec2.files import atomic_write, load_checkpoint, serialize
from wav2vec2.model.ctc import Wav2Vec2Ctc
from wav2vec2.model.wav2vec2 import Wav2Vec2Model
from wav2vec2.train import checkpoint as ckpt
from wav2vec2.train.resume import checkpoint_task

from helpers import make_trainer

FAST = ["optim.max_update=2", "train.validate_every=0", "data.valid_subset=", "checkpoint.save_every=100"]


def test_a_version_1_checkpoint_is_classified_by_its_weights() -> None:
    pretraining = {"version": 1, "model": Wav2Vec2Model(tiny()).state_dict(), "num_updates": 3}
    ctc = {"version": 1, "model": Wav2Vec2Ctc(tiny(), vocab_size=8).state_dict(), "num_updates": 3}
    assert checkpoint_task(pretraining, Path("old.pt")) == "pretrain"
    assert checkpoint_task(ctc, Path("old.pt")) == "ctc"
    assert checkpoint_task({**pretraining, "task": "ctc"}, Path("new.pt")) == "ctc"  # version 2 says so


@pytest.mark.parametrize("state", [
    {"model": {k: v for k, v in Wav2Vec2Model(tiny()).state_dict().items() if not k.startswith("quantizer.")}},
    {"model": {"proj.weight": 0}},  # a head without the encoder under wav2vec2.
    {"num_updates": 3},
])
def test_a_checkpoint_that_names_no_task_and_is_neither_is_refused_naming_the_file(state) -> None:
    with pytest.raises(ValueError, match=r"mystery\.pt names no task .* cannot tell which task wrote it"):
        checkpoint_task(state, Path("runs/x/mystery.pt"))


def _as_version_1(path: Path) -> dict:
    """Rewrite a checkpoint as the trainer wrote it before the task seam: no task fields,
    the best validation loss under its old name."""
    state = load_checkpoint(path)
    for key in ("task", "task_state", "best_valid_metric"):
        state.pop(key)
    state.update(version=1, best_valid_loss=1.25)
    atomic_write(path, serialize(state))
    return state


def test_a_version_1_pretraining_checkpoint_resumes(make_tiny_cfg, tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_trainer(make_tiny_cfg(*FAST, run_dir=run)).fit()
    _as_version_1(run / ckpt.LAST)
    resumed = make_trainer(make_tiny_cfg(*FAST, "optim.max_update=3", run_dir=run))
    assert resumed.num_updates == 2 and resumed.best_valid == 1.25
    resumed.fit()
    assert load_checkpoint(run / ckpt.LAST)["num_updates"] == 3


def test_a_version_1_ctc_checkpoint_resumes_as_ctc(make_ctc_cfg, tmp_path: Path) -> None:
    """It used to be taken for a pretraining checkpoint and refused."""
    run = tmp_path / "run"
    make_trainer(make_ctc_cfg(*FAST, run_dir=run)).fit()
    _as_version_1(run / ckpt.LAST)
    resumed = make_trainer(make_ctc_cfg(*FAST, "optim.max_update=3", run_dir=run))
    assert resumed.num_updates == 2
    resumed.fit()
    assert load_checkpoint(run / ckpt.LAST)["num_updates"] == 3


def test_a_version_1_checkpoint_of_another_task_is_refused(make_tiny_cfg, make_ctc_cfg, tmp_path: Path) -> None:
    source = tmp_path / "pretrained"
    make_trainer(make_tiny_cfg(*FAST, run_dir=source)).fit()
    _as_version_1(source / ckpt.LAST)
    with pytest.raises(ValueError, match=r"checkpoint_last\.pt is a checkpoint of the 'pretrain' task, this run is "
                                         "'ctc'"):
        make_trainer(make_ctc_cfg(*FAST, f"checkpoint.continue_from={source / ckpt.LAST}", run_dir=tmp_path / "ctc"))
