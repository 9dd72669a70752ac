"""Tar shards: packing a manifest (whole files and segments) into WebDataset-layout tars with
an index, reading them back as the manifest's items, batching shard by shard, and resuming
exactly mid-epoch through the trainer."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from wav2vec2.data import (
    Manifest, RawAudioDataset, Row, ShardBatchSampler, ShardedAudioDataset, build_dataloader, read_rows, write_rows,
    read_index, write_shards,
)
from wav2vec2.data.shards import main as shards_main
from wav2vec2.files import load_checkpoint
from wav2vec2.train import checkpoint as ckpt

from helpers import make_trainer, records, torchrun_resumes_exactly


@pytest.fixture
def packed(tiny_corpus: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The tiny corpus's train manifest plus two segment rows, and its shards (~4 clips each)."""
    manifest = read_rows(tiny_corpus / "train.tsv")
    manifest.rows += [Row(manifest.rows[0].path, 4000, start=1000), Row(manifest.rows[1].path, 6000, start=0)]
    write_rows(tmp_path / "train.tsv", manifest)
    write_shards(tmp_path / "train.tsv", tmp_path / "shards", shard_mb=0.12, seed=3)
    return tmp_path / "train.tsv", tmp_path / "shards"


def test_shards_hold_the_manifests_items_in_webdataset_layout(packed) -> None:
    manifest_path, shards = packed
    files = RawAudioDataset(manifest_path)
    sharded = ShardedAudioDataset(shards)
    tars = sorted(shards.glob("shard-*.tar"))
    assert len(tars) >= 4 and len(sharded) == len(files) == 22
    names = [m.name for t in tars for m in tarfile.open(t).getmembers()]
    assert names == [f"{i:09d}.flac" for i in range(22)]  # key.ext, keys in packing order
    # Packed in a seeded shuffled order: each sharded item is one of the manifest's, samples equal.
    by_source = {files.describe(i).split(" (")[0] + ("" if files.starts[i] < 0 else f"@{files.starts[i]}"): i
                 for i in range(len(files))}
    for i in range(len(sharded)):
        j = by_source[sharded.index.sources[sharded.keep[i]]]
        torch.testing.assert_close(sharded[i]["source"], files[j]["source"], rtol=0, atol=0)
    assert sharded.num_opens <= len(tars) + 22 // 4 and sharded.num_seeks == 22


def test_batches_come_from_a_ranks_own_shards_and_cover_the_epoch(packed) -> None:
    _, shards = packed
    ds = ShardedAudioDataset(shards)
    kw = dict(max_tokens=48000, required_batch_size_multiple=1, seed=5, num_replicas=2, drop_last=False)
    samplers = [ShardBatchSampler(ds.shard_of, ds.sizes, shuffle_buffer=6, rank=r, **kw) for r in (0, 1)]
    batches = [b.tolist() for b in samplers[0].epoch_batches(1)]
    assert [b.tolist() for b in samplers[1].epoch_batches(1)] == batches  # every rank computes the same plan
    for rank, sampler in enumerate(samplers):
        mine = [b for p, b in sampler.iter_with_position()]
        assert mine == batches[rank::2]
        shards_read = {int(ds.shard_of[i]) for b in mine for i in b}
        other = {int(ds.shard_of[i]) for b in batches[1 - rank::2] for i in b}
        assert shards_read and not shards_read & other  # no shard read by both ranks
        assert all(len(b) * ds.sizes[b].max() <= 48000 for b in mine)
    used = sorted(i for b in batches for i in b)
    assert len(used) == len(set(used)) and len(used) >= len(ds) - 6  # an uneven rank's extra batches wait
    assert [b.tolist() for b in samplers[0].epoch_batches(2)] != batches  # another shard order, other windows


