"""Span masking against a slow, loop-by-loop reference of fairseq's compute_mask_indices
(the paper-era version plus the #3266 fix: fairseq `compute_mask_indices`), written here with NumPy.

The vectorised torch version draws from a different RNG, so the two are compared in
distribution (masked fraction, run lengths, per-frame rates), plus exact invariants.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wav2vec2.model.masking import compute_channel_mask, compute_span_mask


def reference_mask(shape, padding_mask, mask_prob, mask_len, rng, *, min_masks=0, selection="static",
                   other=0.0, no_overlap=False, min_space=0, require_same_masks=True, mask_dropout=0.0):
    bsz, all_sz = shape
    mask = np.full(shape, False)
    all_num = max(min_masks, int(mask_prob * all_sz / float(mask_len) + rng.random()))
    mask_idcs = []
    for i in range(bsz):
        if padding_mask is not None:
            sz = all_sz - int(padding_mask[i].sum())
            num = max(min_masks, int(mask_prob * sz / float(mask_len) + rng.random()))
        else:
            sz, num = all_sz, all_num
        if selection == "static":
            lengths = np.full(num, mask_len)
        elif selection == "uniform":
            lengths = rng.integers(int(other), mask_len * 2 + 1, size=num)
        elif selection == "normal":
            lengths = [max(1, int(round(x))) for x in rng.normal(mask_len, other, size=num)]
        else:
            lengths = [int(round(x)) for x in rng.poisson(mask_len, size=num)]
        lengths = list(lengths)
        if sum(lengths) == 0:
            lengths[0] = min(mask_len, sz - 1)
        if no_overlap:
            idc = []

            def arrange(s, e, length, keep_length):
                start = rng.integers(s, e - length) if e - length > s else s
                idc.extend(start + j for j in range(length))
                parts = []
                if start - s - min_space >= keep_length:
                    parts.append((s, start - min_space + 1))
                if e - start - length - min_space > keep_length:
                    parts.append((start + length + min_space, e))
                return parts

            parts = [(0, sz)]
            min_length = min(lengths)
            for length in sorted(lengths, reverse=True):
                lens = np.array([e - s if e - s >= length + min_space else 0 for s, e in parts])
                if lens.sum() == 0:
                    break
                j = rng.choice(len(parts), p=lens / lens.sum())
                s, e = parts.pop(j)
                parts.extend(arrange(s, e, length, min_length))
            idc = np.asarray(idc, dtype=int)
        else:
            min_len = min(lengths)
            if sz - min_len <= num:
                min_len = sz - num - 1
            starts = rng.choice(sz - min_len, num, replace=False)
            idc = np.asarray([starts[j] + o for j in range(len(starts)) for o in range(lengths[j])], dtype=int)
        mask_idcs.append(np.unique(idc[idc < sz]))
    min_count = min(len(m) for m in mask_idcs)
    for i, idc in enumerate(mask_idcs):
        if len(idc) > min_count and require_same_masks:
            idc = rng.choice(idc, min_count, replace=False)
        if mask_dropout > 0:
            holes = int(np.rint(len(idc) * mask_dropout))
            idc = rng.choice(idc, len(idc) - holes, replace=False)
        mask[i, idc] = True
    return mask


def run_lengths(mask: np.ndarray) -> list[int]:
    out = []
    for row in mask:
        padded = np.concatenate([[0], row.astype(int), [0]])
        d = np.diff(padded)
        out += list(np.flatnonzero(d == -1) - np.flatnonzero(d == 1))
    return out


def ours(shape, seed, **kw):
    return compute_span_mask(shape, generator=torch.Generator().manual_seed(seed), **kw).numpy()


def test_paper_setting_masks_49_percent_with_equal_rows():
    # p=0.65, M=10, T=781 (a 250k-sample crop): fairseq's algorithm gives ~49.0% per utterance.
    single = [ours((1, 781), seed, mask_prob=0.65, mask_len=10, min_masks=2).mean() for seed in range(300)]
    assert abs(np.mean(single) - 0.49) < 0.01
    # In a batch every row keeps the smallest row's count, which lowers the fraction a
    # little more (the equalisation step); the reference loop shows the same ~0.467 at B=4.
    rng = np.random.default_rng(0)
    batched, ref = [], []
    for seed in range(300):
        m = ours((4, 781), seed, mask_prob=0.65, mask_len=10, min_masks=2)
        counts = m.sum(1)
        assert (counts == counts[0]).all()
        batched.append(m.mean())
        ref.append(reference_mask((4, 781), None, 0.65, 10, rng, min_masks=2).mean())
    assert abs(np.mean(batched) - np.mean(ref)) < 0.005
    assert 0.45 < np.mean(batched) < np.mean(single)


@pytest.mark.parametrize(
    "kw",
    [
        dict(mask_prob=0.65, mask_len=10, min_masks=2),
        dict(mask_prob=0.5, mask_len=5, min_masks=2, selection="uniform", other=2),
        dict(mask_prob=0.65, mask_len=10, selection="normal", other=3.0),
        dict(mask_prob=0.65, mask_len=10, selection="poisson"),
        dict(mask_prob=0.65, mask_len=10, no_overlap=True, min_space=1, min_masks=2),
        dict(mask_prob=0.3, mask_len=4, no_overlap=True, min_space=2, selection="uniform", other=1),
        dict(mask_prob=0.65, mask_len=10, mask_dropout=0.2, min_masks=2),
    ],
    ids=["static", "uniform", "normal", "poisson", "no_overlap", "no_overlap_uniform", "dropout"],
)
def test_matches_reference_in_distribution(kw):
    shape, draws = (3, 211), 300
    rng = np.random.default_rng(0)
    ref = np.stack([reference_mask(shape, None, rng=rng, **kw) for _ in range(draws)])
    got = np.stack([ours(shape, s, **kw) for s in range(draws)])
    # Masked fraction: means agree within a few standard errors.
    ref_frac, got_frac = ref.mean(axis=(1, 2)), got.mean(axis=(1, 2))
    se = np.sqrt(ref_frac.var() / draws + got_frac.var() / draws) + 1e-9
    assert abs(ref_frac.mean() - got_frac.mean()) < 4 * se + 1e-3
    # Merged run lengths: same mean. Runs within one draw are correlated, so the standard
    # error comes from per-draw means.
    ref_runs = np.array([np.mean(run_lengths(m)) for m in ref])
    got_runs = np.array([np.mean(run_lengths(m)) for m in got])
    se_runs = np.sqrt(ref_runs.var() / draws + got_runs.var() / draws) + 1e-9
    assert abs(ref_runs.mean() - got_runs.mean()) < 4 * se_runs + 1e-3
    # Per-frame masking rate along time (edges are masked less): same profile.
    ref_rate, got_rate = ref.mean(axis=(0, 1)), got.mean(axis=(0, 1))
    assert np.abs(ref_rate - got_rate).mean() < 0.03
    # Rows always equal (require_same_masks default).
    counts = got.sum(-1)
    assert (counts == counts[:, :1]).all()


def test_padding_is_never_masked_and_reference_agrees():
    lengths = torch.tensor([300, 211, 157])
    pad = torch.arange(300).unsqueeze(0) >= lengths.unsqueeze(1)
    rng = np.random.default_rng(1)
    got, ref = [], []
    for seed in range(200):
        m = compute_span_mask((3, 300), mask_prob=0.65, mask_len=10, min_masks=2, padding_mask=pad,
                              generator=torch.Generator().manual_seed(seed))
        assert not (m & pad).any()
        counts = m.sum(1)
        assert (counts == counts[0]).all()
        got.append(m.float().mean().item())
        ref.append(reference_mask((3, 300), pad.numpy(), 0.65, 10, rng, min_masks=2).mean())
    assert abs(np.mean(got) - np.mean(ref)) < 0.01


def test_unequal_rows_without_require_same_masks():
    m = ours((8, 400), 0, mask_prob=0.65, mask_len=10, require_same_masks=False)
    assert len(set(m.sum(1).tolist())) > 1


def test_deterministic_given_generator():
    a = ours((3, 123), 7, mask_prob=0.65, mask_len=10)
    b = ours((3, 123), 7, mask_prob=0.65, mask_len=10)
    c = ours((3, 123), 8, mask_prob=0.65, mask_len=10)
    assert (a == b).all() and (a != c).any()


@pytest.mark.parametrize("num_frames", [1, 2, 5, 9, 10, 11, 49])
def test_awkward_sizes(num_frames):
    # T < M and T == 1 with batch 3 follow the reference: spans start in [0, T - min_len)
    # after fairseq's shrinking rule and are cut at T, so short rows are mostly masked
    # (or, for T <= 2, sometimes not at all). The model raises on < 2 masked frames.
    rng = np.random.default_rng(0)
    got = np.stack([ours((3, num_frames), s, mask_prob=0.65, mask_len=10, min_masks=2) for s in range(300)])
    ref = np.stack([reference_mask((3, num_frames), None, 0.65, 10, rng, min_masks=2) for _ in range(300)])
    assert got.shape == (300, 3, num_frames)
    assert (got.sum(-1) == got.sum(-1)[:, :1]).all()
    assert abs(got.mean() - ref.mean()) < 0.06


@pytest.mark.parametrize(
    "kw,name",
    [
        (dict(mask_prob=-0.1, mask_len=10), "mask_prob"),
        (dict(mask_prob=0.5, mask_len=0), "mask_len"),
        (dict(mask_prob=0.5, mask_len=10, selection="zipf"), "selection"),
        (dict(mask_prob=0.5, mask_len=10, mask_dropout=1.0), "mask_dropout"),
    ],
)
def test_bad_arguments_name_themselves(kw, name):
    with pytest.raises(ValueError, match=name):
        compute_span_mask((2, 50), **kw)


def test_bad_shape_and_padding_shape():
    with pytest.raises(ValueError, match="shape"):
        compute_span_mask((2, 0), mask_prob=0.5, mask_len=10)
    with pytest.raises(ValueError, match="padding_mask"):
        compute_span_mask((2, 50), mask_prob=0.5, mask_len=10, padding_mask=torch.zeros(2, 49, dtype=torch.bool))


def test_channel_mask_statistics():
    rng = np.random.default_rng(0)
    got = np.stack([compute_channel_mask(2, 768, mask_prob=0.5, mask_len=64,
                                         generator=torch.Generator().manual_seed(s)).numpy()
                    for s in range(200)])
    ref = np.stack([reference_mask((2, 768), None, 0.5, 64, rng) for _ in range(200)])
    assert abs(got.mean() - ref.mean()) < 0.02


@pytest.mark.parametrize("kw", [{}, {"no_overlap": True}, {"selection": "uniform", "other": 2},
                                {"mask_dropout": 0.2}, {"require_same_masks": False}])
def test_every_tensor_stays_on_the_requested_device(kw):
    """On the meta device (no data, no GPU needed) any intermediate made on the CPU instead of
    `device` fails to combine with the others: the check a CUDA run would make."""
    m = compute_span_mask((3, 100), mask_prob=0.65, mask_len=10, device="meta", **kw)
    assert m.dtype == torch.bool and m.device.type == "meta" and m.shape == (3, 100)
    padded = compute_span_mask((3, 100), mask_prob=0.65, mask_len=10,
                               padding_mask=torch.zeros(3, 100, dtype=torch.bool, device="meta"), **kw)
    assert padded.device.type == "meta"
    assert compute_channel_mask(3, 64, mask_prob=0.5, mask_len=8, device="meta").device.type == "meta"
