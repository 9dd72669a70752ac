"""The classification task through the training loop, and the CTC probe: the task seam
carries a third task; a frozen upstream's weights are bit-identical after training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from wav2vec2.files import load_checkpoint
from wav2vec2.tasks import build_task
from wav2vec2.train import checkpoint as ckpt
from wav2vec2.train.plots import plot_curves, verdict

from helpers import compose_cfg, make_trainer, records


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path) -> Path:
    """A tiny pretraining run of 2 updates: the upstream every probe here reads."""
    run = tmp_path_factory.mktemp("pretrain")
    cfg = compose_cfg("tiny", [f"data.manifest_dir={tiny_corpus}", f"run_dir={run}", "logging.tensorboard=false",
                               "optim.max_update=2", "train.validate_every=0", "data.valid_subset="])
    make_trainer(cfg).fit()
    return run / ckpt.LAST


def _classify_cfg(corpus: Path, run: Path, *overrides: str):
    return compose_cfg("classify_tiny", [f"data.manifest_dir={corpus}", f"run_dir={run}", "logging.tensorboard=false",
                                         *overrides])


def _encoder(state: dict) -> dict[str, torch.Tensor]:
    return {k[len("wav2vec2."):]: v for k, v in state["model"].items() if k.startswith("wav2vec2.")}


def test_classification_trains_a_frozen_upstream_without_touching_it(class_corpus: Path, upstream: Path,
                                                                    tmp_path: Path) -> None:
    run = tmp_path / "cls"
    trainer = make_trainer(_classify_cfg(class_corpus, run, f"task.init={upstream}"))
    assert trainer.task.classes == ["spk0", "spk1", "spk2"]  # the training labels', sorted
    trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained == {"layer_sum.weights", "projector.weight", "projector.bias", "linear.weight", "linear.bias"}
    trainer.fit()
    before = load_checkpoint(upstream)["model"]
    after = load_checkpoint(run / ckpt.LAST)
    encoder = _encoder(after)
    assert encoder.keys() == {k for k in before if not k.startswith(("quantizer.", "project_q.", "final_proj."))}
    for name, value in encoder.items():
        assert torch.equal(value, before[name]), name  # bit-identical
    first = torch.load(run / ckpt.snapshot_name(5), weights_only=True)["model"]
    assert not torch.equal(first["linear.weight"], after["model"]["linear.weight"])  # the head did train
    assert after["task_state"] == {"classes": ["spk0", "spk1", "spk2"]}

    valid = records(run, "valid")[-1]
    N = 3
    confusion = [[valid[f"confusion_{i}_{j}"] for j in range(N)] for i in range(N)]
    assert sum(map(sum, confusion)) == valid["utterances"]
    assert valid["accuracy"] == pytest.approx(sum(confusion[i][i] for i in range(N)) / valid["utterances"])
    weights = [valid[f"layer_weight_{s}"] for s in range(3)]  # tiny: 2 layers, 3 hidden states
    assert sum(weights) == pytest.approx(1.0) and all(w > 0 for w in weights)
    assert "layer_weight_0" in records(run, "train")[-1]
    # The run's config lists its classes, so judging it (and its chance line) needs no labels.
    lines, _ = verdict(run)
    assert any("accuracy" in line for line in lines)
    assert plot_curves(run).is_file()


def test_best_checkpoint_is_the_most_accurate(class_corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "cls"
    make_trainer(_classify_cfg(class_corpus, run, "optim.max_update=10", "train.validate_every=2")).fit()
    valid = records(run, "valid")
    best = load_checkpoint(run / ckpt.BEST)
    top = max(r["accuracy"] for r in valid)
    first_top = next(r["num_updates"] for r in valid if r["accuracy"] == top)  # ties keep the first
    assert best["num_updates"] == first_top
    assert best["best_valid_metric"] == {"name": "accuracy", "value": top}


def test_resuming_with_other_classes_is_refused(class_corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "cls"
    make_trainer(_classify_cfg(class_corpus, run, "optim.max_update=2")).fit()
    with pytest.raises(ValueError, match="trained on classes"):
        make_trainer(_classify_cfg(class_corpus, run, "optim.max_update=4", "task.classes=[spk2,spk1,spk0]"))


def test_bad_labels_name_file_and_line(class_corpus: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("train.tsv", "valid.tsv", "train.lbl"):
        (corpus / name).write_text((class_corpus / name).read_text())
    valid = (class_corpus / "valid.lbl").read_text().splitlines()
    (corpus / "valid.lbl").write_text("\n".join(valid[:2] + ["spk9"] + valid[3:]) + "\n")
    with pytest.raises(ValueError, match="^" + re.escape(f"{corpus / 'valid.lbl'}:3: unknown class 'spk9'")):
        make_trainer(_classify_cfg(corpus, tmp_path / "run"))
    (corpus / "valid.lbl").write_text("\n".join(valid[:-1]) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{corpus / 'valid.lbl'}:{len(valid)} is the first manifest entry")):
        make_trainer(_classify_cfg(corpus, tmp_path / "run"))


def test_the_ctc_probe_trains_only_the_layer_weights_and_the_head(labelled_corpus: Path, upstream: Path,
                                                                  tmp_path: Path) -> None:
    run = tmp_path / "probe"
    cfg = compose_cfg("probe_ctc_tiny", [f"data.manifest_dir={labelled_corpus}", f"run_dir={run}",
                                         "logging.tensorboard=false", f"task.init={upstream}"])
    trainer = make_trainer(cfg)
    assert {n for n, p in trainer.model.named_parameters() if p.requires_grad} == {
        "layer_sum.weights", "proj.weight", "proj.bias"}
    trainer.fit()
    before = load_checkpoint(upstream)["model"]
    for name, value in _encoder(load_checkpoint(run / ckpt.LAST)).items():
        assert torch.equal(value, before[name]), name
    row = records(run, "valid")[-1]
    assert {"cer", "wer", "layer_weight_0", "layer_weight_2"} <= row.keys()
    titles = [p.title for p in build_task(cfg).panels()]
    assert any("layer weights" in t for t in titles)


def test_metrics_are_their_definitions(class_corpus: Path, tmp_path: Path) -> None:
    task = build_task(_classify_cfg(class_corpus, tmp_path / "run"))
    task.prepare()
    sums = {"loss": 6.0, "correct": 3.0, "sample_size": 4.0, "forwards": 2.0,
            "layer_weight_0": 0.4, "layer_weight_1": 1.0, "layer_weight_2": 0.6}
    metrics = task.metrics(sums, num_updates=0)
    assert metrics["accuracy"] == 0.75
    assert metrics["loss"] == pytest.approx(6.0 / 4 / 0.6931471805599453)
    assert metrics["layer_weight_1"] == 0.5
    assert task.checks({"accuracy": 0.34}) == {"accuracy above chance (a uniform guess)": True}
    assert task.checks({"accuracy": 1 / 3}) == {"accuracy above chance (a uniform guess)": False}
    assert json.dumps(metrics)  # plain floats, as metrics.jsonl needs


def test_confusion_counts_are_true_class_by_predicted_class(class_corpus: Path, tmp_path: Path) -> None:
    task = build_task(_classify_cfg(class_corpus, tmp_path / "run"))
    task.prepare()

    class Fixed(torch.nn.Module):  # predicts class 2, 2, 0 whatever it hears
        def forward(self, source, padding_mask=None, *, generator=None):
            from wav2vec2.model.classifier import ClassifierOutput
            return ClassifierOutput(logits=torch.tensor([[0.0, 0, 1], [0, 0, 1], [1, 0, 0]]))

    batch = {"source": torch.zeros(3, 400), "target": torch.tensor([[0], [2], [1]])}
    sums = task.valid_step(Fixed(), batch, num_updates=0, generator=torch.Generator()).sums
    got = {k: int(v) for k, v in sums.items() if k.startswith("confusion_") and v}
    assert got == {"confusion_0_2": 1, "confusion_2_2": 1, "confusion_1_0": 1}
    assert int(sums["correct"]) == 1
