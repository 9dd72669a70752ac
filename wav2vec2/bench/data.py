"""`data`: audio-seconds per second through the real data pipeline (dataset, token-budget
sampler, crop-to-shortest collation, DataLoader with 0..N workers) against a plain soundfile
read loop in one process, the ceiling for one core.

How: `--seconds` of speech-like 8-16 s utterances (LibriSpeech-like) are written once as FLAC
and as WAV (kept in `--corpus-dir` if given, reused when its manifests exist); the page cache
is warmed with one read loop, then each reader runs one epoch. "read" counts the samples
decoded (whole files), "delivered" the samples in the batches after the crop.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import soundfile as sf

from wav2vec2.bench.common import SAMPLE_RATE, row
from wav2vec2.data import (
    RawAudioDataset,
    TokenBudgetBatchSampler,
    build_dataloader,
    build_manifest,
    read_manifest,
    synth_utterance,
)

# One GPU training BASE consumes ~1,600 audio-seconds/s (fairseq recipe, A100-class); a
# loader below that per GPU from a few workers is a bug to chase.
GPU_AUDIO_SECONDS_PER_S = 1600.0


def write_bench_corpus(root: str, *, total_seconds: float, seed: int, min_seconds: float = 8.0,
                       max_seconds: float = 16.0) -> dict[str, str]:
    """Same speech-like utterances (8-16 s by default, LibriSpeech-like) as FLAC and WAV;
    returns manifests."""
    manifests = {ext: os.path.join(root, f"m_{ext}", "train.tsv") for ext in ("flac", "wav")}
    if all(os.path.exists(m) for m in manifests.values()):  # reuse a kept --corpus-dir
        return manifests
    rng = np.random.default_rng(seed)
    written, i = 0.0, 0
    while written < total_seconds:
        n = int(rng.uniform(min_seconds, max_seconds) * SAMPLE_RATE)
        wav = synth_utterance(n, sample_rate=SAMPLE_RATE, rng=rng)
        for ext in ("flac", "wav"):
            path = os.path.join(root, ext, f"spk{i % 10}", f"utt{i:05d}.{ext}")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            sf.write(path, wav, SAMPLE_RATE, subtype="PCM_16")
        written, i = written + n / SAMPLE_RATE, i + 1
    for ext in ("flac", "wav"):
        build_manifest(os.path.join(root, ext), os.path.join(root, f"m_{ext}"), exts=[ext], valid_percent=0)
    return manifests


def soundfile_loop(manifest: str) -> dict:
    """Read every file with soundfile in one process: the ceiling for one core."""
    root, entries = read_manifest(manifest)
    start, samples = time.perf_counter(), 0
    for rel, _ in entries:
        samples += len(sf.read(os.path.join(root, rel), dtype="float32")[0])
    elapsed = time.perf_counter() - start
    return {"read_s_per_s": samples / SAMPLE_RATE / elapsed, "delivered_s_per_s": samples / SAMPLE_RATE / elapsed}


def loader_epoch(manifest: str, *, num_workers: int, max_tokens: int, max_sample_size: int) -> dict:
    """One epoch through the real pipeline: dataset -> token-budget sampler -> DataLoader."""
    ds = RawAudioDataset(manifest, max_sample_size=max_sample_size)
    sampler = TokenBudgetBatchSampler(ds.sizes, max_tokens=max_tokens, seed=1)
    loader = build_dataloader(ds, sampler, seed=1, num_workers=num_workers)
    start, read, delivered = time.perf_counter(), 0, 0
    for batch in loader:
        read += int(ds.lengths[batch["id"].numpy()].sum())  # whole files are decoded
        delivered += batch["source"].numel()  # after crop-to-shortest
    elapsed = time.perf_counter() - start  # includes worker start-up, as a real epoch does
    return {"read_s_per_s": read / SAMPLE_RATE / elapsed, "delivered_s_per_s": delivered / SAMPLE_RATE / elapsed}


def bench_data(args: argparse.Namespace) -> dict:
    """Audio-seconds per second: plain soundfile reads vs the loader with 0..N workers."""
    with tempfile.TemporaryDirectory() as tmp:
        root = args.corpus_dir or tmp
        t0 = time.perf_counter()
        manifests = write_bench_corpus(root, total_seconds=args.seconds, seed=0)
        print(f"corpus: {args.seconds:.0f} s of 16 kHz audio per format, written in {time.perf_counter() - t0:.0f} s")
        results = {}
        print(f"{'format':6} {'reader':14} {'read audio-s/s':>15} {'delivered':>10} {'per worker':>11}")
        for fmt, manifest in manifests.items():
            soundfile_loop(manifest)  # warm the page cache so all runs read from memory
            rows = {"soundfile loop": soundfile_loop(manifest)}
            for w in args.workers:
                rows[f"loader w={w}"] = loader_epoch(
                    manifest, num_workers=w, max_tokens=args.max_tokens, max_sample_size=args.max_sample_size
                )
            for name, r in rows.items():
                w = int(name.split("=")[1]) if "=" in name else 0
                per = f"{r['read_s_per_s'] / w:11.0f}" if w else f"{'':11}"
                print(f"{fmt:6} {name:14} {r['read_s_per_s']:15.0f} {r['delivered_s_per_s']:10.0f} {per}")
                row("data", f"{fmt} {name}", "ours", None, audio_s_per_s=r["read_s_per_s"],
                    delivered_s_per_s=r["delivered_s_per_s"])
            results[fmt] = rows
        print(f"(one GPU needs ~{GPU_AUDIO_SECONDS_PER_S:.0f} audio-s/s; {os.cpu_count()} CPU cores here)")
    return results
