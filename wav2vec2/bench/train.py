"""`train`: one full BASE pretraining update (forward, loss, backward, fused AdamW, zero_grad),
ours against transformers (eager and SDPA attention) and fairseq, fp32 and bf16 autocast.

How: the implementations (`updates.py`) get the same weights, audio, time mask and thread
count and alternate in one process (`common.time_rounds`); the median seconds per update give
audio-seconds per second, MFU (`common.train_flops` over the run's GEMM peak) and the ratio
ours / peer. Batches: 2 x 4 s, plus 4 x 15.6 s with `--full`. With bf16 in `--precision`,
our loss on the batch in fp32 and under bf16 autocast is printed (the accuracy check), and
after each batch issue #11's targets, each met or missed by how much.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from wav2vec2.bench.common import (
    SAMPLE_RATE,
    autocast,
    peaks,
    print_env,
    release_memory,
    row,
    setup,
    time_rounds,
    train_flops,
)
from wav2vec2.bench.updates import FairseqUpdate, all_updates, bench_config, bench_inputs, find_fairseq_python
from wav2vec2.config import ModelConfig
from wav2vec2.model.losses import pretraining_loss
from wav2vec2.model.wav2vec2 import Wav2Vec2Model


def bf16_loss_gap(cfg: ModelConfig, state_dict, inputs, device: torch.device) -> tuple[float, float]:
    """Our pretraining loss on the benchmark batch in fp32 and under bf16 autocast, same
    weights, mask and negatives, in eval mode (no dropout, hard codes): bf16's accuracy check."""
    model = Wav2Vec2Model(cfg)
    model.load_state_dict(state_dict)
    model.to(device).eval()
    source, mask, negs, _ = inputs
    losses = []
    for precision in ("fp32", "bf16"):
        with torch.no_grad(), autocast(device, precision):
            out = model(source, temperature=2.0, time_mask=mask, negative_indices=negs)
            losses.append(float(pretraining_loss(out, cfg.loss).total))
    return losses[0], losses[1]


def train_targets(med: dict[str, dict[str, float]], mfu: dict[str, float], *, long_crop: bool) -> list[str]:
    """Issue #11's targets for one batch, from the median seconds per update `med[precision][impl]`
    and our MFU per precision: each line says met, or by how much it is missed."""
    lines = []

    def check(what: str, value: float, goal: float, unit: str = "x") -> None:
        verdict = "met" if value >= goal else f"MISSED by {goal - value:.2f}{unit}"
        lines.append(f"  target {what} >= {goal:g}{unit}: {value:.2f}{unit}, {verdict}")

    def best(times: dict[str, float], prefix: str) -> float | None:
        peers = [t for n, t in times.items() if n.startswith(prefix)]
        return min(peers) if peers else None

    fp32, bf16 = med.get("fp32"), med.get("bf16")
    if fp32:
        hf, fs = best(fp32, "transformers"), best(fp32, "fairseq")
        if hf:
            check("fp32 vs transformers", hf / fp32["ours"], 1.5)
        if fs:
            check("fp32 vs fairseq", fs / fp32["ours"], 1.25)
        if long_crop:
            check("fp32 MFU", 100 * mfu["fp32"], 60, unit="%")
    if bf16:
        hf, fs = best(bf16, "transformers"), best(bf16, "fairseq")
        if fp32 and best(fp32, "transformers"):
            check("bf16 vs transformers fp32", best(fp32, "transformers") / bf16["ours"], 3.0)
        if hf:
            check("bf16 vs transformers bf16", hf / bf16["ours"], 1.5)
        if fs:
            check("bf16 vs fairseq bf16 (ahead)", fs / bf16["ours"], 1.0)
    return lines


def train_batches(args: argparse.Namespace) -> list[tuple[int, float]]:
    """(batch, seconds) to time: 2 x 4 s, and the recipes' 4 x 15.6 s crop with --full."""
    return [(2, 4.0), (4, 15.6)] if args.full else [(2, 4.0)]


