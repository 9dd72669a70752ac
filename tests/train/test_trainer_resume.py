"""The tiny preset through the real entry point, and exact resume across a process exit."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from wav2vec2.files import load_checkpoint

from helpers import assert_same_weights, records

LOGGED = {
    "loss", "contrastive", "diversity", "feature_penalty", "accuracy", "prob_perplexity",
    "code_perplexity", "temperature", "lr", "grad_norm", "masked_frac", "utterances",
    "masked_frames", "audio_sec_per_sec", "data_wait_sec",
}
# What must match bit for bit between an uninterrupted and a resumed run (not timings).
EXACT = ("loss", "contrastive", "diversity", "feature_penalty", "accuracy", "prob_perplexity",
         "code_perplexity", "temperature", "lr", "grad_norm", "masked_frames", "utterances")


def test_tiny_config_runs_end_to_end(tiny_corpus: Path, tmp_path: Path, train_script) -> None:
    run = tmp_path / "run"
    proc = train_script(f"data.manifest_dir={tiny_corpus}", f"run_dir={run}")
    train = records(run)
    assert [r["num_updates"] for r in train] == list(range(1, 11))
    assert LOGGED <= set(train[0])
    assert all(math.isfinite(r["loss"]) for r in train)
    assert [r["lr"] for r in train[:3]] == [0.0, 1e-3 / 2, 1e-3]  # warmup 2: 0 (as fairseq), peak/2, peak
    valid = records(run, "valid")
    assert [r["num_updates"] for r in valid] == [5, 10] and {"loss", "best_loss"} <= set(valid[0])
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "tb", "checkpoint_last.pt", "checkpoint_best.pt",
            "checkpoint_00000005.pt", "checkpoint_00000010.pt"} <= names
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())
    assert "ETA" in proc.stderr + proc.stdout  # the console progress line
    state = load_checkpoint(run / "checkpoint_last.pt")
    assert state["num_updates"] == 10 and state["config"]["run_dir"] == str(run)
    assert state["config"]["model"]["transformer"]["embed_dim"] == 48


def test_resume_is_bit_exact(tiny_corpus: Path, tmp_path: Path, train_script) -> None:
    """6 updates in one go == 3 updates, exit, resume, 3 updates: same losses, same weights.

    update_freq 2 over ~7 batches per epoch puts the stop mid-epoch and crosses an epoch
    boundary afterwards; a fast temperature decay makes the Gumbel temperature matter; a
    DataLoader worker prefetches past the stop; dropout and layerdrop draw from the RNG.
    """
    common = [f"data.manifest_dir={tiny_corpus}", "optim.max_update=6", "optim.update_freq=2",
              "model.quantizer.temp_decay=0.9", "data.num_workers=1", "checkpoint.save_every=100",
              "logging.tensorboard=false"]
    one_go, resumed = tmp_path / "one_go", tmp_path / "resumed"
    train_script(*common, f"run_dir={one_go}")
    train_script(*common, f"run_dir={resumed}", "train.stop_at_update=3")
    mid = load_checkpoint(resumed / "checkpoint_last.pt")
    assert mid["num_updates"] == 3
    assert 0 < mid["data"]["consumed"] < mid["data"]["sampler"]["num_batches"]  # mid-epoch
    train_script(*common, f"run_dir={resumed}")

    a, b = records(one_go), records(resumed)
    assert [r["num_updates"] for r in b] == list(range(1, 7))
    for ra, rb in zip(a, b):
        assert {k: ra[k] for k in EXACT} == {k: rb[k] for k in EXACT}
    assert len({r["temperature"] for r in a}) == 6
    sa, sb = load_checkpoint(one_go / "checkpoint_last.pt"), load_checkpoint(resumed / "checkpoint_last.pt")
    assert sa["data"]["epoch"] == sb["data"]["epoch"] == 2
    assert_same_weights(sa["model"], sb["model"])
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert torch.equal(sa["rng"][0]["torch"], sb["rng"][0]["torch"])
