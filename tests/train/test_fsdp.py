"""FSDP2 (`distributed.strategy=fsdp`) on CPU/gloo: two sharded ranks equal two DDP ranks and
one process on the same batches, for every logged value, in pretraining and CTC; a sharded
run stopped and resumed equals an uninterrupted one bit for bit; its checkpoint is a DDP
checkpoint (same keys, same optimizer layout), so either strategy resumes the other's.

TOLERANCE is what the three layouts may differ by: float sums in another order (the sharded
gradient norm is a sum of per-rank partial sums; a DDP bucket is all-reduced where FSDP
reduce-scatters). Measured on the recording machine: see the docstring of
`test_fsdp_equals_ddp_and_one_process`.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from wav2vec2.files import load_checkpoint
from wav2vec2.train import checkpoint as ckpt, distributed as dist_utils

from helpers import free_port, make_trainer, records, torchrun_resumes_exactly

RTOL, ATOL = 1e-5, 1e-6
NOT_COMPARED = {"split", "num_updates", "time", "data_wait_sec", "audio_sec_per_sec",  # wall-clock
                "device_audio_sec_per_sec", "mfu"}
NO_DROPOUT = ["model.transformer.dropout=0", "model.transformer.attention_dropout=0",
              "model.transformer.layerdrop=0", "model.dropout_input=0", "model.dropout_features=0"]
# 17 clips, 15 batches an epoch: at 2 ranks x update_freq 2, update 4 is the epoch's last,
# where rank 0 has two batches and rank 1 one: under FSDP rank 1 pads with a stand-in.
PRETRAIN = ["optim.max_update=6", "optim.warmup_updates=1", "optim.lr=0.005", "data.max_tokens=24000",
            "data.min_sample_size=9000",
            "checkpoint.save_every=3", "train.validate_every=3", "train.max_valid_batches=0", "logging.log_every=1",
            *NO_DROPOUT]
# As tests/train/test_trainer_distributed.py's CTC_SETUP (why the small lr and eps there), validating.
CTC = ["optim.max_update=6", "optim.lr=0.0002", "data.max_tokens=24000", "checkpoint.save_every=3",
       "train.validate_every=3", "train.max_valid_batches=0", "task.freeze_finetune_updates=1",
       "model.transformer.dropout=0",
       "model.transformer.activation_dropout=0", "model.transformer.layerdrop=0", "optim.eps=1e-6",
       "logging.log_every=1"]


def _worker(rank: int, world_size: int, port: int, cfg, paddings: str | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    trainer = make_trainer(cfg)
    real_step, padded = trainer.train_step, []

    def step(micro, *, stand_in=False, padding=0):
        padded.append(padding)
        return real_step(micro, stand_in=stand_in, padding=padding)

    trainer.train_step = step
    trainer.fit()
    if paddings:
        Path(f"{paddings}{rank}").write_text(" ".join(map(str, padded)))
    dist_utils.destroy()


def _run(cfg, world_size: int, paddings: str | None = None) -> None:
    if world_size == 1:
        _worker(0, 1, 0, cfg, paddings)
    else:
        mp.spawn(_worker, args=(world_size, free_port(), cfg, paddings), nprocs=world_size, join=True)


def _assert_logs_close(a: Path, b: Path) -> float:
    """Every logged value of runs `a` and `b` (train and valid rows) within tolerance; returns
    the largest relative difference seen."""
    worst = 0.0
    for split in ("train", "valid"):
        rows_a, rows_b = records(a, split), records(b, split)
        assert [r["num_updates"] for r in rows_a] == [r["num_updates"] for r in rows_b], split
        assert rows_a, f"{a} logged no {split} rows"
        for ra, rb in zip(rows_a, rows_b):
            assert ra.keys() == rb.keys(), (split, ra.keys() ^ rb.keys())
            for key in ra.keys() - NOT_COMPARED:
                x, y = ra[key], rb[key]
                assert math.isclose(x, y, rel_tol=RTOL, abs_tol=ATOL), (split, ra["num_updates"], key, x, y)
                worst = max(worst, abs(x - y) / max(abs(x), abs(y), 1e-30))
    return worst


def _assert_weights_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, rtol=RTOL, atol=ATOL, msg=name)


def _three_layouts(make_cfg, setup: list[str], tmp_path: Path, *, fsdp_only: tuple[str, ...]) -> dict[str, Path]:
    runs = {"single": tmp_path / "single", "ddp": tmp_path / "ddp", "fsdp": tmp_path / "fsdp"}
    _run(make_cfg(*setup, "optim.update_freq=4", run_dir=runs["single"]), 1)
    _run(make_cfg(*setup, "optim.update_freq=2", run_dir=runs["ddp"]), 2)
    _run(make_cfg(*setup, "optim.update_freq=2", "distributed.strategy=fsdp", *fsdp_only, run_dir=runs["fsdp"]), 2,
         paddings=str(tmp_path / "paddings"))
    return runs


# Pretraining's sharded run also recomputes activations (Transformer layers and conv blocks):
# checkpointing composes with FSDP's unshard in backward and changes no number.
CHECKPOINTING = ("model.transformer.activation_checkpointing=true", "model.feature_encoder.activation_checkpointing=true")


@pytest.mark.parametrize(("task", "padded", "fsdp_only"), [("pretrain", 4, CHECKPOINTING), ("ctc", 5, ())])
def test_fsdp_equals_ddp_and_one_process(task: str, padded: int, fsdp_only: tuple[str, ...], make_tiny_cfg,
                                         make_ctc_cfg, tmp_path: Path) -> None:
    """Largest relative difference of a logged value (train and valid rows), measured on the
    2-core box: pretraining 8.4e-8 against DDP, 3.0e-7 against one process; CTC 1.8e-7 and
    3.3e-6. The tolerance, rtol 1e-5 (atol 1e-6), leaves a margin of 3 to 100."""
    make_cfg, setup = (make_tiny_cfg, PRETRAIN) if task == "pretrain" else (make_ctc_cfg, CTC)
    runs = _three_layouts(make_cfg, setup, tmp_path, fsdp_only=fsdp_only)
    worst_ddp = _assert_logs_close(runs["ddp"], runs["fsdp"])
    worst_single = _assert_logs_close(runs["single"], runs["fsdp"])
    print(f"\n{task}: largest relative difference of a logged value, fsdp vs ddp {worst_ddp:.2g}, "
          f"vs one process {worst_single:.2g}")
    states = {name: load_checkpoint(run / ckpt.LAST) for name, run in runs.items()}
    _assert_weights_close(states["ddp"]["model"], states["fsdp"]["model"])
    _assert_weights_close(states["single"]["model"], states["fsdp"]["model"])
    # The same file as DDP's: full tensors, torch.optim's layout (parameters by index).
    ddp_opt, fsdp_opt = states["ddp"]["optimizer"], states["fsdp"]["optimizer"]
    assert fsdp_opt["param_groups"] == ddp_opt["param_groups"]
    assert fsdp_opt["state"].keys() == ddp_opt["state"].keys()
    for index, moments in ddp_opt["state"].items():
        for key, value in moments.items():
            torch.testing.assert_close(fsdp_opt["state"][index][key], value, rtol=RTOL, atol=ATOL)
    paddings = [(tmp_path / f"paddings{rank}").read_text().split() for rank in (0, 1)]
    assert paddings[0] == ["0"] * 6
    # The epoch's last update: rank 1 has one batch fewer than rank 0 and pads with a stand-in
    # (pretraining: after its one batch; CTC: it has none, the stand-in is fairseq's dummy batch).
    assert paddings[1] == ["1" if u == padded else "0" for u in range(1, 7)], paddings


def test_fsdp_resumes_bit_exactly_and_ddp_resumes_its_checkpoint(make_tiny_cfg, tmp_path: Path) -> None:
    """Stop at update 3 and resume to 6 under FSDP: the weights and every logged loss equal an
    uninterrupted FSDP run's, bit for bit. The same checkpoint resumed under DDP ends within
    tolerance of it (the layouts sum floats in other orders); in one process it resumes too
    (from the next epoch: a data position of 2 ranks means nothing to one)."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    fsdp = ["distributed.strategy=fsdp", "optim.update_freq=2"]
    _run(make_tiny_cfg(*PRETRAIN, *fsdp, run_dir=straight), 2)
    _run(make_tiny_cfg(*PRETRAIN, *fsdp, "train.stop_at_update=3", run_dir=stopped), 2)
    for other in ("ddp", "one_process"):
        shutil.copytree(stopped, tmp_path / other)
    _run(make_tiny_cfg(*PRETRAIN, *fsdp, run_dir=stopped), 2)
    a, b = load_checkpoint(straight / ckpt.LAST), load_checkpoint(stopped / ckpt.LAST)
    assert a["num_updates"] == b["num_updates"] == 6
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for index, moments in a["optimizer"]["state"].items():
        for key, value in moments.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), (index, key)
    assert [r["loss"] for r in records(straight)] == [r["loss"] for r in records(stopped)]

    _run(make_tiny_cfg(*PRETRAIN, "optim.update_freq=2", run_dir=tmp_path / "ddp"), 2)
    _run(make_tiny_cfg(*PRETRAIN, "optim.update_freq=4", run_dir=tmp_path / "one_process"), 1)
    _assert_weights_close(a["model"], load_checkpoint(tmp_path / "ddp" / ckpt.LAST)["model"])
    resumed = records(tmp_path / "one_process")
    assert [r["num_updates"] for r in resumed] == list(range(1, 7))  # 1-3 from the FSDP run
    assert load_checkpoint(tmp_path / "one_process" / ckpt.LAST)["world_size"] == 1


