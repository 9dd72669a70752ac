"""`mask`: the span mask and the negatives for B=8, T=781 (a 15.6 s crop), K=100: ours on the
model's device against transformers' NumPy functions on the host plus the copy of their
result to the device.

How: three pairs (mask + negatives together, the mask alone, the negatives alone), each
called once to warm up, then `--mask-reps` times alternately; medians in milliseconds and
the ratio theirs / ours.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from wav2vec2.bench.common import print_env, row, setup, sync
from wav2vec2.model.masking import compute_span_mask
from wav2vec2.model.wav2vec2 import sample_negatives


def bench_mask(args: argparse.Namespace) -> None:
    """Span mask + negatives for B=8, T=781 (a 15.6 s crop): ours on the device vs transformers'
    NumPy functions on the host plus the copy of their result to the device."""
    from transformers.models.wav2vec2 import modeling_wav2vec2 as hf_w2v

    device = setup(args)
    print_env(args, "mask: span mask + negatives, B=8 T=781 K=100")
    B, T, K = 8, 781, 100
    gen = torch.Generator(device=device).manual_seed(0)

    def ours():
        m = compute_span_mask((B, T), mask_prob=0.65, mask_len=10, min_masks=2, generator=gen, device=device)
        M = int(m[0].sum())  # the one host sync: M sets the negatives' shape
        return sample_negatives(B, M, K, generator=gen, device=device)

    def theirs():
        m = hf_w2v._compute_mask_indices((B, T), mask_prob=0.65, mask_length=10, min_masks=2)
        n = hf_w2v._sample_negative_indices((B, T), K, mask_time_indices=m)
        return torch.from_numpy(m).to(device), torch.from_numpy(n).to(device)

    def ours_mask():
        compute_span_mask((B, T), mask_prob=0.65, mask_len=10, min_masks=2, generator=gen, device=device)
        sync(device)

    def theirs_mask():
        torch.from_numpy(hf_w2v._compute_mask_indices((B, T), mask_prob=0.65, mask_length=10,
                                                      min_masks=2)).to(device)

    m_np = hf_w2v._compute_mask_indices((B, T), mask_prob=0.65, mask_length=10, min_masks=2)
    M = int(m_np[0].sum())

    def ours_negs():
        sample_negatives(B, M, K, generator=gen, device=device)
        sync(device)

    def theirs_negs():
        torch.from_numpy(hf_w2v._sample_negative_indices((B, T), K, mask_time_indices=m_np)).to(device)

    print(f"{'what':18} {'ours ms':>8} {'transformers ms':>15} {'ratio':>6}")
    for what, a, b in (("mask + negatives", ours, theirs), ("span mask", ours_mask, theirs_mask),
                       ("negatives", ours_negs, theirs_negs)):
        for fn in (a, b):
            fn()
        ta, tb = [], []
        for _ in range(args.mask_reps):
            for fn, ts in ((a, ta), (b, tb)):
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                ts.append(time.perf_counter() - t0)
        ma, mb = float(np.median(ta)), float(np.median(tb))
        print(f"{what:18} {ma * 1e3:8.2f} {mb * 1e3:15.2f} {mb / ma:6.2f}")
        row("mask", what, "ours", None, ms=ma * 1e3, ratio_theirs_over_ours=mb / ma)
        row("mask", what, "transformers-numpy", None, ms=mb * 1e3)
