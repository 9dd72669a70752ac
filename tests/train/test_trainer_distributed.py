"""Two gloo ranks x update_freq 2 == one process x update_freq 4, after 3 updates, and
across an epoch's end where the two ranks' shares are uneven.

Masks, negatives and Gumbel noise are seeded per global batch position, so they do not
depend on which rank processes a batch; dropout (per-rank RNG) is switched off here.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.multiprocessing as mp

from wav2vec2.files import load_checkpoint
from wav2vec2.config import TrainConfig
from wav2vec2.train import distributed as dist_utils

from helpers import REPO, TRAIN_SCRIPT, free_port, make_trainer, script_env

NO_DROPOUT = ["model.transformer.dropout=0", "model.transformer.attention_dropout=0",
              "model.transformer.layerdrop=0", "model.dropout_input=0", "model.dropout_features=0"]
# ~1 clip per batch: 3 updates x 4 batches stay inside epoch 1 for both layouts.
SETUP = ["optim.max_update=3", "optim.warmup_updates=1", "optim.lr=0.005", "data.max_tokens=16000",
         "checkpoint.save_every=100", "train.validate_every=0", "data.valid_subset=", *NO_DROPOUT]


def _worker(rank: int, world_size: int, port: int, cfg: TrainConfig, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    trainer = make_trainer(cfg)
    real_step, stand_ins = trainer.train_step, []

    def step(micro, *, stand_in=False, **kwargs):
        stand_ins.append(stand_in)
        return real_step(micro, stand_in=stand_in, **kwargs)

    trainer.train_step = step
    trainer.fit()
    Path(f"{out}.stand_ins{rank}").write_text(" ".join(str(i + 1) for i, s in enumerate(stand_ins) if s))
    if rank == 0:
        torch.save({k: v.clone() for k, v in trainer.model.state_dict().items()}, out)
    dist_utils.destroy()


def _one_process_and_two_ranks(make_cfg, setup: list[str], tmp_path: Path) -> tuple[TrainConfig, dict, dict]:
    """Train 1 process x update_freq 4 and 2 gloo ranks x update_freq 2 on the same batches;
    returns the first config and both final state dicts."""
    single = make_cfg(*setup, "optim.update_freq=4", run_dir=tmp_path / "single")
    double = make_cfg(*setup, "optim.update_freq=2", run_dir=tmp_path / "double")
    out1, out2 = str(tmp_path / "single.pt"), str(tmp_path / "double.pt")
    _worker(0, 1, 0, single, out1)
    mp.spawn(_worker, args=(2, free_port(), double, out2), nprocs=2, join=True)
    return single, torch.load(out1), torch.load(out2)


def test_two_ranks_equal_one_process_on_the_same_batches(make_tiny_cfg, tmp_path: Path) -> None:
    single, a, b = _one_process_and_two_ranks(make_tiny_cfg, SETUP, tmp_path)
    from wav2vec2.model.wav2vec2 import Wav2Vec2Model

    torch.manual_seed(single.seed)
    init = Wav2Vec2Model(single.model).state_dict()
    moved = 0
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
        moved += not torch.equal(tensor, init[name])
    assert moved > len(a) // 2  # the updates did change the weights


# A small lr: CTC's large per-utterance gradients make float summation-order noise of the
# 4-way vs 2x2-way sums visible in the weights at pretraining's lr of 0.005. 17 batches per
# epoch: 9 for rank 0 and 8 for rank 1, so update 5 (the epoch's last, one batch) is rank
# 0's ninth batch and a zero-weight stand-in on rank 1 (fairseq's dummy batch); update 6 is
# in epoch 2.
CTC_SETUP = ["optim.max_update=6", "optim.lr=0.0002", "data.max_tokens=24000", "checkpoint.save_every=100",
             "train.validate_every=0", "data.valid_subset=", "task.freeze_finetune_updates=1",
             "model.transformer.dropout=0", "model.transformer.activation_dropout=0", "model.transformer.layerdrop=0",
             # k_proj's bias has an exactly-zero true gradient (softmax ignores a shift shared by all
             # keys); fine-tuning's Adam eps of 1e-8 would turn its rounding noise into +-lr steps.
             "optim.eps=1e-6"]


def test_two_ranks_equal_one_process_for_ctc(make_ctc_cfg, tmp_path: Path) -> None:
    """The same for CTC fine-tuning: sample size = utterances, a frozen first update, masks,
    and an epoch's end where rank 1 has no batch left and runs a stand-in."""
    _, a, b = _one_process_and_two_ranks(make_ctc_cfg, CTC_SETUP, tmp_path)
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    from wav2vec2.train import checkpoint as ckpt

    stand_ins = [(tmp_path / f"double.pt.stand_ins{rank}").read_text() for rank in (0, 1)]
    assert stand_ins == ["", "5"] and (tmp_path / "single.pt.stand_ins0").read_text() == ""
    state = load_checkpoint(tmp_path / "double" / ckpt.LAST)
    assert state["task"] == "ctc" and state["world_size"] == 2 and state["num_updates"] == 6
    assert state["data"]["epoch"] == 2


def test_torchrun_through_the_entry_point(tiny_corpus: Path, tmp_path: Path) -> None:
    """`torchrun --nproc_per_node=2 scripts/train.py ...` with the tiny preset as is
    (layerdrop > 0, so DDP runs with find_unused_parameters)."""
    import subprocess
    import sys

    from wav2vec2.train import checkpoint as ckpt

    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
         TRAIN_SCRIPT, f"data.manifest_dir={tiny_corpus}", f"run_dir={run}", "optim.max_update=4",
         "logging.tensorboard=false"],
        env=script_env(), cwd=REPO, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = load_checkpoint(run / ckpt.LAST)
    assert state["num_updates"] == 4 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # per-rank dropout streams
