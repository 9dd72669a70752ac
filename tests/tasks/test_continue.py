"""Continued pretraining (`task.init` of the pretrain task, tasks/continuation.py):

- at update 0 the continued model computes what the source computes, read from each format
  (this project's checkpoint, a fairseq file, a transformers directory);
- continuing from a checkpoint's transformers export equals continuing from the checkpoint
  (losses and weights bit-identical on the CPU, same seed); resuming mid-run is bit-exact;
- what carries over is what the config says (temperature, Adam's moments), and the log says it;
- a source without pretraining heads, or an override that contradicts the source's
  architecture, is a short error; the continuation warnings fire on a run that unlearns and
  stay silent on one that does not.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch

from wav2vec2.config import tiny
from wav2vec2.files import load_checkpoint
from wav2vec2.interop.fairseq import export_fairseq
from wav2vec2.interop.load import load_model
from wav2vec2.model.quantizer import gumbel_temperature
from wav2vec2.model.wav2vec2 import Wav2Vec2Model
from wav2vec2.tasks import build_task
from wav2vec2.train import checkpoint as ckpt

from helpers import assert_same_weights, make_trainer, records

SHORT = ("optim.max_update=6", "optim.warmup_updates=2", "train.validate_every=3", "train.validate_at_start=true")


def _perturbed(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture
def source(make_tiny_cfg, tmp_path: Path) -> Path:
    """A tiny pretraining checkpoint of this project: 4 updates of the tiny preset."""
    cfg = make_tiny_cfg("optim.max_update=4", "train.validate_every=0", "data.valid_subset=",
                        run_dir=tmp_path / "source")
    make_trainer(cfg).fit()
    return tmp_path / "source" / ckpt.LAST


def _continued_model(make_tiny_cfg, init: Path, *overrides: str) -> Wav2Vec2Model:
    task = build_task(make_tiny_cfg(f"task.init={init}", *overrides))
    task.prepare()
    return task.build_model().eval()


def _outputs(model: Wav2Vec2Model) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's output and the contrastive logits, with a fixed mask and negatives."""
    wav = torch.randn(2, 8000, generator=torch.Generator().manual_seed(3))
    T = model.feature_encoder.output_lengths(8000)
    time_mask = torch.zeros(2, T, dtype=torch.bool)
    time_mask[:, 2:9] = True
    negatives = torch.randint(0, 6, (2, 7, 4), generator=torch.Generator().manual_seed(4))
    negatives += (negatives >= torch.arange(7).view(1, 7, 1)).long()
    with torch.no_grad():
        out = model(wav, time_mask=time_mask, negative_indices=negatives)
        return model.encode(wav).x, out.logits


def test_update_zero_computes_what_the_source_computes_in_every_format(make_tiny_cfg, source: Path,
                                                                         tmp_path: Path) -> None:
    reference = load_model(source).build()
    expected = _outputs(reference)
    fairseq = export_fairseq(load_model(source), tmp_path / "fairseq" / "model.pt")
    from wav2vec2.interop.hf import export_hf

    hf = export_hf(load_model(source), tmp_path / "hf")
    for init in (source, fairseq, hf):
        model = _continued_model(make_tiny_cfg, init)
        got = _outputs(model)
        for a, b in zip(got, expected):
            assert torch.equal(a, b), init
        assert_same_weights(model.state_dict(), reference.state_dict())


def test_through_the_transformers_export_equals_from_the_checkpoint(make_tiny_cfg, source: Path,
                                                                     tmp_path: Path) -> None:
    """A user with only the released (transformers) model continues exactly as one with the
    checkpoint. The temperature restarts in both: a transformers directory does not record
    how far the source's anneal went (the checkpoint does)."""
    from wav2vec2.interop.hf import export_hf

    hf = export_hf(load_model(source), tmp_path / "hf")
    runs = {}
    for name, init in (("checkpoint", source), ("hf", hf)):
        runs[name] = tmp_path / name
        make_trainer(make_tiny_cfg(f"task.init={init}", "task.init_temperature=restart", *SHORT,
                                   run_dir=runs[name])).fit()
    for split in ("train", "valid"):
        a, b = records(runs["checkpoint"], split), records(runs["hf"], split)
        assert [{k: v for k, v in r.items() if k != "time" and "sec" not in k} for r in a] == \
               [{k: v for k, v in r.items() if k != "time" and "sec" not in k} for r in b]
    validated = [r["num_updates"] for r in records(runs["hf"], "valid")]
    assert validated[0] == 0 and validated[-1] == 6  # train.validate_at_start, and the end
    assert_same_weights(load_checkpoint(runs["checkpoint"] / ckpt.LAST)["model"],
                        load_checkpoint(runs["hf"] / ckpt.LAST)["model"])


