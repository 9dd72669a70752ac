"""DataLoader wiring (whole batches per worker, crops seeded by batch position) and the
resumable stream of batches the trainer consumes.

The sampler runs in the main process and hands each worker a key `(crop seed, indices)`;
the worker reads and collates the whole batch. Crops depend only on (seed, epoch, batch
position), never on which worker got the batch or where a run resumed.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from wav2vec2.data.batching import STREAM_CROP, TokenBudgetBatchSampler, batch_seed
from wav2vec2.data.dataset import Collater, RawAudioDataset
from wav2vec2.data.shards import ShardBatchSampler, ShardedAudioDataset

BatchKey = tuple[int, list[int]]  # (crop seed, dataset indices)


class _BatchKeys(torch.utils.data.Sampler):
    """Turns a TokenBudgetBatchSampler into a stream of BatchKeys."""

    def __init__(self, batch_sampler: TokenBudgetBatchSampler, seed: int) -> None:
        self.batch_sampler = batch_sampler
        self.seed = seed

    def __iter__(self) -> Iterator[BatchKey]:
        epoch = self.batch_sampler.epoch
        for pos, indices in self.batch_sampler.iter_with_position():
            yield batch_seed(self.seed, epoch, pos, stream=STREAM_CROP), indices

    def __len__(self) -> int:
        return len(self.batch_sampler)


class _CollatedBatches(torch.utils.data.Dataset):
    """Dataset view whose items are whole collated batches, addressed by BatchKey."""

    def __init__(self, dataset: RawAudioDataset, collater: Collater) -> None:
        self.dataset = dataset
        self.collater = collater

    def __getitem__(self, key: BatchKey) -> dict[str, torch.Tensor]:
        seed, indices = key
        return self.collater([self.dataset[i] for i in indices], crop_seed=seed)


def make_batch_sampler(dataset: RawAudioDataset, *, shuffle_buffer: int = 10_000, **kwargs: Any,
                       ) -> TokenBudgetBatchSampler:
    """The batch sampler a dataset is read with: shard by shard for a `ShardedAudioDataset`
    (`shuffle_buffer` utterances per window), else over the whole manifest. `kwargs` are
    `TokenBudgetBatchSampler`'s."""
    if isinstance(dataset, ShardedAudioDataset):
        return ShardBatchSampler(dataset.shard_of, dataset.sizes, shuffle_buffer=shuffle_buffer, **kwargs)
    return TokenBudgetBatchSampler(dataset.sizes, **kwargs)


def build_dataloader(
    dataset: RawAudioDataset,
    batch_sampler: TokenBudgetBatchSampler,
    *,
    seed: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    prefetch_factor: int | None = None,
    timeout: float = 0.0,
) -> torch.utils.data.DataLoader:
    """DataLoader yielding collated batches: pretraining crops, or padding if dataset.pad.

    `timeout` (seconds, 0 = none, workers only): a worker that delivers no batch for that
    long (hung on a dead network mount, say) ends the run with an error instead of a hang.

    Call `batch_sampler.set_epoch(e)` before iterating each epoch and
    `batch_sampler.mark_consumed()` after each used batch (see TokenBudgetBatchSampler).
    """
    collater = Collater(pad=dataset.pad, max_sample_size=dataset.max_sample_size)
    return torch.utils.data.DataLoader(
        _CollatedBatches(dataset, collater),
        sampler=_BatchKeys(batch_sampler, seed),
        batch_size=None,  # items are already batches
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        # Its own generator: otherwise each new iterator draws its worker base seed from
        # torch's global RNG, which would shift dropout streams and break exact resume.
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_ignore_interrupts if num_workers > 0 else None,
        timeout=timeout if num_workers > 0 else 0.0,
    )


