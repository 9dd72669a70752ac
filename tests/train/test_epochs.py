"""A labelled set smaller than one update (fairseq's 10-minute recipe on 10 minutes): under
the recipes' default an update never spans an epoch boundary, so each update is the whole
epoch, every utterance once; and a run stopped and resumed there is bit-exact."""

from __future__ import annotations

from pathlib import Path

import torch

from wav2vec2.files import load_checkpoint
from wav2vec2.train import checkpoint as ckpt

from helpers import assert_same_weights, make_trainer, records

# 20 utterances in 9 batches per epoch: update_freq 16 asks for more than the set holds.
SMALL_SET = ["optim.update_freq=16", "train.validate_every=0", "data.valid_subset=", "checkpoint.save_every=100"]
EXACT = ("loss", "loss_per_token", "blank_frac", "tokens", "encoder_frozen", "utterances", "lr", "grad_norm")


def _utterances_per_update(make_ctc_cfg, *overrides: str) -> list[list[int]]:
    """Train 3 updates of ctc_tiny; the utterance ids each update trained on (stand-ins aside)."""
    trainer = make_trainer(make_ctc_cfg(*SMALL_SET, "optim.max_update=3", *overrides))
    assert len(trainer.stream.sampler.epoch_batches(1)) < 16
    seen = []
    real_step = trainer.train_step

    def step(micro, *, stand_in=False, **kwargs):  # kwargs: FSDP's padding forwards
        seen.append([] if stand_in else [int(i) for _, _, batch in micro for i in batch["id"]])
        return real_step(micro, stand_in=stand_in, **kwargs)

    trainer.train_step = step
    trainer.fit()
    return seen


def test_an_update_larger_than_the_set_is_one_epoch_each_utterance_once(make_ctc_cfg) -> None:
    assert make_ctc_cfg().optim.updates_span_epochs is False  # the schema's default, which the presets keep
    updates = _utterances_per_update(make_ctc_cfg)
    assert len(updates) == 3
    for ids in updates:
        assert sorted(ids) == list(range(20))  # the whole set, none twice


def test_with_updates_spanning_epochs_an_update_repeats_utterances(make_ctc_cfg) -> None:
    """The option's other value (this project before #20): 16 batches, nearly two epochs."""
    updates = _utterances_per_update(make_ctc_cfg, "optim.updates_span_epochs=true")
    assert all(len(ids) > len(set(ids)) for ids in updates)


def test_stopped_and_resumed_between_whole_epoch_updates_is_bit_exact(labelled_corpus: Path, tmp_path: Path,
                                                                      train_script) -> None:
    """4 updates in one go == 2, exit, resume, 2; through the entry point, with a DataLoader
    worker, LayerDrop and activation dropout drawing from the RNG and masks from the generator."""
    common = ["--config-name", "ctc_tiny", f"data.manifest_dir={labelled_corpus}", *SMALL_SET,
              "optim.max_update=4", "task.freeze_finetune_updates=1", "data.num_workers=1",
              "logging.tensorboard=false"]
    one_go, resumed = tmp_path / "one_go", tmp_path / "resumed"
    train_script(*common, f"run_dir={one_go}")
    train_script(*common, f"run_dir={resumed}", "train.stop_at_update=2")
    mid = load_checkpoint(resumed / ckpt.LAST)
    assert (mid["num_updates"], mid["data"]["epoch"], mid["data"]["consumed"]) == (2, 3, 0)  # 2 whole epochs
    train_script(*common, f"run_dir={resumed}")

    a, b = records(one_go), records(resumed)
    assert [r["num_updates"] for r in b] == [1, 2, 3, 4] and [r["utterances"] for r in a] == [20] * 4
    for ra, rb in zip(a, b):
        assert {k: ra[k] for k in EXACT} == {k: rb[k] for k in EXACT}
    sa, sb = load_checkpoint(one_go / ckpt.LAST), load_checkpoint(resumed / ckpt.LAST)
    assert sa["data"] == sb["data"] and sa["data"]["epoch"] == 5
    assert_same_weights(sa["model"], sb["model"])
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert torch.equal(sa["rng"][0]["torch"], sb["rng"][0]["torch"])
