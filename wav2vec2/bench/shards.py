"""`shards`: the loader reading tar shards (`data.train_shards`) against the same audio as
one file per utterance, per DataLoader worker, with the open and seek calls each makes.

How: `--seconds` of speech-like utterances (`--min-seconds`..`--max-seconds`, written as FLAC
and as WAV by `data.write_bench_corpus`) are packed with `write_shards` into shards of
`--shard-mb`; the page cache is warmed by one pass over every file; then each reader runs one
epoch through the real pipeline (dataset, token-budget sampler, crop collation, DataLoader
with `--workers`), timed from the first request to the last batch, worker start-up included.

Calls: the file reader makes one open (and libsndfile's header parse and seeks, not counted)
per utterance. The shard reader's opens and seeks are counted by replaying, for each worker,
the batches the DataLoader deals it (round-robin) through the reader's own open-shard cache
(`ShardedAudioDataset._file`), which is what the workers run; the in-process run (w=0) counts
them directly, and the two agree there. What this machine cannot show: on a local disk with a
warm page cache an open costs microseconds; on a shared file system (NFS, Lustre) each is a
metadata round trip, which is what the shards save. Read the calls per second with that in mind.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from wav2vec2.bench.common import SAMPLE_RATE, row
from wav2vec2.bench.data import soundfile_loop, write_bench_corpus
from wav2vec2.data import (
    RawAudioDataset,
    ShardBatchSampler,
    ShardedAudioDataset,
    TokenBudgetBatchSampler,
    build_dataloader,
    write_shards,
)


def _epoch(ds: RawAudioDataset, sampler: TokenBudgetBatchSampler, num_workers: int) -> tuple[float, int]:
    """(seconds, samples decoded) of one epoch through the DataLoader."""
    loader = build_dataloader(ds, sampler, seed=1, num_workers=num_workers)
    start, read = time.perf_counter(), 0
    for batch in loader:
        read += int(ds.lengths[batch["id"].numpy()].sum())  # whole utterances are decoded
    return time.perf_counter() - start, read


def _reader(name: str, manifest: str, shard_dir: str, args: argparse.Namespace,
            ) -> tuple[RawAudioDataset, TokenBudgetBatchSampler]:
    kw = dict(max_tokens=args.max_tokens, seed=1)
    if name == "files":
        ds = RawAudioDataset(manifest, max_sample_size=args.max_sample_size)
        return ds, TokenBudgetBatchSampler(ds.sizes, **kw)
    ds = ShardedAudioDataset(shard_dir, max_sample_size=args.max_sample_size)
    return ds, ShardBatchSampler(ds.shard_of, ds.sizes, shuffle_buffer=args.shuffle_buffer, **kw)


def replay_calls(directory: str, batches: list[list[int]], num_workers: int) -> tuple[int, int]:
    """(opens, seeks) of the shard reader over `batches` dealt round-robin to `num_workers`
    workers (0: the main process), each with its own open-shard cache, as the DataLoader runs
    them. Nothing is decoded: only the reader's file handling is replayed."""
    opens = seeks = 0
    for worker in range(max(num_workers, 1)):
        ds = ShardedAudioDataset(directory)
        for batch in batches[worker::max(num_workers, 1)]:
            for i in batch:
                ds._file(int(ds.index.shard[ds.keep[i]]))
                ds.num_seeks += 1
        opens, seeks = opens + ds.num_opens, seeks + ds.num_seeks
    return opens, seeks


def bench_shards(args: argparse.Namespace) -> dict:
    """Audio-seconds per second and calls per second: files vs tar shards, per worker."""
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.corpus_dir or tmp
        t0 = time.perf_counter()
        manifests = write_bench_corpus(root, total_seconds=args.seconds, seed=0, min_seconds=args.min_seconds,
                                       max_seconds=args.max_seconds)
        shard_dirs = {}
        for fmt, manifest in manifests.items():
            shard_dirs[fmt] = os.path.join(root, f"shards_{fmt}")
            if not os.path.exists(os.path.join(shard_dirs[fmt], "index.tsv")):
                write_shards(manifest, shard_dirs[fmt], shard_mb=args.shard_mb, seed=0)
        print(f"corpus: {args.seconds:.0f} s per format in {args.min_seconds:g}-{args.max_seconds:g} s utterances, "
              f"written and packed in {time.perf_counter() - t0:.0f} s")
        print(f"{'format':6} {'reader':8} {'workers':>7} {'audio-s/s':>10} {'per worker':>11} {'utt/s':>7} "
              f"{'opens/s':>8} {'seeks/s':>8} {'opens':>6} {'shards':>6}")
        for fmt, manifest in manifests.items():
            soundfile_loop(manifest)  # warm the page cache: every reader reads from memory
            for w in args.workers:
                for name in ("files", "shards"):
                    ds, sampler = _reader(name, manifest, shard_dirs[fmt], args)  # fresh: no file left open
                    elapsed, read = _epoch(ds, sampler, w)
                    num_utts = sum(len(b) for b in sampler.epoch_batches(1))
                    num_shards = len(ds.index.shards) if name == "shards" else ""
                    if name == "files":
                        opens, seeks = num_utts, 0  # one open (and header parse) per utterance
                    else:
                        opens, seeks = replay_calls(shard_dirs[fmt], [b.tolist() for b in sampler.epoch_batches(1)], w)
                        if w == 0:  # the replay is what the reader did
                            assert (opens, seeks) == (ds.num_opens, ds.num_seeks), ((opens, seeks), ds.num_opens)
                    audio = read / SAMPLE_RATE / elapsed
                    per = audio / max(w, 1)
                    print(f"{fmt:6} {name:8} {w:7d} {audio:10.0f} {per:11.0f} {num_utts / elapsed:7.0f} "
                          f"{opens / elapsed:8.1f} {seeks / elapsed:8.0f} {opens:6d} "
                          f"{num_shards:>6}")
                    results[f"{fmt} {name} w={w}"] = row(
                        "shards", f"{fmt} {name} w={w}", "ours", None, audio_s_per_s=audio, per_worker=per,
                        utterances_per_s=num_utts / elapsed, opens=opens, seeks=seeks, opens_per_s=opens / elapsed,
                        seeks_per_s=seeks / elapsed, seconds=elapsed)
        print(f"({os.cpu_count()} CPU cores; shards of {args.shard_mb:g} MB, shuffle_buffer {args.shuffle_buffer}; "
              "opens of the file reader: one per utterance, its libsndfile seeks not counted)")
    return results