def _ignore_interrupts(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: the trainer decides what it means (checkpoint
    # and stop); a worker that died of it would only add a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def updates_per_epoch(num_batches: int, *, num_replicas: int, update_freq: int) -> int:
    """Updates in an epoch of `num_batches` batches (all ranks'), when no update spans an
    epoch boundary: each rank's shard is padded to ceil(num_batches / num_replicas) slots
    (fairseq's `ShardedIterator` with its empty fill), cut into groups of `update_freq`
    (`GroupedIterator`), the last one shorter."""
    slots = -(-num_batches // num_replicas)
    return -(-slots // update_freq)


@dataclass
class Update:
    """This rank's share of one optimizer update."""

    micro_batches: list[tuple[int, int, dict[str, Any]]]
    """(epoch, position, batch) of each micro-batch: `update_freq` of them, or fewer at the
    end of an epoch; position is the batch's index in the epoch's global batch order."""
    epoch: int
    """The epoch of the update; when updates span epochs, the last epoch it finished, if
    any, else that of its batches."""
    end_of_epoch: bool
    """The update took the last batch of its epoch (fairseq's `end_of_epoch`, which the
    validation and snapshot cadence reads)."""
    stand_in: bool = False
    """This rank's shard has no batch left for the update (it is one batch shorter than
    others'): `micro_batches` is one stand-in, the epoch's first batch, to run at zero weight
    so that the rank joins the gradient all-reduce. fairseq's dummy batch."""
    padding: int = 0
    """The last `padding` micro-batches are such stand-ins too, added so that this rank runs
    as many forwards as rank 0 (`BatchStream(even_forwards=True)`, for FSDP); 0 otherwise."""


class BatchStream:
    """Endless, resumable stream of this rank's training updates, epoch after epoch.

    `next_update()` gives this rank's micro-batches of one update; `next()` a single batch.
    Each batch comes as `(epoch, position, batch)`, where `position` is the batch's index
    in the epoch's global (all-rank) batch order. DataLoader workers prefetch, so the
    sampler cannot know how far training got; the stream counts the batches the trainer
    actually *took*, and that count (with the epoch) is the position a checkpoint stores.

    With `spans_epochs` False (fairseq) the epoch's batches are grouped into updates within
    the epoch; the sampler must then deal every batch (`drop_last=False`): rank r's k-th
    slot is global batch r + k * num_replicas, and a slot past the last batch is empty,
    the stand-in's. With True, updates take `update_freq` batches wherever they fall.
    """

    def __init__(
        self,
        dataset: RawAudioDataset,
        sampler: TokenBudgetBatchSampler,
        *,
        seed: int,
        num_workers: int,
        update_freq: int = 1,
        spans_epochs: bool = True,
        pin_memory: bool = False,
        timeout: float = 0.0,
        even_forwards: bool = False,
    ) -> None:
        """`even_forwards`: pad each update with zero-weight stand-ins to as many micro-batches
        as rank 0's (whose share is never shorter), for FSDP, where every forward is a collective."""
        if not spans_epochs and sampler.drop_last:
            raise ValueError("updates within epochs need a sampler that deals every batch (drop_last=False)")
        self.sampler = sampler
        self.seed = seed
        self.update_freq = update_freq
        self.spans_epochs = spans_epochs
        self.even_forwards = even_forwards
        self.loader = build_dataloader(
            dataset, sampler, seed=seed, num_workers=num_workers, pin_memory=pin_memory, timeout=timeout
        )
        self.epoch = sampler.epoch
        self.consumed = sampler.num_batches_consumed
        self._it: Iterator[dict[str, Any]] | None = None

    def _start_epoch(self) -> None:
        self.sampler.set_epoch(self.epoch)
        if len(self.sampler) == 0 and self.consumed == 0:
            raise ValueError(
                "the training set makes no batch for this rank: add data, lower "
                "data.required_batch_size_multiple or use fewer processes"
            )
        self._it = iter(self.loader)

    def next(self) -> tuple[int, int, dict[str, Any]]:
        if self._it is None:
            self._start_epoch()
        batch = next(self._it, None)
        while batch is None:  # epoch finished: the next one starts at batch 0
            self._next_epoch()
            self._start_epoch()
            batch = next(self._it, None)
        position = self.sampler.rank + self.consumed * self.sampler.num_replicas
        self.consumed += 1
        self.sampler.mark_consumed()
        return self.epoch, position, batch

    def _next_epoch(self) -> None:
        self.epoch += 1
        self.consumed = 0
        self._it = None

    def next_update(self) -> Update:
        """This rank's micro-batches of the next update."""
        if self.spans_epochs:
            micro, ended = [], []
            for _ in range(self.update_freq):
                micro.append(self.next())
                if self.consumed == self.sampler.rank_batches(self.epoch):
                    ended.append(self.epoch)
            return Update(micro, epoch=ended[-1] if ended else self.epoch, end_of_epoch=bool(ended))
        num_batches = len(self.sampler.epoch_batches(self.epoch))
        if num_batches == 0:
            raise ValueError("the training set makes no batch: add data or lower data.required_batch_size_multiple")
        rank, replicas = self.sampler.rank, self.sampler.num_replicas
        slots = -(-num_batches // replicas)
        if self.consumed >= slots:  # resumed at the very end of an epoch
            self._next_epoch()
            return self.next_update()
        group = range(self.consumed, min(self.consumed + self.update_freq, slots))
        epoch = self.epoch
        micro = [self.next() for slot in group if rank + slot * replicas < num_batches]
        stand_in = not micro
        wanted = sum(slot * replicas < num_batches for slot in group) if self.even_forwards else 1  # rank 0's
        padding = max(wanted - len(micro), 1 if stand_in else 0)
        micro += [self._stand_in(epoch) for _ in range(padding)]
        end_of_epoch = group.stop == slots
        if end_of_epoch:
            self._next_epoch()
            self.sampler.set_epoch(self.epoch)  # so that a checkpoint now stores the next epoch
        return Update(micro, epoch=epoch, end_of_epoch=end_of_epoch, stand_in=stand_in, padding=padding)

    def _stand_in(self, epoch: int) -> tuple[int, int, dict[str, Any]]:
        """The epoch's first batch (global position 0), read here: what a rank without a
        batch runs at zero weight. Its replaced files, if any, are its owner's to report."""
        indices = self.sampler.epoch_batches(epoch)[0].tolist()
        batch = self.loader.dataset[(batch_seed(self.seed, epoch, 0, stream=STREAM_CROP), indices)]
        batch.pop("bad_files", None)
        return epoch, 0, batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed, "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.epoch, self.consumed = state["epoch"], state["consumed"]
        self._it = None
