from __future__ import annotations

import numpy as np
import pytest
import torch

from wav2vec2.data import RawAudioDataset, TokenBudgetBatchSampler, batch_by_size, build_dataloader


def _slow_batch_by_size(indices, sizes, max_tokens, max_sentences, mult):
    """Try every end position from each start: the definition, not the algorithm."""
    out, start = [], 0
    while start < len(indices):
        best = start + 1
        for end in range(start + 1, len(indices) + 1):
            n = end - start
            if n * max(sizes[indices[start:end]]) > max_tokens or (max_sentences and n > max_sentences):
                break
            best = end
        n = best - start
        if n > mult:
            n -= n % mult
        out.append(list(indices[start : start + n]))
        start += n
    return out


@pytest.mark.parametrize("trial", range(30))
def test_batch_by_size_matches_definition(trial):
    rng = np.random.default_rng(trial)
    sizes = rng.integers(1, 100, rng.integers(1, 80))
    order = np.argsort(-sizes, kind="stable") if trial % 2 else rng.permutation(len(sizes))
    max_tokens = int(rng.integers(100, 600))
    max_sentences = [None, 3, 11][trial % 3]
    mult = [1, 2, 8][trial % 3 - 1]
    got = batch_by_size(order, sizes, max_tokens=max_tokens, max_sentences=max_sentences,
                        required_batch_size_multiple=mult)
    assert [b.tolist() for b in got] == _slow_batch_by_size(order, sizes, max_tokens, max_sentences, mult)
    for b in got:
        assert len(b) * sizes[b].max() <= max_tokens
        assert max_sentences is None or len(b) <= max_sentences
        assert len(b) < mult or len(b) % mult == 0
    assert sorted(np.concatenate(got).tolist()) == sorted(order.tolist())


def test_spec_example_batch_sizes():
    # fairseq's batch_by_size: max_tokens 1.4M gives batches of 5 for 15.6 s clips, 8 (not 14) for 6.25 s.
    for clip, want in ((250_000, 5), (100_000, 8)):
        sizes = np.full(64, clip)
        got = batch_by_size(np.arange(64), sizes, max_tokens=1_400_000, required_batch_size_multiple=8)
        assert len(got[0]) == want


def test_item_over_budget_is_an_error():
    with pytest.raises(ValueError, match="item 1 has 500 samples > max_tokens=100"):
        batch_by_size(np.arange(2), np.array([5, 500]), max_tokens=100)


def _sizes(n=200, seed=0):
    return np.random.default_rng(seed).integers(1000, 50000, n)


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return [tuple(b) for b in sampler]


def test_budget_order_epochs_and_seeds():
    sizes = _sizes()
    s = TokenBudgetBatchSampler(sizes, max_tokens=200_000, max_sentences=20, seed=1)
    e1, e2 = _epoch(s, 1), _epoch(s, 2)
    for b in e1:
        assert len(b) * sizes[list(b)].max() <= 200_000 and len(b) <= 20 and (len(b) < 8 or len(b) % 8 == 0)
    assert e1 != e2 and sorted(sum(e1, ())) == list(range(len(sizes)))
    again = TokenBudgetBatchSampler(sizes, max_tokens=200_000, max_sentences=20, seed=1)
    assert _epoch(again, 2) == e2
    other = TokenBudgetBatchSampler(sizes, max_tokens=200_000, max_sentences=20, seed=2)
    assert _epoch(other, 2) != e2
    # Within a batch, items are adjacent in longest-first order.
    for b in e1:
        assert max(sizes[list(b)]) - min(sizes[list(b)]) < 0.5 * (sizes.max() - sizes.min())


def test_no_shuffle_is_longest_first():
    sizes = _sizes(50)
    flat = sum(_epoch(TokenBudgetBatchSampler(sizes, max_tokens=10**6, shuffle=False), 1), ())
    assert list(sizes[list(flat)]) == sorted(sizes, reverse=True)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_disjoint_and_equal(world):
    sizes = _sizes()
    kw = dict(max_tokens=150_000, required_batch_size_multiple=2, seed=4, num_replicas=world)
    for epoch in (1, 2):
        per_rank = [_epoch(TokenBudgetBatchSampler(sizes, rank=r, **kw), epoch) for r in range(world)]
        assert len({len(p) for p in per_rank}) == 1
        assert len(per_rank[0]) == len(TokenBudgetBatchSampler(sizes, rank=0, **kw))
        seen = [i for p in per_rank for b in p for i in b]
        assert len(seen) == len(set(seen))
        total = len(TokenBudgetBatchSampler(sizes, **kw).epoch_batches(epoch))
        assert len(per_rank[0]) == total // world


def test_uneven_ranks_without_drop_last():
    sizes = _sizes()
    kw = dict(max_tokens=150_000, seed=4, num_replicas=3, drop_last=False)
    per_rank = [_epoch(TokenBudgetBatchSampler(sizes, rank=r, **kw), 1) for r in range(3)]
    assert sorted(i for p in per_rank for b in p for i in b) == list(range(len(sizes)))


