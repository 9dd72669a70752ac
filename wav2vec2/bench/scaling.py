"""`scaling`: audio-seconds per second of one BASE update against utterance length (2, 4, 8
and 15.6 s, plus 30 s with `--full`) at a fixed batch (`--scale-batch`).

How: for each length, ours (and the transformers attention modes in `--scale-peers`) alternate
over `--scale-reps` timed updates after a warm-up (`common.time_rounds`, one update per turn);
the median gives audio-s/s and MFU. Each row also states the FLOPs per audio-second and the
share of attention's T^2 term (QK^T and AV) in them, which is what grows with length.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from wav2vec2.bench.common import SAMPLE_RATE, model_flops, peaks, print_env, row, setup, time_rounds
from wav2vec2.bench.updates import HFUpdate, OursUpdate, bench_config, bench_inputs
from wav2vec2.model.wav2vec2 import Wav2Vec2Model


def bench_scaling(args: argparse.Namespace) -> None:
    """Audio-s/s against utterance length at a fixed batch: attention's T^2 term grows."""
    device = setup(args)
    lengths = [2.0, 4.0, 8.0, 15.6] + ([30.0] if args.full else [])
    print_env(args, f"scaling: one BASE update, batch {args.scale_batch}, lengths {lengths} s")
    gemm = peaks(args, device)
    cfg = bench_config()
    torch.manual_seed(0)
    state_dict = Wav2Vec2Model(cfg).state_dict()
    print(f"median of {args.scale_reps} timed updates after 1 warm-up, impls alternating")
    print(f"{'length':>7} {'prec':5} {'impl':20} {'audio-s/s':>9} {'GFLOP/audio-s':>13} {'attn share':>10} {'MFU':>6}")
    for precision in args.scale_precision:
        for seconds in lengths:
            samples = int(round(seconds * SAMPLE_RATE))
            inputs = bench_inputs(cfg, args.scale_batch, samples, device)
            parts = model_flops(cfg, args.scale_batch, samples, inputs[3])
            flops = 3 * sum(parts.values())  # an update is 3 forwards
            audio = args.scale_batch * seconds
            impls = {"ours": OursUpdate(cfg, state_dict, inputs, device, precision)}
            for attn in args.scale_peers:
                impls[f"transformers-{attn}"] = HFUpdate(cfg, state_dict, inputs, device, precision, attn)
            times = time_rounds(impls, device, rounds=args.scale_reps, reps=1)
            del impls
            for name, ts in times.items():
                t = float(np.median(ts))
                mfu = flops / t / gemm[precision]
                share = parts["attention_scores"] / sum(parts.values())
                print(f"{seconds:6.1f}s {precision:5} {name:20} {audio / t:9.2f} {flops / audio / 1e9:13.1f} "
                      f"{share:10.1%} {mfu:6.1%}")
                row("scaling", f"{args.scale_batch}x{seconds:g}s", name, precision, audio_s_per_s=audio / t,
                    mfu=mfu, gflop_per_audio_s=flops / audio / 1e9, attention_scores_share=share)
