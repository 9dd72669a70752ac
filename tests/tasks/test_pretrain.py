"""The pretraining task: each logged metric pinned to its definition, the health warnings and
the verdict of a run."""

from __future__ import annotations

import math

import pytest
import torch

from wav2vec2.model.losses import pretraining_loss
from wav2vec2.model.quantizer import gumbel_temperature
from wav2vec2.tasks import build_task
from wav2vec2.tasks.pretrain import PretrainTask


@pytest.fixture
def task(make_tiny_cfg) -> PretrainTask:
    return build_task(make_tiny_cfg("optim.max_update=100"))  # tiny: K=10, G=2, V=16


def test_loss_sums_are_the_model_outputs(task: PretrainTask) -> None:
    """The sums of one micro-batch, from a forward computed again by hand."""
    torch.manual_seed(0)
    model = task.build_model().eval()
    batch = {"source": torch.randn(2, 8000)}
    out = task.loss(model, batch, num_updates=7, generator=torch.Generator().manual_seed(3))
    ref = model(batch["source"], temperature=gumbel_temperature(7, task.cfg.model.quantizer),
                generator=torch.Generator().manual_seed(3))
    loss = pretraining_loss(ref, task.cfg.model.loss)
    s = out.sums
    assert torch.equal(out.loss, loss.total) and out.sample_size == ref.logits.shape[0] == s["masked_frames"]
    assert torch.equal(s["contrastive"], loss.contrastive) and torch.equal(s["diversity"], loss.diversity)
    assert torch.equal(s["feature_penalty"], loss.feature_penalty) and torch.equal(s["correct"], loss.correct.float())
    assert torch.equal(s["prob_perplexity"], ref.prob_perplexity) and torch.equal(s["code_perplexity"],
                                                                                    ref.code_perplexity)
    assert s["prob_perplexity"] != s["code_perplexity"]  # so swapping them would show
    assert s["frames"] == ref.time_mask.numel() and s["forwards"] == 1.0
    # chance: 1 / (candidates not masked to -inf), by a loop over the logit rows
    rows = [int(torch.isfinite(row).sum()) for row in ref.logits]
    assert s["chance_correct"].item() == pytest.approx(sum(1 / r for r in rows))
    assert s["identical_negatives"] == sum(11 - r for r in rows)


def test_chance_accuracy_counts_identical_negatives(task: PretrainTask) -> None:
    """With every code the same, every negative equals its positive: chance is 1."""
    torch.manual_seed(0)
    model = task.build_model().eval()
    with torch.no_grad():
        model.quantizer.weight_proj.weight.zero_()  # every frame gets code 0 in both codebooks
    out = task.loss(model, {"source": torch.randn(2, 8000)}, num_updates=0, generator=torch.Generator().manual_seed(0))
    m = task.metrics({k: float(v) for k, v in {**out.sums, "sample_size": out.sample_size}.items()}, num_updates=0)
    assert m["chance_accuracy"] == 1.0 and m["identical_negatives"] == 1.0


def test_each_metric_is_its_definition(task: PretrainTask) -> None:
    # Distinct values everywhere, so any swapped or misplaced key changes a result.
    sums = {"loss": 70.0, "contrastive": 50.0, "diversity": 11.0, "feature_penalty": 9.0, "correct": 30.0,
            "masked_frames": 100.0, "prob_perplexity": 60.0, "code_perplexity": 24.0, "forwards": 3.0,
            "frames": 400.0, "chance_correct": 12.5, "identical_negatives": 40.0}
    m = task.metrics(sums, num_updates=5)
    ln2 = math.log(2)
    assert m == {
        "loss": 70 / 100 / ln2, "contrastive": 50 / 100 / ln2, "diversity": 11 / 100 / ln2,
        "feature_penalty": 9 / 100 / ln2, "accuracy": 0.3, "prob_perplexity": 20.0, "code_perplexity": 8.0,
        "masked_frac": 0.25, "masked_frames": 100.0, "temperature": gumbel_temperature(5, task.cfg.model.quantizer),
        "chance_accuracy": 0.125, "identical_negatives": 40 / (100 * 10),  # tiny: K = 10
    }


def test_checks_define_a_healthy_run(task: PretrainTask) -> None:
    chance = math.log2(11)
    healthy = {"contrastive": 0.5 * chance, "accuracy": 0.5, "code_perplexity": 20.0}
    assert all(task.checks(healthy).values())
    assert not task.checks(dict(healthy, contrastive=0.9 * chance))["contrastive loss under chance"]
    assert not task.checks(dict(healthy, accuracy=2.5 / 11))["accuracy above chance"]
    assert not task.checks(dict(healthy, code_perplexity=4.0))["codebook not collapsed"]  # 2G = 4
    assert not task.checks(dict(healthy, accuracy=1.0))["accuracy not degenerate"]


def _train(u: int, contrastive: float, **kw) -> dict:
    return {"split": "train", "num_updates": u, "contrastive": contrastive, "accuracy": 0.1,
            "code_perplexity": 20.0, **kw}


def test_collapse_and_degenerate_accuracy_warn_at_once(task: PretrainTask) -> None:
    assert task.health([_train(1, 2.0)]) == []
    warnings = " ".join(task.health([_train(1, 0.01, accuracy=1.0, code_perplexity=2.1)]))
    assert "codebook collapse" in warnings and "accuracy 1.000" in warnings


def test_not_learning_needs_time_and_a_flat_window(task: PretrainTask) -> None:
    chance = math.log2(11)
    stuck = [_train(u, chance + 0.01) for u in range(1, 41)]
    assert task.health(stuck[:24]) == []  # before 25% of 100 updates: a plateau is normal
    assert "not learning" in task.health(stuck[:30])[0]
    leaving = stuck[:28] + [_train(29, chance - 0.3), _train(30, chance + 0.01)]
    assert task.health(leaving) == []  # one log off chance within the window: it is moving
    assert task.health(stuck[:30] + [{"split": "valid", "num_updates": 30, "contrastive": chance,
                                      "accuracy": 0.1, "code_perplexity": 20.0}]) == []
