"""Benchmarks. One subcommand per area, each in its own function:

    python scripts/bench.py data [--seconds 1800] [--workers 0 1 2]
    python scripts/bench.py model [--configs tiny base4] [--reps 5]

`model` needs transformers (the `bench` extra): it times the same training step
(forward + backward, same weights, same mask and negatives) in this project and in
transformers' Wav2Vec2ForPreTraining, interleaved in one process, and quotes ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import soundfile as sf

# One GPU training BASE consumes ~1,600 audio-seconds/s (fairseq recipe, A100-class); a
# loader below that per GPU from a few workers is a bug to chase.
GPU_AUDIO_SECONDS_PER_S = 1600.0


def _write_bench_corpus(root: str, *, total_seconds: float, seed: int) -> dict[str, str]:
    """Same speech-like utterances (8-16 s, LibriSpeech-like) as FLAC and WAV; returns manifests."""
    from wav2vec2.data import build_manifest, synth_utterance

    manifests = {ext: os.path.join(root, f"m_{ext}", "train.tsv") for ext in ("flac", "wav")}
    if all(os.path.exists(m) for m in manifests.values()):  # reuse a kept --corpus-dir
        return manifests
    rng = np.random.default_rng(seed)
    written, i = 0.0, 0
    while written < total_seconds:
        n = int(rng.uniform(8.0, 16.0) * 16000)
        wav = synth_utterance(n, sample_rate=16000, rng=rng)
        for ext in ("flac", "wav"):
            path = os.path.join(root, ext, f"spk{i % 10}", f"utt{i:05d}.{ext}")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            sf.write(path, wav, 16000, subtype="PCM_16")
        written, i = written + n / 16000, i + 1
    for ext in ("flac", "wav"):
        build_manifest(os.path.join(root, ext), os.path.join(root, f"m_{ext}"), exts=[ext], valid_percent=0)
    return manifests


def _baseline(manifest: str) -> dict:
    """Read every file with soundfile in one process: the ceiling for one core."""
    from wav2vec2.data import read_manifest

    root, entries = read_manifest(manifest)
    start, samples = time.perf_counter(), 0
    for rel, _ in entries:
        samples += len(sf.read(os.path.join(root, rel), dtype="float32")[0])
    elapsed = time.perf_counter() - start
    return {"read_s_per_s": samples / 16000 / elapsed, "delivered_s_per_s": samples / 16000 / elapsed}


def _loader(manifest: str, *, num_workers: int, max_tokens: int, max_sample_size: int) -> dict:
    """One epoch through the real pipeline: dataset -> token-budget sampler -> DataLoader."""
    from wav2vec2.data import RawAudioDataset, TokenBudgetBatchSampler, build_dataloader

    ds = RawAudioDataset(manifest, max_sample_size=max_sample_size)
    sampler = TokenBudgetBatchSampler(ds.sizes, max_tokens=max_tokens, seed=1)
    loader = build_dataloader(ds, sampler, seed=1, num_workers=num_workers)
    start, read, delivered = time.perf_counter(), 0, 0
    for batch in loader:
        read += int(ds.lengths[batch["id"].numpy()].sum())  # whole files are decoded
        delivered += batch["source"].numel()  # after crop-to-shortest
    elapsed = time.perf_counter() - start  # includes worker start-up, as a real epoch does
    return {"read_s_per_s": read / 16000 / elapsed, "delivered_s_per_s": delivered / 16000 / elapsed}


def bench_data(args: argparse.Namespace) -> dict:
    """Audio-seconds per second: plain soundfile reads vs the loader with 0..N workers."""
    with tempfile.TemporaryDirectory() as tmp:
        root = args.corpus_dir or tmp
        t0 = time.perf_counter()
        manifests = _write_bench_corpus(root, total_seconds=args.seconds, seed=0)
        print(f"corpus: {args.seconds:.0f} s of 16 kHz audio per format, written in {time.perf_counter() - t0:.0f} s")
        results = {}
        print(f"{'format':6} {'reader':14} {'read audio-s/s':>15} {'delivered':>10} {'per worker':>11}")
        for fmt, manifest in manifests.items():
            _baseline(manifest)  # warm the page cache so all runs read from memory
            rows = {"soundfile loop": _baseline(manifest)}
            for w in args.workers:
                rows[f"loader w={w}"] = _loader(
                    manifest, num_workers=w, max_tokens=args.max_tokens, max_sample_size=args.max_sample_size
                )
            for name, r in rows.items():
                w = int(name.split("=")[1]) if "=" in name else 0
                per = f"{r['read_s_per_s'] / w:11.0f}" if w else f"{'':11}"
                print(f"{fmt:6} {name:14} {r['read_s_per_s']:15.0f} {r['delivered_s_per_s']:10.0f} {per}")
            results[fmt] = rows
        print(f"(one GPU needs ~{GPU_AUDIO_SECONDS_PER_S:.0f} audio-s/s; {os.cpu_count()} CPU cores here)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


# ----------------------------------------------------------------------------- model
def _model_configs():
    from wav2vec2.config import base, tiny

    def base4():  # BASE widths with 4 layers: the per-layer cost of BASE at CPU scale
        cfg = base()
        cfg.transformer.num_layers = 4
        return cfg

    # name -> (config, batch, samples per utterance)
    return {"tiny": (tiny(), 8, 32_000), "base4": (base4(), 2, 48_000)}


def _median(xs: list[float]) -> float:
    return float(np.median(xs))


def _time_interleaved(fns: dict, reps: int) -> dict[str, float]:
    """Median seconds per call, alternating implementations so load drifts hit both."""
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: _median(ts) for name, ts in times.items()}


def bench_model(args: argparse.Namespace) -> dict:
    """Training step, masking and negative sampling: ours vs transformers, same machine."""
    import torch
    from transformers import Wav2Vec2ForPreTraining
    from transformers.models.wav2vec2 import modeling_wav2vec2 as hf_w2v

    from wav2vec2.interop.hf import config_to_hf, negatives_to_hf, state_dict_to_hf
    from wav2vec2.model.losses import pretraining_loss
    from wav2vec2.model.masking import compute_span_mask
    from wav2vec2.model.wav2vec2 import Wav2Vec2Model, sample_negatives

    torch.set_num_threads(args.threads)
    results: dict = {}
    print(f"threads={args.threads}, reps={args.reps}; median seconds; ratio = transformers / ours")
    for name in args.configs:
        cfg, batch, samples = _model_configs()[name]
        torch.manual_seed(0)
        ours = Wav2Vec2Model(cfg).train()
        hf_cfg = config_to_hf(cfg)
        hf_cfg._attn_implementation = "sdpa"
        hf = Wav2Vec2ForPreTraining(hf_cfg).train()
        hf.load_state_dict(state_dict_to_hf(ours.state_dict(), cfg))
        source = torch.randn(batch, samples)
        gen = torch.Generator().manual_seed(0)
        first = ours(source, temperature=2.0, generator=gen)
        mask, negs = first.time_mask, first.negative_indices
        hf_negs = negatives_to_hf(mask, negs)

        def step_ours():
            out = ours(source, temperature=2.0, generator=gen, time_mask=mask, negative_indices=negs)
            pretraining_loss(out, cfg.loss).total.backward()

        def step_hf():
            hf(source, mask_time_indices=mask, sampled_negative_indices=hf_negs).loss.backward()

        t = _time_interleaved({"ours": step_ours, "transformers": step_hf}, args.reps)
        ratio = t["transformers"] / t["ours"]
        audio_s = batch * samples / 16000
        print(f"train step {name:6} B={batch} L={samples}: ours {t['ours']:.3f}s "
              f"({audio_s / t['ours']:.1f} audio-s/s), transformers {t['transformers']:.3f}s, ratio {ratio:.2f}")
        results[f"step_{name}"] = {**t, "ratio": ratio}

    # Masking and negatives for a BASE batch (8 x 781 frames), where transformers' example
    # script computes them with NumPy loops on the host.
    B, T, K = 8, 781, 100
    gen = torch.Generator().manual_seed(0)
    m = compute_span_mask((B, T), mask_prob=0.65, mask_len=10, min_masks=2, generator=gen)
    fns = {
        "ours": lambda: compute_span_mask((B, T), mask_prob=0.65, mask_len=10, min_masks=2, generator=gen),
        "transformers": lambda: hf_w2v._compute_mask_indices((B, T), mask_prob=0.65, mask_length=10, min_masks=2),
    }
    t = _time_interleaved(fns, args.reps * 4)
    print(f"span mask   B={B} T={T}: ours {t['ours'] * 1e3:.2f} ms, transformers {t['transformers'] * 1e3:.2f} ms, "
          f"ratio {t['transformers'] / t['ours']:.2f}")
    results["mask"] = t
    M = int(m[0].sum())
    fns = {
        "ours": lambda: sample_negatives(B, M, K, generator=gen),
        "transformers": lambda: hf_w2v._sample_negative_indices((B, T), K, mask_time_indices=m.numpy()),
    }
    t = _time_interleaved(fns, args.reps * 4)
    print(f"negatives   B={B} M={M} K={K}: ours {t['ours'] * 1e3:.2f} ms, transformers "
          f"{t['transformers'] * 1e3:.2f} ms, ratio {t['transformers'] / t['ours']:.2f}")
    results["negatives"] = t
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="data loader throughput vs a plain soundfile loop")
    data.add_argument("--seconds", type=float, default=1800.0, help="audio per format to generate")
    data.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    data.add_argument("--max-tokens", type=int, default=1_400_000, help="BASE recipe budget")
    data.add_argument("--max-sample-size", type=int, default=250_000, help="BASE recipe crop")
    data.add_argument("--corpus-dir", default=None, help="keep the generated corpus here")
    data.add_argument("--json", default=None, help="also write results to this file")
    data.set_defaults(func=bench_data)

    model = sub.add_parser("model", help="training step, masking, negatives: ours vs transformers")
    model.add_argument("--configs", nargs="+", default=["tiny", "base4"], choices=["tiny", "base4"])
    model.add_argument("--reps", type=int, default=5)
    model.add_argument("--threads", type=int, default=2)
    model.add_argument("--json", default=None, help="also write results to this file")
    model.set_defaults(func=bench_model)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
