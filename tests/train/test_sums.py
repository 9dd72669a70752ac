"""The loop's numbers and the task's stay apart: a task that uses a name the loop reserves
is refused, naming the name and the task, instead of one number silently replacing the other."""

from __future__ import annotations

import pytest
import torch

from wav2vec2.tasks.base import RESERVED
from wav2vec2.tasks.pretrain import PretrainTask
from wav2vec2.train.sums import Sums
from wav2vec2.train.trainer import Trainer

FAST = ["optim.max_update=2", "train.validate_every=1", "checkpoint.save_every=100"]


class _Colliding(PretrainTask):
    """Pretraining that also returns one extra sum, train metric or validation metric
    (`where`, `key`), and remembers the names of the metrics it returned."""

    name = "colliding"

    def __init__(self, cfg, *, where: str = "", key: str = "") -> None:
        super().__init__(cfg)
        self.where, self.key = where, key
        self.returned: dict[str, set[str]] = {}

    def _extra(self, where: str) -> dict[str, float]:
        return {self.key: 1.0} if self.where == where else {}

    def loss(self, model, batch, *, num_updates, generator):
        out = super().loss(model, batch, num_updates=num_updates, generator=generator)
        out.sums.update(self._extra("sum"))
        return out

    def metrics(self, sums, *, num_updates):
        metrics = {**super().metrics(sums, num_updates=num_updates), **self._extra("metric")}
        self.returned["train"] = set(metrics)
        return metrics

    def valid_metrics(self, sums, *, num_updates):
        metrics = {**super().valid_metrics(sums, num_updates=num_updates), **self._extra("valid metric")}
        self.returned["valid"] = set(metrics)
        return metrics


@pytest.mark.parametrize(("where", "key"), [("sum", "utterances"), ("sum", "sample_size"), ("metric", "grad_norm"),
                                            ("metric", "lr"), ("metric", "split"), ("valid metric", "utterances"),
                                            ("valid metric", "best_loss")])
def test_a_task_that_uses_a_reserved_name_is_refused_naming_it(make_tiny_cfg, where: str, key: str) -> None:
    cfg = make_tiny_cfg(*FAST)
    trainer = Trainer(cfg, _Colliding(cfg, where=where, key=key))
    with pytest.raises(ValueError, match=rf"task 'colliding' returned a {where.split()[-1]} named '{key}', "
                                         "which the loop reserves"):
        trainer.fit()
    # a validation metric is only met at the first validation, after update 1
    assert trainer.num_updates == (1 if where == "valid metric" else 0)


def test_a_metric_the_loop_once_overwrote_is_logged_as_the_task_returned_it(make_tiny_cfg, tmp_path) -> None:
    """The loop used to put its audio seconds under `audio_sec` in the task's metrics (then
    pop it): a task metric of that name was lost. The loop keeps its numbers elsewhere now."""
    cfg = make_tiny_cfg(*FAST, run_dir=tmp_path / "run")
    trainer = Trainer(cfg, _Colliding(cfg, where="metric", key="audio_sec"))
    trainer.fit()
    train = next(r for r in trainer.metrics.history if r["split"] == "train")
    assert train["audio_sec"] == 1.0 and train["audio_sec_per_sec"] > 1.0


def test_every_name_the_loop_adds_to_a_row_is_reserved(make_tiny_cfg, tmp_path) -> None:
    cfg = make_tiny_cfg(*FAST, "precision.dtype=fp16", run_dir=tmp_path / "run")
    task = _Colliding(cfg)
    trainer = Trainer(cfg, task)
    trainer.fit()
    train, valid = (next(r for r in trainer.metrics.history if r["split"] == s) for s in ("train", "valid"))
    loop_train = set(train) - task.returned["train"]
    assert loop_train <= RESERVED and {"utterances", "lr", "grad_norm", "loss_scale", "split"} <= loop_train
    assert set(valid) - task.returned["valid"] - RESERVED == {"best_loss"}


def test_sums_keep_the_task_side_and_the_loop_side_apart(make_tiny_cfg) -> None:
    """`loss` is a task sum and one of the loop's own: neither replaces the other."""
    sums = Sums(PretrainTask(make_tiny_cfg()), torch.device("cpu"))
    sums.add({"loss": torch.tensor(2.0), "frames": 10}, sample_size=4, loss=torch.tensor(7.0), utterances=2)
    sums.add({"loss": torch.tensor(3.0), "frames": 5}, sample_size=1, loss=torch.tensor(1.0), utterances=1)
    assert sums.all_reduce() == ({"frames": 15.0, "loss": 5.0, "sample_size": 5.0}, {"loss": 8.0, "utterances": 3.0})
    with pytest.raises(ValueError, match="task 'pretrain' must return the same sums every time"):
        sums.add({"loss": 1.0}, sample_size=1, loss=1.0, utterances=1)