def bench_train(args: argparse.Namespace) -> None:
    """One BASE update, ours vs transformers (eager, SDPA) vs fairseq, fp32 and bf16 autocast."""
    device = setup(args)
    print_env(args, "train: one BASE update (forward, backward, Adam step, zero_grad)")
    args.fairseq_py, fs_note = find_fairseq_python(args)
    print(fs_note)
    gemm = peaks(args, device)
    cfg = bench_config()
    torch.manual_seed(0)
    state_dict = Wav2Vec2Model(cfg).state_dict()
    print(f"median of {args.rounds} rounds x {args.reps} timed updates after 1 warm-up; LayerDrop 0; "
          "ratio = ours / peer (> 1: ours faster)")
    hdr = f"{'batch':>10} {'prec':5} {'impl':20} {'s/update':>9} {'audio-s/s':>9} {'TFLOP/upd':>9} {'MFU':>6} {'ours/this':>9}"
    for batch, seconds in train_batches(args):
        samples = int(round(seconds * SAMPLE_RATE))
        inputs = bench_inputs(cfg, batch, samples, device)
        flops = train_flops(cfg, batch, samples, inputs[3])
        audio = batch * samples / SAMPLE_RATE
        if "bf16" in args.precision:
            fp32_loss, bf16_loss = bf16_loss_gap(cfg, state_dict, inputs, device)
            gap = abs(bf16_loss - fp32_loss) / abs(fp32_loss)
            print(f"{batch} x {seconds:g} s, ours, one batch in eval mode: loss fp32 {fp32_loss:.4f}, "
                  f"bf16 autocast {bf16_loss:.4f}, relative gap {gap:.2e} (target <= 1e-2)")
            row("train", f"{batch}x{seconds:g}s", "ours", "bf16", loss_fp32=fp32_loss, loss_bf16=bf16_loss,
                loss_relative_gap=gap)
            release_memory()
        medians: dict[str, dict[str, float]] = {}
        our_mfu: dict[str, float] = {}
        for precision in args.precision:
            impls = all_updates(args, cfg, state_dict, inputs, device, precision)
            times = time_rounds(impls, device, rounds=args.rounds, reps=args.reps)
            notes = {n: f.note for n, f in impls.items() if isinstance(f, FairseqUpdate)}
            for f in impls.values():
                if isinstance(f, FairseqUpdate):
                    f.close()
            del impls
            med = {n: float(np.median(ts)) for n, ts in times.items()}
            medians[precision], our_mfu[precision] = med, flops / med["ours"] / gemm[precision]
            hf_best = min(("transformers-eager", "transformers-sdpa"), key=med.get)
            print(hdr)
            for name, t in med.items():
                mfu = flops / t / gemm[precision]
                ratio = med[name] / med["ours"]
                label = name + (" *" if name == hf_best else "")
                print(f"{f'{batch} x {seconds:g} s':>10} {precision:5} {label:20} {t:9.2f} {audio / t:9.2f} "
                      f"{flops / 1e12:9.3f} {mfu:6.1%} {ratio:9.2f}")
                row("train", f"{batch}x{seconds:g}s", name, precision, audio_s_per_s=audio / t, mfu=mfu,
                    seconds_per_update=t, spread=[min(times[name]), max(times[name])],
                    ratio_ours_over_this=ratio, note=notes.get(name))
            for name, note in notes.items():
                print(f"  {name}: {note}")
            best_peer = min((n for n in med if n != "ours"), key=med.get)
            print(f"  * fastest transformers mode; best peer: {best_peer}, ours / best peer = "
                  f"{med[best_peer] / med['ours']:.2f}")
        targets = train_targets(medians, our_mfu, long_crop=seconds >= 15)
        print("\n".join(targets))
        row("train", f"{batch}x{seconds:g}s", "ours", None, targets=[t.strip() for t in targets])