def test_torchrun_fsdp_through_the_entry_point_resumes_exactly(tiny_corpus: Path, tmp_path: Path) -> None:
    """`torchrun --nproc_per_node=2 scripts/train.py ... distributed.strategy=fsdp` with the
    tiny preset as is (LayerDrop 0.1: shared draws), stopped at update 2 and rerun to 4,
    equals an uninterrupted run bit for bit."""
    a, b = torchrun_resumes_exactly(tmp_path, f"data.manifest_dir={tiny_corpus}", "optim.max_update=4",
                                    "logging.tensorboard=false", "distributed.strategy=fsdp")
    assert a["num_updates"] == b["num_updates"] == 4 and a["world_size"] == 2
    assert a["config"]["distributed"]["strategy"] == "fsdp" and a["config"]["model"]["transformer"]["layerdrop"] > 0


BF16_RTOL = 1e-2


def test_fsdp_bf16_mixed_precision_tracks_ddp_bf16(make_tiny_cfg, tmp_path: Path) -> None:
    """precision.dtype=bf16: DDP autocasts fp32 weights; FSDP all-gathers the Transformer
    layers' weights in bf16 (its MixedPrecisionPolicy) under the same autocast. The layers'
    LayerNorm weights are then rounded to bf16 and their unsharded gradients come out in
    bf16, so the runs drift apart by bf16 rounding: update 1 and 2 agree exactly, and the
    losses (train and valid) stay within 4.2e-3 relative through update 6 (measured on the
    2-core box), under BF16_RTOL. Accuracy is a count of frames and flips by one frame
    (1/90 here), so it is not compared."""
    for name, extra in (("ddp", ()), ("fsdp", ("distributed.strategy=fsdp",))):
        _run(make_tiny_cfg(*PRETRAIN, "optim.update_freq=2", "precision.dtype=bf16", *extra, run_dir=tmp_path / name), 2)
    worst = 0.0
    for split in ("train", "valid"):
        for a, b in zip(records(tmp_path / "ddp", split), records(tmp_path / "fsdp", split), strict=True):
            for key in ("loss", "contrastive", "diversity"):
                assert math.isclose(a[key], b[key], rel_tol=BF16_RTOL), (split, a["num_updates"], key, a[key], b[key])
                worst = max(worst, abs(a[key] - b[key]) / abs(a[key]))
            if a["num_updates"] <= 2:
                assert a["loss"] == b["loss"]
    print(f"\nbf16: largest relative difference of a logged loss, fsdp vs ddp {worst:.2g}")
