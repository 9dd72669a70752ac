"""CTC fine-tuning: the loss against brute force, the head, freezing, initialisation from a
pretraining checkpoint, and the task through the training loop."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from wav2vec2.files import load_checkpoint
from wav2vec2.config import architecture, tiny
from wav2vec2.data import Dictionary
from wav2vec2.model.ctc import Wav2Vec2Ctc, ctc_loss_sum
from wav2vec2.tasks import build_task
from wav2vec2.tasks.ctc import CtcTask
from wav2vec2.train import checkpoint as ckpt
from wav2vec2.train.trainer import Trainer

from helpers import assert_same_weights, make_trainer, records


# ---------------------------------------------------------------- the loss
def _brute_force_nll(log_probs: torch.Tensor, target: list[int], blank: int = 0) -> float:
    """-log sum over every frame labelling that collapses to `target` (repeats merged, then
    blanks dropped) of the product of its frame probabilities. Shape: log_probs (T, V)."""
    T, V = log_probs.shape
    total = -math.inf
    for path in itertools.product(range(V), repeat=T):
        collapsed = [s for i, s in enumerate(path) if (i == 0 or s != path[i - 1]) and s != blank]
        if collapsed == target:
            total = float(torch.logaddexp(torch.tensor(total), log_probs[range(T), list(path)].sum()))
    return -total


def test_ctc_loss_equals_the_sum_over_alignments() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 4, generator=g, dtype=torch.float64)  # (B, T, V)
    lengths = torch.tensor([6, 4, 5])  # utterance 1 and 2 are padded
    targets = torch.tensor([[1, 2, 2], [3, 1, 1], [2, 1, 1]])  # padding values must not matter
    target_lengths = torch.tensor([3, 1, 2])  # "1 2 2" needs a blank between the 2s
    loss = ctc_loss_sum(logits, lengths, targets, target_lengths)
    lp = torch.log_softmax(logits, dim=-1)
    want = sum(_brute_force_nll(lp[b, : lengths[b]], targets[b, : target_lengths[b]].tolist()) for b in range(3))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(want, rel=1e-5)


def test_ctc_loss_zeroes_impossible_utterances() -> None:
    logits = torch.randn(2, 3, 4)
    # 3 frames cannot emit "1 1 1" (needs 5: two blanks between the repeats); the other can.
    loss = ctc_loss_sum(logits, torch.tensor([3, 3]), torch.tensor([[1, 1, 1], [2, 0, 0]]), torch.tensor([3, 1]))
    alone = ctc_loss_sum(logits[1:], torch.tensor([3]), torch.tensor([[2]]), torch.tensor([1]))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(alone.item())


# ---------------------------------------------------------------- the head
def _ctc_model(**kw) -> Wav2Vec2Ctc:
    torch.manual_seed(0)
    return Wav2Vec2Ctc(tiny(), vocab_size=9, **kw)


def test_head_init_and_no_pretraining_modules() -> None:
    model = _ctc_model()
    assert model.wav2vec2.quantizer is None and model.wav2vec2.final_proj is None
    assert "wav2vec2.mask_emb" in model.state_dict()
    assert not any(k.startswith(("wav2vec2.quantizer", "wav2vec2.project_q")) for k in model.state_dict())
    assert (model.proj.bias == 0).all()
    bound = math.sqrt(6 / (48 + 9))  # Xavier uniform, fan_in 48, fan_out 9
    w = model.proj.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound
    # grad_mult 0 (tiny's is 0.1): the CNN is frozen for good and out of the optimizer.
    cfg = tiny()
    cfg.feature_encoder.grad_mult = 0.0
    frozen = Wav2Vec2Ctc(cfg, vocab_size=9)
    assert not any(p.requires_grad for p in frozen.wav2vec2.feature_encoder.parameters())
    assert all(p.requires_grad for p in frozen.wav2vec2.encoder.parameters())


def test_padded_frames_emit_only_blank() -> None:
    model = _ctc_model().eval()
    source = torch.randn(2, 8000)
    padding = torch.zeros(2, 8000, dtype=torch.bool)
    padding[1, 5000:] = True
    out = model(source, padding)
    T = out.logits.shape[1]
    assert out.lengths.tolist() == [T, model.wav2vec2.feature_encoder.output_lengths(5000)]
    pad = out.padding_mask[1]
    assert pad.any() and (out.logits[1, pad, 0] == 0).all() and torch.isinf(out.logits[1, pad, 1:]).all()
    assert torch.isfinite(out.logits[0]).all() and torch.isfinite(out.logits[1, ~pad]).all()


def test_freezing_stops_gradients_to_the_encoder_only() -> None:
    model = _ctc_model().train()
    source = torch.randn(2, 6000)
    targets, target_lengths = torch.tensor([[4, 5], [6, 0]]), torch.tensor([2, 1])
    for freeze in (True, False):
        model.zero_grad(set_to_none=True)
        out = model(source, freeze_encoder=freeze, generator=torch.Generator().manual_seed(0))
        ctc_loss_sum(out.logits, out.lengths, targets, target_lengths).backward()
        encoder_grads = [p.grad for p in model.wav2vec2.parameters() if p.requires_grad]
        assert model.proj.weight.grad is not None and model.proj.weight.grad.abs().sum() > 0
        if freeze:
            assert all(g is None for g in encoder_grads)
        else:
            assert sum(g is not None and bool(g.abs().sum() > 0) for g in encoder_grads) > len(encoder_grads) // 2


def test_fine_tuning_masks_in_training_only() -> None:
    model = _ctc_model()
    model.cfg.masking.mask_prob = 0.5
    source = torch.randn(1, 16000)
    enc_train = model.train().wav2vec2.encode(source, mask=True, generator=torch.Generator().manual_seed(1))
    assert enc_train.time_mask is not None and enc_train.time_mask.any()
    model.eval()
    assert torch.equal(model(source).logits, model(source).logits)  # eval: no masks, no dropout
    model.cfg.masking.mask_prob = 0.0  # masking off: nothing masked, as fairseq
    assert model.train().wav2vec2.encode(source, mask=True).time_mask is None


# ---------------------------------------------------------------- the task
def test_task_state_carries_the_dictionary(make_ctc_cfg, tmp_path: Path) -> None:
    task = build_task(make_ctc_cfg())
    state = task.state_dict()
    assert state["dictionary"] == task.dictionary.symbols[4:]
    task.load_state_dict(state)
    other = dict(state, dictionary=list(reversed(state["dictionary"])))
    with pytest.raises(ValueError, match="differs from the dictionary"):
        task.load_state_dict(other)


def test_cropping_is_refused(make_ctc_cfg) -> None:
    with pytest.raises(ValueError, match="data.max_sample_size must be 0"):
        build_task(make_ctc_cfg("data.max_sample_size=16000"))


def test_errors_on_the_way_to_fine_tuning_name_the_file_and_lead_forward(make_ctc_cfg, labelled_corpus: Path) -> None:
    """A file longer than a batch may hold is named with its manifest line and the value that
    fits; a missing subset lists the manifests the directory has."""
    with pytest.raises(ValueError, match=r"\.flac \(.*train\.tsv:\d+\) has \d+ samples .* more than a batch may "
                                         r"hold \(data\.max_tokens=8000, 0\.5 s\); \d+ file\(s\) .*Raise "
                                         r"data\.max_tokens to at least \d+"):
        make_trainer(make_ctc_cfg("data.max_tokens=8000"))
    with pytest.raises(FileNotFoundError, match=rf"no manifest {labelled_corpus}/dev\.tsv .*: {labelled_corpus} has "
                                                r"train, valid \(data\.train_subset / data\.valid_subset name them\)"):
        make_trainer(make_ctc_cfg("data.valid_subset=dev"))


def test_missing_dictionary_is_named(make_ctc_cfg, tmp_path: Path) -> None:
    task = build_task(make_ctc_cfg(f"task.dictionary={tmp_path / 'nowhere' / 'dict.ltr.txt'}"))
    with pytest.raises(FileNotFoundError, match="nowhere/dict.ltr.txt"):
        task.prepare()


def test_metrics_are_their_definitions(make_ctc_cfg) -> None:
    task = build_task(make_ctc_cfg())
    sums = {"loss": 10.0, "sample_size": 4.0, "tokens": 20.0, "frames": 100.0, "blank_frames": 60.0,
            "frozen": 0.0, "word_errors": 3.0, "words": 12.0, "char_errors": 5.0, "chars": 50.0}
    m = task.metrics(sums, num_updates=0)
    assert m["loss"] == 10 / 4 / math.log(2) and m["loss_per_token"] == 10 / 20 / math.log(2)
    assert m["blank_frac"] == 0.6 and m["encoder_frozen"] == 0.0
    v = task.valid_metrics(sums, num_updates=0)
    assert v["wer"] == 25.0 and v["cer"] == 10.0 and "encoder_frozen" not in v


def test_only_blanks_warning_fires_after_the_freeze_and_patience(make_ctc_cfg) -> None:
    task = build_task(make_ctc_cfg("task.freeze_finetune_updates=4", "optim.max_update=100"))
    record = {"split": "valid", "blank_frac": 1.0, "wer": 100.0}
    assert task.health([dict(record, num_updates=10)]) == []  # 10 < 0.25 * 100
    assert "only blanks" in task.health([dict(record, num_updates=30)])[0]
    assert task.health([dict(record, num_updates=30, blank_frac=0.8)]) == []
    assert task.health([{"split": "train", "num_updates": 30, "blank_frac": 1.0}]) == []


def test_frozen_updates_train_only_the_head(make_ctc_cfg) -> None:
    trainer = make_trainer(make_ctc_cfg("task.freeze_finetune_updates=2", "optim.max_update=3", "train.validate_every=0",
                                    "data.valid_subset=", "checkpoint.save_every=100"))
    encoder = {k: v.clone() for k, v in trainer.model.wav2vec2.state_dict().items()}
    head = trainer.model.proj.weight.clone()
    for _ in range(2):
        trainer.train_step([trainer.stream.next()])
    assert all(torch.equal(v, trainer.model.wav2vec2.state_dict()[k]) for k, v in encoder.items())
    assert not torch.equal(head, trainer.model.proj.weight)
    metrics = trainer.train_step([trainer.stream.next()])  # update 3: the freeze is over
    assert metrics["encoder_frozen"] == 0.0
    changed = [k for k, v in encoder.items() if not torch.equal(v, trainer.model.wav2vec2.state_dict()[k])]
    assert "encoder.layers.0.fc1.weight" in changed


# ---------------------------------------------------------------- from a pretraining checkpoint
@pytest.fixture
def pretrained(make_tiny_cfg, tmp_path: Path) -> Path:
    """A tiny pretraining run of 2 updates, with layer norm encoder features to tell it apart."""
    cfg = make_tiny_cfg("optim.max_update=2", "train.validate_every=0", "data.valid_subset=",
                        "model.transformer.num_layers=3", run_dir=tmp_path / "pretrain")
    make_trainer(cfg).fit()
    return tmp_path / "pretrain" / ckpt.LAST


def test_init_takes_architecture_and_weights_from_the_checkpoint(make_ctc_cfg, pretrained: Path) -> None:
    cfg = make_ctc_cfg(f"task.init={pretrained}", "model.masking.mask_prob=0.2")
    task = build_task(cfg)
    assert cfg.model.transformer.num_layers == 2  # nothing read before prepare()
    task.prepare()
    saved = load_checkpoint(pretrained)
    assert cfg.model.transformer.num_layers == 3  # from the checkpoint, not ctc_tiny's 2
    assert cfg.model.masking.mask_prob == 0.2  # fine-tuning values stay this run's
    model = task.build_model()
    for key, value in model.wav2vec2.state_dict().items():
        assert torch.equal(value, saved["model"][key]), key
    # The same weights through the trainer, which writes the resolved architecture.
    trainer = Trainer(cfg, task)
    written = (Path(cfg.run_dir) / "config.yaml").read_text()
    assert "num_layers: 3" in written
    assert torch.equal(trainer.model.wav2vec2.mask_emb, saved["model"]["mask_emb"])


def test_init_with_other_normalisation_fails(make_ctc_cfg, pretrained: Path) -> None:
    with pytest.raises(ValueError, match="normalize"):
        build_task(make_ctc_cfg(f"task.init={pretrained}", "data.normalize=true")).prepare()


def test_init_from_missing_path_is_named(make_ctc_cfg, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="task.init"):
        build_task(make_ctc_cfg(f"task.init={tmp_path / 'nope.pt'}")).prepare()


# ---------------------------------------------------------------- the whole loop
@pytest.mark.slow
def test_pretrain_finetune_resume_and_evaluate(tiny_corpus: Path, labelled_corpus: Path, tmp_path: Path,
                                               train_script) -> None:
    """Through `scripts/train.py`: pretrain a few updates, fine-tune from it, stop and resume
    (bit-exact against an uninterrupted run), then score the best checkpoint."""
    from wav2vec2.infer.evaluate import evaluate_ctc

    pre = tmp_path / "pre"
    train_script(f"data.manifest_dir={tiny_corpus}", f"run_dir={pre}", "optim.max_update=4",
                 "logging.tensorboard=false")
    common = ["--config-name", "ctc_tiny", f"data.manifest_dir={labelled_corpus}", f"task.init={pre / ckpt.LAST}",
              "optim.max_update=8", "optim.update_freq=2", "data.num_workers=1", "logging.tensorboard=false",
              "train.validate_every=4",
              # validation scores the whole valid set (ctc_tiny caps it at 2 batches), so
              # evaluate's score of the best checkpoint can be compared with it
              "train.max_valid_batches=0",
              # one utterance a batch: tiny's GroupNorm encoder makes padded batches differ, and
              # evaluate scores group-norm models one utterance at a time
              "data.max_sentences=1"]
    one_go, resumed = tmp_path / "one_go", tmp_path / "resumed"
    train_script(*common, f"run_dir={one_go}")
    train_script(*common, f"run_dir={resumed}", "train.stop_at_update=3")
    assert load_checkpoint(resumed / ckpt.LAST)["num_updates"] == 3
    train_script(*common, f"run_dir={resumed}")

    a, b = records(one_go, "train"), records(resumed, "train")
    assert [r["num_updates"] for r in b] == list(range(1, 9))
    exact = ("loss", "loss_per_token", "blank_frac", "tokens", "lr", "grad_norm", "encoder_frozen")
    assert [{k: r[k] for k in exact} for r in a] == [{k: r[k] for k in exact} for r in b]
    assert [r["encoder_frozen"] for r in a] == [1.0, 1.0] + [0.0] * 6  # ctc_tiny freezes 2 updates
    va, vb = records(one_go, "valid"), records(resumed, "valid")
    # Every 4 updates, at the end of epoch 1 (update 5: fairseq's validate_interval 1), and
    # the interrupted run also where it stopped (update 3).
    assert [r["num_updates"] for r in va] == [4, 5, 8] and [r["num_updates"] for r in vb] == [3, 4, 5, 8]
    assert [r["wer"] for r in va] == [r["wer"] for r in vb[1:]]
    sa, sb = load_checkpoint(one_go / ckpt.LAST), load_checkpoint(resumed / ckpt.LAST)
    assert_same_weights(sa["model"], sb["model"])

    result = evaluate_ctc(one_go / ckpt.BEST, subset="valid")
    best = min(r["wer"] for r in va)
    assert result.utterances == 4 and len(result.hypotheses) == 4
    assert all(r["utterances"] == 4 for r in va)  # the same 4 utterances on both sides
    assert result.wer == pytest.approx(best)  # the best checkpoint scores what validation logged
    with pytest.raises(FileNotFoundError, match=r"no subset 'test_other'.* the labelled subsets there are: train, valid"):
        evaluate_ctc(one_go / ckpt.BEST, subset="test_other")


def test_architecture_from_a_ctc_checkpoint_matches(make_ctc_cfg, tmp_path: Path) -> None:
    """A CTC run's own checkpoint as `task.init`: its encoder, a fresh head."""
    cfg = make_ctc_cfg("optim.max_update=1", "train.validate_every=0", "data.valid_subset=",
                       run_dir=tmp_path / "first")
    make_trainer(cfg).fit()
    second = make_ctc_cfg(f"task.init={tmp_path / 'first' / ckpt.LAST}", run_dir=tmp_path / "second")
    task = build_task(second)
    task.prepare()
    assert architecture(second.model) == architecture(cfg.model)
    model = task.build_model()
    saved = load_checkpoint(tmp_path / "first" / ckpt.LAST)["model"]
    assert torch.equal(model.wav2vec2.encoder.layers[0].fc1.weight, saved["wav2vec2.encoder.layers.0.fc1.weight"])
    assert isinstance(task, CtcTask) and isinstance(task.dictionary, Dictionary)