def test_resume_mid_epoch_yields_remaining_batches():
    sizes = _sizes()
    kw = dict(max_tokens=150_000, seed=3, num_replicas=2, rank=1)
    s = TokenBudgetBatchSampler(sizes, **kw)
    s.set_epoch(5)
    full, used = [], 0
    for b in s:
        full.append(b)
        if used < 7:  # the trainer used 7 batches before saving
            s.mark_consumed()
            used += 1
    s2 = TokenBudgetBatchSampler(sizes, **kw)
    s2.load_state_dict(_state_after(sizes, kw, 7))
    s2.set_epoch(5)  # the trainer calls this on resume too; same epoch keeps the position
    assert len(s2) == len(full) - 7
    assert list(s2) == full[7:]
    assert list(s2) == full  # the following iteration is a whole epoch again
    s2.set_epoch(6)
    assert s2.state_dict()["num_batches_consumed"] == 0


def test_one_ranks_state_restores_every_rank_when_dealt_unevenly():
    """A checkpoint stores rank 0's sampler state; with drop_last=False rank 0 may hold one
    batch more than rank 1, and rank 1 must still resume mid-epoch from it."""
    sizes = _sizes()
    kw = dict(max_tokens=140_000, seed=4, num_replicas=2, drop_last=False)  # 49 batches
    ranks = [TokenBudgetBatchSampler(sizes, rank=r, **kw) for r in range(2)]
    assert ranks[0].rank_batches(1) == ranks[1].rank_batches(1) + 1  # this seed deals unevenly
    it = iter(ranks[0])
    for _ in range(2):
        next(it)
        ranks[0].mark_consumed()
    state = ranks[0].state_dict()
    resumed = TokenBudgetBatchSampler(sizes, rank=1, **kw)
    resumed.load_state_dict(state)
    assert [tuple(b) for b in resumed] == _epoch(TokenBudgetBatchSampler(sizes, rank=1, **kw), 1)[2:]


def test_old_states_without_the_epochs_batch_count_still_load():
    sizes = _sizes()
    kw = dict(max_tokens=150_000, seed=3, num_replicas=2, rank=1)
    state = _state_after(sizes, kw, 3)
    del state["epoch_batches"]
    s = TokenBudgetBatchSampler(sizes, **kw)
    s.load_state_dict(state)
    assert s.num_batches_consumed == 3


def _state_after(sizes, kw, n):
    s = TokenBudgetBatchSampler(sizes, **kw)
    s.set_epoch(5)
    it = iter(s)
    for _ in range(n):
        next(it)
        s.mark_consumed()
    return s.state_dict()


def test_load_state_rejects_other_settings():
    sizes = _sizes()
    state = TokenBudgetBatchSampler(sizes, max_tokens=150_000).state_dict()
    with pytest.raises(ValueError, match=r"had \d+ batches in epoch 1, this sampler makes"):
        TokenBudgetBatchSampler(sizes, max_tokens=100_000).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        TokenBudgetBatchSampler(sizes, max_tokens=150_000, seed=9).load_state_dict(state)


def test_loader_resume_with_workers(manifest):
    ds = RawAudioDataset(manifest, max_sample_size=12000)
    kw = dict(max_tokens=30000, required_batch_size_multiple=1, seed=2)
    sampler = TokenBudgetBatchSampler(ds.sizes, **kw)
    sampler.set_epoch(3)
    loader = build_dataloader(ds, sampler, seed=7, num_workers=2, persistent_workers=True)
    full = []
    for batch in loader:
        full.append(batch)
        if len(full) <= 3:
            sampler.mark_consumed()
            state = sampler.state_dict()
    assert state["num_batches_consumed"] == 3 and len(full) > 4

    resumed = TokenBudgetBatchSampler(ds.sizes, **kw)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)
    rest = list(build_dataloader(ds, resumed, seed=7, num_workers=1, pin_memory=True))
    assert len(rest) == len(full) - 3
    for a, b in zip(rest, full[3:]):
        assert torch.equal(a["id"], b["id"]) and torch.equal(a["source"], b["source"])


def test_batch_seeds_depend_on_position_not_on_rank() -> None:
    from wav2vec2.data import STREAM_CROP, batch_seed

    seeds = {batch_seed(1, e, p, stream=1) for e in (1, 2) for p in range(100)}
    assert len(seeds) == 200 and all(0 <= s < 2**63 for s in seeds)
    assert batch_seed(1, 1, 5, stream=1) != batch_seed(1, 1, 5, stream=2)
    # Crops keep the seeds they had before the streams were unified (3-word entropy).
    import numpy as np

    state = np.random.SeedSequence([1, 2, 3]).generate_state(2, np.uint32)
    assert batch_seed(1, 2, 3, stream=STREAM_CROP) == int(state[0]) << 31 | int(state[1]) >> 1