def test_resuming_a_continued_run_is_bit_exact(make_tiny_cfg, source: Path, tmp_path: Path) -> None:
    one_go, resumed = tmp_path / "one_go", tmp_path / "resumed"
    make_trainer(make_tiny_cfg(f"task.init={source}", *SHORT, run_dir=one_go)).fit()
    make_trainer(make_tiny_cfg(f"task.init={source}", *SHORT, "train.stop_at_update=4", run_dir=resumed)).fit()
    make_trainer(make_tiny_cfg(f"task.init={source}", *SHORT, run_dir=resumed)).fit()
    assert [r["loss"] for r in records(one_go)] == [r["loss"] for r in records(resumed) if r["num_updates"] > 0]
    assert_same_weights(load_checkpoint(one_go / ckpt.LAST)["model"], load_checkpoint(resumed / ckpt.LAST)["model"])


def test_what_carries_over_is_what_the_config_says_and_the_log_says_it(make_tiny_cfg, source: Path, tmp_path: Path,
                                                                       caplog) -> None:
    saved = load_checkpoint(source)
    assert saved["num_updates"] == 4
    q = tiny().quantizer
    with caplog.at_level(logging.INFO, logger="wav2vec2"):
        trainer = make_trainer(make_tiny_cfg(f"task.init={source}", "task.init_optimizer=true", *SHORT,
                                             run_dir=tmp_path / "run"))
    # The temperature goes on from the source's update 4.
    assert trainer.task.temperature(0) == gumbel_temperature(4, q) != gumbel_temperature(0, q)
    # Adam's moments are the source's, parameter for parameter.
    names = [n for n, _ in trainer.model.named_parameters()]
    state = trainer.optimizer.state_dict()["state"]
    source_state = saved["optimizer"]["state"]
    assert len(state) == len(names) == len(source_state)
    for i in range(len(names)):
        assert torch.equal(state[i]["exp_avg"], source_state[i]["exp_avg"])
        assert float(state[i]["step"]) == float(source_state[i]["step"]) > 0  # LayerDrop may skip a layer's step
    log = caplog.text
    assert f"continuing pretraining from {source}" in log and "trained 4 updates" in log
    assert "carried: the architecture" in log and "Adam's moments (task.init_optimizer)" in log
    assert "continues from the source's update 4" in log
    assert "reset: the lr schedule (warm-up 2 updates" in log and "the update count (0" in log

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="wav2vec2"):
        fresh = make_trainer(make_tiny_cfg(f"task.init={source}", "task.init_temperature=restart",
                                           *SHORT, run_dir=tmp_path / "fresh"))
    assert fresh.optimizer.state_dict()["state"] == {}
    assert fresh.task.temperature(0) == gumbel_temperature(0, q)
    assert "reset: Adam's moments (task.init_optimizer=false)" in caplog.text
    assert "restarts its anneal" in caplog.text