@pytest.mark.reference
def test_init_from_a_transformers_directory(make_ctc_cfg, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from wav2vec2.interop.hf import config_to_hf, state_dict_to_hf
    from wav2vec2.model.wav2vec2 import Wav2Vec2Model

    cfg = tiny()
    cfg.transformer.num_layers = 3
    torch.manual_seed(1)
    ours = Wav2Vec2Model(cfg)
    hf = transformers.Wav2Vec2ForPreTraining(config_to_hf(cfg))
    hf.load_state_dict(state_dict_to_hf(ours.state_dict(), cfg))
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False}))

    task = build_task(make_ctc_cfg(f"task.init={tmp_path / 'hf'}"))
    task.prepare()
    assert task.cfg.model.transformer.num_layers == 3
    model = task.build_model()
    assert torch.equal(model.wav2vec2.encoder.layers[2].fc2.weight, ours.encoder.layers[2].fc2.weight)
    with pytest.raises(ValueError, match="normalize"):
        build_task(make_ctc_cfg(f"task.init={tmp_path / 'hf'}", "data.normalize=true")).prepare()


def test_best_checkpoint_metric_is_configurable(make_ctc_cfg) -> None:
    assert build_task(make_ctc_cfg()).best_metric == "wer"  # fairseq's recipes
    task = build_task(make_ctc_cfg("task.best_metric=cer"))
    assert task.best_metric == "cer" and not task.higher_is_better
    with pytest.raises(ValueError, match="task.best_metric"):
        build_task(make_ctc_cfg("task.best_metric=accuracy"))


def test_init_from_a_fairseq_checkpoint(make_ctc_cfg, tmp_path: Path) -> None:
    """A fairseq wav2vec 2.0 pretraining checkpoint as task.init (written in fairseq's layout
    by our exporter; tests/interop/test_fairseq.py checks that layout against fairseq's)."""
    from wav2vec2.interop.fairseq import export_fairseq
    from wav2vec2.model.wav2vec2 import Wav2Vec2Model

    cfg = tiny()
    cfg.transformer.num_layers = 3
    torch.manual_seed(2)
    source = Wav2Vec2Model(cfg)
    export_fairseq(source, tmp_path / "fairseq.pt", normalize=False)
    task = build_task(make_ctc_cfg(f"task.init={tmp_path / 'fairseq.pt'}"))
    task.prepare()
    assert task.cfg.model.transformer.num_layers == 3
    model = task.build_model()
    assert torch.equal(model.wav2vec2.encoder.layers[2].fc1.weight, source.encoder.layers[2].fc1.weight)
    assert torch.equal(model.wav2vec2.mask_emb, source.mask_emb)
