"""Span masking of latent frames (paper §3.1) and of channels, as pure functions.

Semantics follow fairseq's `compute_mask_indices` in the version the paper used plus the
#3266 fix (fairseq `data/data_utils.py`), vectorised over the batch in torch on the input's device and driven by
an explicit `torch.Generator`. The random streams differ from fairseq's NumPy ones, so masks
match in distribution, not draw for draw.

Shapes: B batch, T frames (or channels), N spans per row (upper bound), S span length bound.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SELECTIONS = ("static", "uniform", "normal", "poisson")


def compute_span_mask(
    shape: tuple[int, int],
    *,
    mask_prob: float,
    mask_len: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    padding_mask: Tensor | None = None,
    min_masks: int = 2,
    selection: str = "static",
    other: float = 0.0,
    no_overlap: bool = False,
    min_space: int = 1,
    require_same_masks: bool = True,
    mask_dropout: float = 0.0,
) -> Tensor:
    """Boolean span mask, True = masked.

    Per row, `num = max(min_masks, floor(mask_prob * size / mask_len + u))` spans are drawn,
    with u ~ U[0, 1) drawn once for the batch (or per row when a padding mask is given,
    since sizes then differ). Spans may overlap and merge unless `no_overlap`. With
    `require_same_masks`, every row keeps a random subset of the smallest row's masked
    count, so targets can be reshaped to (B, M, C). Padding must be right-aligned and is
    never masked.

    The defaults are `MaskingConfig`'s, fairseq's pretraining values (min_masks 2 is
    hard-coded in fairseq's model; min_space 1).

    Shape: padding_mask (B, T), True = pad. Returns (B, T) bool.
    """
    batch, num_frames = shape
    if batch < 1 or num_frames < 1:
        raise ValueError(f"shape must be (B >= 1, T >= 1), got {shape}")
    if not 0.0 <= mask_prob < math.inf:
        raise ValueError(f"mask_prob must be finite and >= 0, got {mask_prob}")
    if mask_len < 1:
        raise ValueError(f"mask_len must be >= 1, got {mask_len}")
    if min_masks < 0:
        raise ValueError(f"min_masks must be >= 0, got {min_masks}")
    if min_space < 0:
        raise ValueError(f"min_space must be >= 0, got {min_space}")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    # Uniform lengths are fairseq's np.random.randint(other, 2M + 1): an `other` above 2M
    # makes NumPy raise, a negative one draws empty spans. For normal lengths `other` is
    # the standard deviation (torch.normal raises on a negative one).
    if selection == "uniform" and not 0 <= other <= 2 * mask_len:
        raise ValueError(f"other must be in [0, 2 * mask_len] for uniform selection, got {other}")
    if selection == "normal" and not 0 <= other < math.inf:
        raise ValueError(f"other (the standard deviation) must be finite and >= 0 for normal selection, got {other}")
    if not 0.0 <= mask_dropout < 1.0:
        raise ValueError(f"mask_dropout must be in [0, 1), got {mask_dropout}")
    if padding_mask is not None:
        if padding_mask.shape != (batch, num_frames):
            raise ValueError(
                f"padding_mask must have shape {(batch, num_frames)}, got {tuple(padding_mask.shape)}"
            )
        device = padding_mask.device
    device = torch.device(device) if device is not None else torch.device("cpu")

    def rand(*size: int) -> Tensor:
        return torch.rand(size, generator=generator, device=device)

    # --- number of spans per row
    if padding_mask is None:
        sizes = torch.full((batch,), num_frames, dtype=torch.long, device=device)
        u = rand(1).expand(batch)  # one draw shared by all rows, as fairseq
    else:
        sizes = (~padding_mask).sum(dim=1)  # (B,)
        u = rand(batch)
    num_spans = torch.floor(mask_prob * sizes / mask_len + u).long().clamp(min=min_masks)
    max_spans = max(min_masks, math.floor(mask_prob * num_frames / mask_len + 1))  # host bound N
    span_ids = torch.arange(max_spans, device=device)
    span_valid = span_ids.unsqueeze(0) < num_spans.unsqueeze(1)  # (B, N)

    # --- span lengths (B, N), zero for spans a row does not draw
    lengths, max_len = _span_lengths(
        (batch, max_spans), mask_len, selection, other, num_frames, rand, generator, device
    )
    lengths = torch.where(span_valid, lengths, torch.zeros_like(lengths))
    all_zero = lengths.sum(dim=1) == 0  # fairseq: if every length is 0, span 0 gets min(M, sz-1)
    first = torch.minimum(torch.full_like(sizes, mask_len), sizes - 1).clamp(min=0)
    lengths[:, 0] = torch.where(all_zero & span_valid[:, 0], first, lengths[:, 0])

    if no_overlap:
        mask = _place_without_overlap(
            lengths, span_valid, sizes, num_frames, min_space, rand, generator, device
        )
    else:
        mask = _place_with_overlap(lengths, span_valid, num_spans, sizes, num_frames, max_len, rand)

    if require_same_masks:
        counts = mask.sum(dim=1)
        mask = _keep_random_subset(mask, counts.min().expand(batch), rand)
    if mask_dropout > 0:
        counts = mask.sum(dim=1)
        mask = _keep_random_subset(mask, counts - torch.round(counts * mask_dropout).long(), rand)
    return mask


def _span_lengths(size, mask_len, selection, other, num_frames, rand, generator, device):
    """Lengths (B, N) drawn from `selection`, and a host-side bound on them."""
    if selection == "static":
        return torch.full(size, mask_len, dtype=torch.long, device=device), mask_len
    if selection == "uniform":  # integers in [other, 2M], as np.random.randint(other, 2M + 1)
        low = int(other)
        lengths = low + torch.floor(rand(*size) * (2 * mask_len + 1 - low)).long()
        return lengths, 2 * mask_len
    if selection == "normal":
        lengths = torch.normal(
            float(mask_len), float(other), size, generator=generator, device=device
        )
        lengths = torch.round(lengths).long().clamp(min=1)
    else:  # poisson
        rates = torch.full(size, float(mask_len), device=device)
        lengths = torch.round(torch.poisson(rates, generator=generator)).long()
    # A span longer than the sequence is cut at the end anyway.
    return lengths.clamp(max=num_frames), num_frames


def _place_with_overlap(lengths, span_valid, num_spans, sizes, num_frames, max_len, rand):
    """fairseq's default placement: distinct uniform starts in [0, size - min_len)."""
    batch, max_spans = lengths.shape
    big = torch.iinfo(torch.long).max
    min_len = torch.where(span_valid, lengths, torch.full_like(lengths, big)).amin(dim=1)  # amin: min(dim) on int64 is ~1000x slower on CPU (torch 2.13)
    min_len = torch.where(num_spans > 0, min_len, torch.zeros_like(min_len))
    # fairseq: if size - min_len <= num, shrink min_len so num distinct starts exist.
    min_len = torch.where(sizes - min_len <= num_spans, sizes - num_spans - 1, min_len)
    start_range = sizes - min_len  # (B,), >= num_spans by construction

    # Distinct uniform starts: the first `num` positions of a random permutation of
    # [0, start_range), obtained by sorting random keys with invalid positions pushed last.
    width = max(num_frames, max_spans + 1)
    keys = rand(batch, width)
    positions = torch.arange(width, device=lengths.device)
    keys = keys.masked_fill(positions.unsqueeze(0) >= start_range.unsqueeze(1), 2.0)
    starts = keys.argsort(dim=1)[:, :max_spans]  # (B, N)

    offsets = torch.arange(max_len, device=lengths.device)
    frames = starts.unsqueeze(2) + offsets.view(1, 1, -1)  # (B, N, S)
    keep = (
        span_valid.unsqueeze(2)
        & (offsets.view(1, 1, -1) < lengths.unsqueeze(2))
        & (frames < sizes.view(-1, 1, 1))
    )
    return _scatter_frames(frames, keep, num_frames)


def _place_without_overlap(lengths, span_valid, sizes, num_frames, min_space, rand, generator, device):
    """fairseq's `no_overlap` placement: longest spans first, each into a free interval
    chosen with probability proportional to its length, keeping `min_space` gaps.

    Loops over spans (not frames), vectorised over the batch. Intervals live in a fixed
    table of N + 1 slots; an empty slot has start == end.
    """
    batch, max_spans = lengths.shape
    big = torch.iinfo(torch.long).max
    keep_len = torch.where(span_valid, lengths, torch.full_like(lengths, big)).amin(dim=1)  # amin: min(dim) on int64 is ~1000x slower on CPU (torch 2.13)
    # Longest first; spans a row does not draw have length 0 and sort last.
    sorted_lengths = lengths.sort(dim=1, descending=True).values  # (B, N)
    starts = torch.zeros(batch, max_spans + 1, dtype=torch.long, device=device)
    ends = torch.zeros_like(starts)
    ends[:, 0] = sizes
    active = torch.ones(batch, dtype=torch.bool, device=device)
    rows = torch.arange(batch, device=device)
    mask = torch.zeros(batch, num_frames, dtype=torch.bool, device=device)
    frame_ids = torch.arange(num_frames, device=device)
    for k in range(max_spans):
        length = sorted_lengths[:, k]  # (B,)
        seg = ends - starts  # (B, N+1)
        weights = torch.where(seg >= (length + min_space).unsqueeze(1), seg, torch.zeros_like(seg))
        total = weights.sum(dim=1)
        # fairseq stops a row as soon as no interval can hold the next span.
        active = active & span_valid[:, k] & (total > 0)
        safe = weights.float() + (total == 0).float().unsqueeze(1)  # multinomial needs mass
        slot = torch.multinomial(safe, 1, generator=generator).squeeze(1)  # (B,)
        s, e = starts[rows, slot], ends[rows, slot]
        start = s + torch.floor(rand(batch) * (e - length - s).clamp(min=0)).long()
        span = (frame_ids.unsqueeze(0) >= start.unsqueeze(1)) & (
            frame_ids.unsqueeze(0) < (start + length).unsqueeze(1)
        )
        mask |= span & active.unsqueeze(1)
        keep_left = start - s - min_space >= keep_len
        keep_right = e - start - length - min_space > keep_len
        new_s = torch.where(keep_left, s, torch.zeros_like(s))
        new_e = torch.where(keep_left, start - min_space + 1, torch.zeros_like(e))
        right_s = torch.where(keep_right, start + length + min_space, torch.zeros_like(s))
        right_e = torch.where(keep_right, e, torch.zeros_like(e))
        upd = active
        starts[rows, slot] = torch.where(upd, new_s, s)
        ends[rows, slot] = torch.where(upd, new_e, e)
        starts[:, k + 1] = torch.where(upd, right_s, starts[:, k + 1])
        ends[:, k + 1] = torch.where(upd, right_e, ends[:, k + 1])
    return mask & (frame_ids.unsqueeze(0) < sizes.unsqueeze(1))


def _scatter_frames(frames: Tensor, keep: Tensor, num_frames: int) -> Tensor:
    """(B, N, S) frame indices with a keep flag -> (B, T) bool mask."""
    batch = frames.shape[0]
    # Send dropped indices to an overflow column, cut off afterwards.
    frames = torch.where(keep, frames, torch.full_like(frames, num_frames))
    frames = frames.clamp(max=num_frames).view(batch, -1)  # (B, N, S) -> (B, N*S)
    mask = torch.zeros(batch, num_frames + 1, dtype=torch.bool, device=frames.device)
    mask.scatter_(1, frames, True)
    return mask[:, :num_frames]


def _keep_random_subset(mask: Tensor, keep_counts: Tensor, rand) -> Tensor:
    """Keep a uniformly random subset of `keep_counts[b]` masked frames in each row.

    Masked frames get random keys, unmasked ones sort last; a frame stays masked if its
    rank among its row's keys is below the row's count. No host synchronisation.
    """
    keys = rand(*mask.shape).masked_fill(~mask, 2.0)
    order = keys.argsort(dim=1)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(mask.shape[1], device=mask.device).expand_as(order))
    return mask & (rank < keep_counts.unsqueeze(1))


def compute_channel_mask(
    batch: int,
    num_channels: int,
    *,
    mask_prob: float,
    mask_len: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    selection: str = "static",
    other: float = 0.0,
    no_overlap: bool = False,
    min_space: int = 1,
) -> Tensor:
    """Channel mask (fairseq `mask_channel_*`): span masking over channels with min_masks 0.

    The same channels are masked at every time step of an utterance; the caller zeroes them.

    Returns (B, D) bool, True = masked channel.
    """
    return compute_span_mask(
        (batch, num_channels),
        mask_prob=mask_prob,
        mask_len=mask_len,
        generator=generator,
        device=device,
        min_masks=0,
        selection=selection,
        other=other,
        no_overlap=no_overlap,
        min_space=min_space,
        require_same_masks=True,
    )