def test_fairseq_moments_are_read_per_parameter_and_flat(source: Path, tmp_path: Path) -> None:
    """fairseq keeps Adam's state per parameter, or (--fp16) as one flat state over all of them
    in the order of the model's state dict: both come back by our parameter names."""
    loaded = load_model(source)
    path = export_fairseq(loaded, tmp_path / "model.pt")
    state = torch.load(path, weights_only=True)
    names = list(state["model"])
    g = torch.Generator().manual_seed(0)
    per_param = {i: {"step": 7, "exp_avg": torch.randn(state["model"][n].shape, generator=g),
                     "exp_avg_sq": torch.rand(state["model"][n].shape, generator=g)} for i, n in enumerate(names)}
    flat = {0: {"step": 7, "exp_avg": torch.cat([per_param[i]["exp_avg"].reshape(-1) for i in range(len(names))]),
                "exp_avg_sq": torch.cat([per_param[i]["exp_avg_sq"].reshape(-1) for i in range(len(names))])}}
    by_ours = load_model(path).weights  # the same tensors, our names, in the same order
    expected = {ours: per_param[i] for i, ours in enumerate(by_ours)}
    for optimizer_state in (per_param, flat):
        state["last_optimizer_state"] = {"state": optimizer_state, "param_groups": [{"params": list(optimizer_state)}]}
        torch.save(state, tmp_path / "with_moments.pt")
        moments = load_model(tmp_path / "with_moments.pt").optimizer_state
        assert moments.keys() == by_ours.keys()
        for name, m in moments.items():
            assert torch.equal(m["exp_avg"], expected[name]["exp_avg"]), name
            assert torch.equal(m["exp_avg_sq"], expected[name]["exp_avg_sq"]) and m["step"] == 7, name
    state["last_optimizer_state"] = {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": []}
    torch.save(state, tmp_path / "sgd.pt")
    assert load_model(tmp_path / "sgd.pt").optimizer_state is None  # not Adam's: not read


def test_what_cannot_be_continued_says_why(make_tiny_cfg, source: Path, tmp_path: Path, caplog) -> None:
    # A source without the quantizer and projections: refused, or accepted with fresh heads.
    encoder = Wav2Vec2Model(tiny())
    encoder.remove_pretraining_modules()
    state = load_checkpoint(source)
    state["model"] = encoder.state_dict()
    torch.save(state, tmp_path / "encoder.pt")
    with pytest.raises(ValueError, match=r"encoder.pt \(wav2vec2 checkpoint, encoder .*\) has no quantizer, project_q "
                                         r"and final_proj .*task.init_fresh_heads=true"):
        build_task(make_tiny_cfg(f"task.init={tmp_path / 'encoder.pt'}")).prepare()
    with caplog.at_level(logging.WARNING):
        model = _continued_model(make_tiny_cfg, tmp_path / "encoder.pt", "task.init_fresh_heads=true")
    assert model.quantizer is not None and "start from random weights" in caplog.text
    # An explicit architecture that contradicts the source's.
    task = build_task(make_tiny_cfg(f"task.init={source}", "model.transformer.num_layers=3"),
                      architecture_overrides=("transformer.num_layers",))
    with pytest.raises(ValueError, match=r"model.transformer.num_layers=3 contradicts the architecture of .*"
                                         r"\(model.transformer.num_layers=2\)"):
        task.prepare()
    # One that agrees is fine; a non-architecture override is the run's own.
    build_task(make_tiny_cfg(f"task.init={source}", "model.transformer.num_layers=2", "model.transformer.dropout=0.3"),
               architecture_overrides=("transformer.num_layers",)).prepare()
    # Moments asked for but not there (a transformers directory never has them).
    from wav2vec2.interop.hf import export_hf

    hf = export_hf(load_model(source), tmp_path / "hf")
    with pytest.raises(ValueError, match="carries no Adam moments"):
        make_trainer(make_tiny_cfg(f"task.init={hf}", "task.init_optimizer=true", run_dir=tmp_path / "r"))
    with pytest.raises(FileNotFoundError, match="task.init: no model at"):
        build_task(make_tiny_cfg(f"task.init={tmp_path / 'nothing.pt'}")).prepare()


def _valid(u: int, contrastive: float, code_ppl: float, diversity: float) -> dict:
    return {"split": "valid", "num_updates": u, "contrastive": contrastive, "code_perplexity": code_ppl,
            "diversity": diversity, "accuracy": 0.5}


@pytest.mark.parametrize(("rows", "expected"), [
    ([_valid(0, 2.0, 50, 0.1), _valid(50, 1.95, 50, 0.1), _valid(100, 1.9, 49, 0.1), _valid(150, 1.9, 50, 0.1)], []),
    ([_valid(0, 2.0, 50, 0.1), _valid(50, 2.1, 50, 0.1), _valid(100, 2.2, 49, 0.1), _valid(150, 2.3, 50, 0.1)],
     ["unlearning"]),
    ([_valid(0, 2.0, 50, 0.1), _valid(50, 1.9, 20, 0.1), _valid(100, 1.9, 15, 0.1), _valid(150, 1.9, 12, 0.1)],
     ["codebooks narrowing"]),
    ([_valid(0, 2.0, 50, 0.1), _valid(50, 1.9, 48, 0.25), _valid(100, 1.9, 48, 0.25), _valid(150, 1.9, 48, 0.25)],
     ["diversity loss climbing"]),
    # Two validations over the threshold, then one back under it: not sustained.
    ([_valid(0, 2.0, 50, 0.1), _valid(50, 2.1, 50, 0.1), _valid(100, 2.2, 50, 0.1), _valid(150, 2.0, 50, 0.1)], []),
])
def test_continuation_warnings(make_tiny_cfg, source: Path, rows: list[dict], expected: list[str]) -> None:
    task = build_task(make_tiny_cfg(f"task.init={source}"))
    warnings = task.health(rows)
    assert len(warnings) == len(expected) and all(e in w for e, w in zip(expected, warnings)), warnings
    fresh = build_task(make_tiny_cfg())
    assert not any("continued" in w for w in fresh.health(rows))  # only continued runs are judged so


def test_a_fresh_run_keeps_no_task_state(make_tiny_cfg) -> None:
    """Checkpoints of fresh pretraining runs are as before (no state for the temperature)."""
    task = build_task(make_tiny_cfg())
    assert task.state_dict() == {} and dataclasses.asdict(task.task_cfg)["init"] == ""


def test_the_source_as_validated_at_update_0_is_a_continued_runs_first_best(make_tiny_cfg, source: Path,
                                                                             tmp_path: Path) -> None:
    """A continued run that never beats where it started (here lr 1e-30: no weight moves by a
    float32 ulp, so every validation ties with update 0's) has as checkpoint_best.pt the source as
    validated at update 0. It used to have none ("no checkpoint_best.pt: the run has not
    validated", seen after a continued run at 10x the lr had validated seven times)."""
    run = tmp_path / "run"
    make_trainer(make_tiny_cfg(f"task.init={source}", *SHORT, "optim.lr=1e-30", run_dir=run)).fit()
    valid = records(run, "valid")
    assert valid[0]["num_updates"] == 0 and valid[-1]["num_updates"] == 6
    assert len({r["loss"] for r in valid}) == 1  # nothing beat update 0
    best = load_checkpoint(run / ckpt.BEST)
    assert best["num_updates"] == 0
    assert_same_weights(best["model"], {k: v for k, v in load_checkpoint(source)["model"].items()})
