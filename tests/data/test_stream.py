"""The batch stream's updates: grouped within an epoch as fairseq groups them (or running on
across epochs, the option), ranks padded with a stand-in, and resumable at every update."""

from __future__ import annotations

import math

import pytest

from wav2vec2.data import BatchStream, RawAudioDataset, TokenBudgetBatchSampler, updates_per_epoch

SAMPLER = dict(max_tokens=30000, required_batch_size_multiple=1, seed=2)


def _streams(manifest: str, world: int, update_freq: int, *, spans_epochs: bool = False) -> list[BatchStream]:
    """One stream per rank of `world`, as each rank's trainer builds it."""
    ds = RawAudioDataset(manifest, max_sample_size=12000)
    return [BatchStream(ds, TokenBudgetBatchSampler(ds.sizes, num_replicas=world, rank=r, drop_last=spans_epochs,
                                                    **SAMPLER),
                        seed=7, num_workers=0, update_freq=update_freq, spans_epochs=spans_epochs)
            for r in range(world)]


def _global_updates(streams: list[BatchStream], num_updates: int) -> list[dict]:
    """The next `num_updates` updates of all ranks together: epoch, end_of_epoch, the global
    positions of the real batches (stand-ins left out), the utterance ids, the stand-ins."""
    out = []
    for _ in range(num_updates):
        shares = [s.next_update() for s in streams]
        assert len({(u.epoch, u.end_of_epoch) for u in shares}) == 1, "ranks disagree on the epoch"
        real = [m for u in shares if not u.stand_in for m in u.micro_batches]
        out.append({
            "epoch": shares[0].epoch, "end": shares[0].end_of_epoch,
            "positions": sorted(p for e, p, _ in real),
            "batch_epochs": {e for e, _, _ in real},
            "ids": [int(i) for _, _, b in real for i in b["id"]],
            "stand_ins": [r for r, u in enumerate(shares) if u.stand_in],
        })
    return out


@pytest.mark.parametrize(("world", "update_freq"), [(1, 1), (1, 3), (2, 2), (3, 2), (2, 5), (8, 1), (1, 50)])
def test_updates_are_cut_within_each_epoch_as_fairseq_groups_them(manifest, world, update_freq):
    """Update g of an epoch is the epoch's global batches [g*F*W, (g+1)*F*W): fairseq's
    GroupedIterator(F) over each rank's shard, padded to ceil(N/W) slots. So the last update
    of an epoch is partial, no update mixes epochs or repeats an utterance, every batch is
    used once per epoch, and a rank with no batch left runs a stand-in."""
    streams = _streams(manifest, world, update_freq)
    num_batches = len(streams[0].sampler.epoch_batches(1))
    per_epoch = updates_per_epoch(num_batches, num_replicas=world, update_freq=update_freq)
    assert per_epoch == math.ceil(num_batches / (world * update_freq))  # = one process x W*F
    updates = _global_updates(streams, 3 * per_epoch)
    group = world * update_freq
    for i, u in enumerate(updates):
        epoch, g = 1 + i // per_epoch, i % per_epoch
        assert (u["epoch"], u["batch_epochs"], u["end"]) == (epoch, {epoch}, g == per_epoch - 1)
        assert u["positions"] == list(range(g * group, min((g + 1) * group, num_batches)))
        assert len(u["ids"]) == len(set(u["ids"]))
        # A stand-in where a rank's slot of the update is past the epoch's last batch.
        assert u["stand_ins"] == [r for r in range(world) if g * group + r >= num_batches]
    for e in range(3):
        ids = [i for u in updates[e * per_epoch:(e + 1) * per_epoch] for i in u["ids"]]
        assert sorted(ids) == list(range(12))  # every utterance once per epoch, none dropped


def test_with_updates_spanning_epochs_an_update_larger_than_the_set_repeats_utterances(manifest):
    """The option's other value (this project before #20): update_freq batches wherever they fall."""
    (stream,) = _streams(manifest, 1, 20, spans_epochs=True)
    update = stream.next_update()
    ids = [int(i) for _, _, b in update.micro_batches for i in b["id"]]
    epochs = sorted({e for e, _, _ in update.micro_batches})
    assert len(update.micro_batches) == 20 and len(epochs) > 2 and len(ids) > len(set(ids))
    assert update.end_of_epoch and update.epoch in epochs[-2:]  # the last epoch it finished


@pytest.mark.parametrize(("world", "update_freq"), [(1, 2), (2, 2), (3, 2)])
def test_a_resumed_stream_continues_with_the_same_updates(manifest, world, update_freq):
    """From a state saved after any update (mid-epoch, at an epoch's end, after a stand-in),
    fresh streams give the updates the uninterrupted ones give."""
    reference = _global_updates(_streams(manifest, world, update_freq), 12)
    for k in range(1, 9):
        streams = _streams(manifest, world, update_freq)
        assert _global_updates(streams, k) == reference[:k]
        states = [s.state_dict() for s in streams]
        resumed = _streams(manifest, world, update_freq)
        for stream, state in zip(resumed, states):
            stream.load_state_dict(state)
        assert _global_updates(resumed, 12 - k) == reference[k:], f"resumed after update {k}"


def test_updates_within_epochs_need_every_batch_dealt(manifest):
    ds = RawAudioDataset(manifest, max_sample_size=12000)
    with pytest.raises(ValueError, match="drop_last=False"):
        BatchStream(ds, TokenBudgetBatchSampler(ds.sizes, drop_last=True, **SAMPLER), seed=7, num_workers=0,
                    spans_epochs=False)