def test_sharded_pretraining_resumes_exactly_mid_epoch(packed, make_tiny_cfg, tmp_path: Path) -> None:
    _, shards = packed
    common = ["optim.max_update=6", "data.num_workers=1", f"data.train_shards={shards}", "data.shuffle_buffer=6",
              "checkpoint.save_every=100", "train.validate_every=0", "logging.log_every=1"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    make_trainer(make_tiny_cfg(*common, run_dir=straight)).fit()
    trainer = make_trainer(make_tiny_cfg(*common, "train.stop_at_update=3", run_dir=stopped))
    trainer.fit()
    assert 0 < trainer.stream.consumed < len(trainer.stream.sampler.epoch_batches(1))  # stopped mid-epoch
    make_trainer(make_tiny_cfg(*common, run_dir=stopped)).fit()
    a, b = load_checkpoint(straight / ckpt.LAST), load_checkpoint(stopped / ckpt.LAST)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert [r["loss"] for r in records(straight)] == [r["loss"] for r in records(stopped)]


def test_a_truncated_shard_is_a_bad_file_naming_the_member(packed) -> None:
    _, shards = packed
    tar = sorted(shards.glob("shard-*.tar"))[-1]
    tar.write_bytes(tar.read_bytes()[:2000])
    ds = ShardedAudioDataset(shards)
    last = [i for i in range(len(ds)) if ds.index.shards[ds.shard_of[i]] == tar.name][-1]
    with pytest.raises(ValueError, match=rf"{tar.name}:\d{{9}} \(.*\): shard ends after"):
        ds[last]


def test_a_ranks_state_resumes_every_rank_mid_epoch(packed) -> None:
    _, shards = packed
    ds = ShardedAudioDataset(shards)
    kw = dict(max_tokens=40000, required_batch_size_multiple=1, seed=2, num_replicas=2, drop_last=False)
    rank0, rank1 = (ShardBatchSampler(ds.shard_of, ds.sizes, shuffle_buffer=5, rank=r, **kw) for r in (0, 1))
    full = list(rank1)
    assert len(rank0) == len(rank1) == len(full) >= 3  # ranks kept even
    rank0.mark_consumed(2)
    rank1.load_state_dict(rank0.state_dict())
    assert list(rank1) == full[2:]
    other = ShardBatchSampler(ds.shard_of, ds.sizes, shuffle_buffer=7, rank=1, **kw)  # other windows
    if len(other.epoch_batches(1)) != len(rank0.epoch_batches(1)):
        with pytest.raises(ValueError, match="batching settings changed"):
            other.load_state_dict(rank0.state_dict())


def test_workers_deliver_what_the_main_process_reads(packed) -> None:
    _, shards = packed
    ds = ShardedAudioDataset(shards)
    sampler = ShardBatchSampler(ds.shard_of, ds.sizes, shuffle_buffer=8, max_tokens=40000,
                                required_batch_size_multiple=1, seed=1)
    inline = [b["source"] for b in build_dataloader(ds, sampler, seed=1, num_workers=0)]
    pooled = [b["source"] for b in build_dataloader(ds, sampler, seed=1, num_workers=2)]
    assert len(inline) == len(pooled) == len(sampler)
    for a, b in zip(inline, pooled):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_writer_cli_and_errors_name_the_file(packed, tmp_path: Path, capsys) -> None:
    manifest_path, _ = packed
    assert shards_main([str(manifest_path), str(tmp_path / "cli"), "--shard-mb", "0.2", "--no-progress"]) == 0
    assert "22 utterances" in capsys.readouterr().out
    assert shards_main([str(manifest_path), str(manifest_path), str(tmp_path / "two"), "--no-progress"]) == 0
    assert "44 utterances" in capsys.readouterr().out  # several manifests packed together
    assert len(read_index(tmp_path / "cli").shards) >= 2
    with pytest.raises(FileNotFoundError, match=f"no index.tsv in {tmp_path / 'empty'}"):
        ShardedAudioDataset(tmp_path / "empty")
    index = tmp_path / "cli" / "index.tsv"
    index.write_text(index.read_text() + "shard-000000.tar\tbroken\n")
    with pytest.raises(ValueError, match=r"index.tsv:24: expected 6 tab-separated columns"):
        read_index(tmp_path / "cli")
    with pytest.raises(ValueError, match="1 shards for 2 ranks"):
        ShardBatchSampler(np.zeros(4, dtype=np.int64), np.full(4, 16000), shuffle_buffer=4, max_tokens=64000,
                          num_replicas=2, rank=0)


@pytest.mark.slow  # 35 s: three two-rank launches
def test_torchrun_fsdp_on_shards_resumes_exactly(packed, tiny_corpus: Path, tmp_path: Path) -> None:
    """`torchrun --nproc_per_node=2 scripts/train.py ... data.train_shards=DIR
    distributed.strategy=fsdp`: each rank reads its own shards (two workers each), and a run
    stopped at update 2 and rerun to 5 equals an uninterrupted one bit for bit."""
    _, shards = packed
    a, b = torchrun_resumes_exactly(
        tmp_path, f"data.manifest_dir={tiny_corpus}", "optim.max_update=5", f"data.train_shards={shards}",
        "data.shuffle_buffer=8", "data.num_workers=2", "logging.tensorboard=false", "distributed.strategy=fsdp")
    assert a["num_updates"] == b["num_updates"] == 5 and a["world_size"] == 2
