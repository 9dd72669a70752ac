from __future__ import annotations

import numpy as np
import pytest
import torch

from wav2vec2.data import (
    Collater,
    RawAudioDataset,
    TokenBudgetBatchSampler,
    build_dataloader,
    crop_to_shortest,
    pad_to_longest,
)


def _items(lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"id": i, "source": torch.randn(n, generator=g)} for i, n in enumerate(lens)]


def _is_slice(window, full):
    n = len(window)
    return any(torch.equal(full[s : s + n], window) for s in range(len(full) - n + 1))


@pytest.mark.parametrize("cap, want", [(None, 37), (20, 20)])
def test_crop_to_shortest_crops_to_the_batch_min(cap, want):
    items = _items([50, 37, 91])
    out = crop_to_shortest(items, max_sample_size=cap, generator=torch.Generator().manual_seed(0))
    assert out["source"].shape == (3, want) and "padding_mask" not in out
    assert out["id"].tolist() == [0, 1, 2] and out["id"].dtype == torch.long
    for row, it in zip(out["source"], items):
        assert _is_slice(row, it["source"])


def test_crops_reproducible_and_vary_with_seed():
    items = _items([300, 120, 500])
    a = crop_to_shortest(items, max_sample_size=None, generator=torch.Generator().manual_seed(5))
    b = crop_to_shortest(items, max_sample_size=None, generator=torch.Generator().manual_seed(5))
    c = crop_to_shortest(items, max_sample_size=None, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a["source"], b["source"]) and not torch.equal(a["source"], c["source"])


def test_pad_to_longest_without_padding_has_no_mask():
    out = pad_to_longest(_items([40, 40]), max_sample_size=None, generator=torch.Generator().manual_seed(0))
    assert out["source"].shape == (2, 40) and "padding_mask" not in out
    out = pad_to_longest(_items([50, 60]), max_sample_size=40, generator=torch.Generator().manual_seed(0))
    assert out["source"].shape == (2, 40) and "padding_mask" not in out  # both cropped


@pytest.mark.parametrize("cap", [None, 60])
def test_pad_to_longest_pads_right_with_mask(cap):
    lens = [50, 37, 91]
    items = _items(lens)
    out = pad_to_longest(items, max_sample_size=cap, generator=torch.Generator().manual_seed(0))
    target = 91 if cap is None else 60
    assert out["source"].shape == out["padding_mask"].shape == (3, target)
    assert out["padding_mask"].dtype == torch.bool
    for b, n in enumerate(lens):
        valid = min(n, target)
        assert (~out["padding_mask"][b]).sum() == valid and not out["padding_mask"][b, :valid].any()
        assert (out["source"][b, valid:] == 0).all()
        if n <= target:
            assert torch.equal(out["source"][b, :n], items[b]["source"])
        else:
            assert _is_slice(out["source"][b], items[b]["source"])


def test_empty_batch():
    with pytest.raises(ValueError, match="empty batch"):
        crop_to_shortest([], max_sample_size=None, generator=torch.Generator())


def test_collater_pickles():
    import pickle

    col = pickle.loads(pickle.dumps(Collater(pad=True, max_sample_size=10)))
    assert col(_items([5, 20]), crop_seed=1)["source"].shape == (2, 10)


def _epoch(ds, workers, seed=9, epoch=2):
    sampler = TokenBudgetBatchSampler(ds.sizes, max_tokens=40000, required_batch_size_multiple=2, seed=1)
    sampler.set_epoch(epoch)
    return list(build_dataloader(ds, sampler, seed=seed, num_workers=workers))


def test_loader_crops_independent_of_workers(manifest):
    ds = RawAudioDataset(manifest, max_sample_size=12000)
    single, multi = _epoch(ds, 0), _epoch(ds, 2)
    assert len(single) == len(multi) > 1
    for a, b in zip(single, multi):
        assert torch.equal(a["id"], b["id"]) and torch.equal(a["source"], b["source"])
        assert a["source"].shape[1] == min(ds.sizes[a["id"].numpy()].min(), 12000)
    other_epoch = _epoch(ds, 0, epoch=3)
    assert not all(torch.equal(a["source"], b["source"]) for a, b in zip(single, other_epoch)
                   if a["source"].shape == b["source"].shape)


def test_loader_padding_masks_match_lengths(manifest):
    ds = RawAudioDataset(manifest, pad=True)
    padded = 0
    for batch in _epoch(ds, 0):
        lens = ds.sizes[batch["id"].numpy()]
        if "padding_mask" not in batch:  # every item as long as the batch
            assert (lens == batch["source"].shape[1]).all()
            continue
        padded += 1
        np.testing.assert_array_equal((~batch["padding_mask"]).sum(1).numpy(), lens)
    assert padded > 0
