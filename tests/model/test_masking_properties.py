"""Property-based tests of span and channel masking (hypothesis draws the configurations).

What must hold for every configuration, valid or not:
- an invalid argument raises a ValueError naming it; nothing else is ever raised;
- the mask is (B, T) bool, never touches right-aligned padding, and is a function of the
  generator's seed;
- `require_same_masks` keeps, in every row, a subset of that row's own spans with exactly
  the smallest row's count; `mask_dropout` keeps a subset of the stated size;
- the span count fairseq guarantees: each row draws num >= max(min_masks, floor(p * size / M))
  spans at distinct starts, so (static lengths, overlaps allowed) it masks at least
  min(num, size - 1) frames, and at least num - 1 + M when the starts need no shrinking
  (size - M > num for every num the row can draw);
- `no_overlap` with min_space >= 1 keeps static spans apart: every run is exactly M long.

Equality with fairseq in distribution is tests/model/test_masking.py's job.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wav2vec2.model.masking import SELECTIONS, compute_channel_mask, compute_span_mask

# No deadline: two shared CPU cores make single examples slow at random. No example
# database: nothing is written into the repository.
SETTINGS = settings(deadline=None, max_examples=50, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def configs(draw, *, valid_only: bool = False):
    """Keyword arguments for compute_span_mask, plus the lengths behind the padding mask."""
    batch = draw(st.integers(1, 5))
    num_frames = draw(st.integers(1, 120))
    selection = draw(st.sampled_from(SELECTIONS))
    mask_len = draw(st.integers(1, 15) if valid_only else st.integers(-1, 15))
    if valid_only:
        hi = 2 * mask_len if selection == "uniform" else 4.0
        other = draw(st.floats(0.0, hi)) if selection in ("uniform", "normal") else 0.0
    else:
        other = draw(st.floats(-3.0, 40.0))
    kw = dict(
        mask_prob=draw(st.floats(0.0, 1.0) if valid_only else
                       st.one_of(st.floats(-0.5, 1.5), st.sampled_from([math.inf, math.nan]))),
        mask_len=mask_len,
        min_masks=draw(st.integers(0, 4) if valid_only else st.integers(-2, 4)),
        selection=selection,
        other=other,
        no_overlap=draw(st.booleans()),
        min_space=draw(st.integers(0, 3) if valid_only else st.integers(-2, 3)),
        require_same_masks=draw(st.booleans()),
        mask_dropout=draw(st.sampled_from([0.0, 0.0, 0.3]) if valid_only else st.floats(-0.2, 1.2)),
    )
    lengths = None
    if draw(st.booleans()):  # right-aligned padding, as the model builds it
        lengths = draw(st.lists(st.integers(1, num_frames), min_size=batch, max_size=batch))
    seed = draw(st.integers(0, 2**32 - 1))
    return (batch, num_frames), lengths, kw, seed


def _padding(shape, lengths):
    if lengths is None:
        return None
    return torch.arange(shape[1]).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)  # (B, T)


def _mask(shape, lengths, kw, seed, **override):
    return compute_span_mask(shape, padding_mask=_padding(shape, lengths),
                             generator=torch.Generator().manual_seed(seed), **{**kw, **override})


def _sizes(shape, lengths):
    return torch.tensor(lengths) if lengths is not None else torch.full((shape[0],), shape[1])


def _invalid_arguments(kw) -> list[str]:
    """The arguments a configuration gets wrong (the ValueError must name one of them)."""
    bad = []
    if not 0.0 <= kw["mask_prob"] < math.inf:
        bad.append("mask_prob")
    if kw["mask_len"] < 1:
        bad.append("mask_len")
    if not 0.0 <= kw["mask_dropout"] < 1.0:
        bad.append("mask_dropout")
    if kw["min_masks"] < 0:
        bad.append("min_masks")
    if kw["min_space"] < 0:
        bad.append("min_space")
    if kw["selection"] == "uniform" and not 0 <= kw["other"] <= 2 * kw["mask_len"]:
        bad.append("other")  # fairseq: np.random.randint(other, 2M + 1) lengths
    if kw["selection"] == "normal" and kw["other"] < 0:
        bad.append("other")  # a standard deviation
    return bad


@SETTINGS
@given(configs())
def test_any_configuration_masks_validly_or_names_the_bad_argument(case):
    shape, lengths, kw, seed = case
    bad = _invalid_arguments(kw)
    if bad:
        with pytest.raises(ValueError, match="|".join(bad)):
            _mask(shape, lengths, kw, seed)
        return
    mask = _mask(shape, lengths, kw, seed)
    assert mask.shape == shape and mask.dtype == torch.bool
    pad = _padding(shape, lengths)
    if pad is not None:
        assert not (mask & pad).any()
    if kw["require_same_masks"] and kw["mask_dropout"] == 0:
        counts = mask.sum(1)
        assert (counts == counts[0]).all()
    assert torch.equal(mask, _mask(shape, lengths, kw, seed))  # a function of the seed


@SETTINGS
@given(configs(valid_only=True))
def test_equal_rows_and_dropout_keep_subsets_of_the_drawn_spans(case):
    shape, lengths, kw, seed = case
    # The placement draws come first, so the same seed gives the same spans before the
    # equalisation and dropout steps.
    raw = _mask(shape, lengths, kw, seed, require_same_masks=False, mask_dropout=0.0)
    raw_counts = raw.sum(1)
    same = _mask(shape, lengths, kw, seed, require_same_masks=True, mask_dropout=0.0)
    assert not (same & ~raw).any()
    assert (same.sum(1) == raw_counts.min()).all()
    dropped = _mask(shape, lengths, kw, seed, require_same_masks=False, mask_dropout=0.3)
    assert not (dropped & ~raw).any()
    pad = _padding(shape, lengths)
    if pad is not None:  # the row's own spans (not the equalised ones, which may be empty)
        assert not (raw & pad).any()
    assert torch.equal(dropped.sum(1), raw_counts - torch.round(raw_counts * 0.3).long())


@SETTINGS
@given(configs(valid_only=True))
def test_rows_mask_at_least_min_masks_spans_worth(case):
    shape, lengths, kw, seed = case
    kw = {**kw, "selection": "static", "no_overlap": False, "mask_dropout": 0.0}
    raw = _mask(shape, lengths, kw, seed, require_same_masks=False)
    pad = _padding(shape, lengths)
    assert pad is None or not (raw & pad).any()
    mask_len = kw["mask_len"]
    for size, count in zip(_sizes(shape, lengths).tolist(), raw.sum(1).tolist()):
        num = max(kw["min_masks"], math.floor(kw["mask_prob"] * size / mask_len))  # fewest spans drawn
        most = max(kw["min_masks"], math.floor(kw["mask_prob"] * size / mask_len + 1))  # most spans drawn
        assert count >= min(num, size - 1), (size, num)
        if num > 0 and size - mask_len > most:  # no start shrinking: the last span fits whole
            assert count >= num - 1 + mask_len, (size, num)
    same = _mask(shape, lengths, kw, seed, require_same_masks=True)
    assert (same.sum(1) == raw.sum(1).min()).all()


def _runs(row: torch.Tensor) -> list[int]:
    edges = torch.diff(torch.cat([torch.zeros(1), row.float(), torch.zeros(1)]))
    return (torch.nonzero(edges == -1).flatten() - torch.nonzero(edges == 1).flatten()).tolist()


@SETTINGS
@given(configs(valid_only=True), st.integers(1, 3))
def test_no_overlap_keeps_static_spans_apart(case, min_space):
    shape, lengths, kw, seed = case
    kw = {**kw, "selection": "static", "no_overlap": True, "min_space": min_space, "mask_dropout": 0.0}
    raw = _mask(shape, lengths, kw, seed, require_same_masks=False)
    pad = _padding(shape, lengths)
    assert pad is None or not (raw & pad).any()
    for row in raw:
        assert all(run == kw["mask_len"] for run in _runs(row)), _runs(row)


@SETTINGS
@given(st.integers(1, 5), st.integers(1, 200), st.floats(0.0, 1.0), st.integers(1, 70),
       st.booleans(), st.integers(0, 2**32 - 1))
def test_channel_mask_rows_are_equal_and_seeded(batch, num_channels, mask_prob, mask_len, no_overlap, seed):
    def draw():
        return compute_channel_mask(batch, num_channels, mask_prob=mask_prob, mask_len=mask_len,
                                    no_overlap=no_overlap, generator=torch.Generator().manual_seed(seed))

    mask = draw()
    assert mask.shape == (batch, num_channels) and mask.dtype == torch.bool
    counts = mask.sum(1)
    assert (counts == counts[0]).all()
    assert torch.equal(mask, draw())
    if not no_overlap:  # min_masks is 0 for channels; spans have distinct starts, as for time
        assert counts[0] >= min(math.floor(mask_prob * num_channels / mask_len), num_channels - 1)
