"""DataLoader wiring (whole batches per worker, crops seeded by batch position) and the
resumable stream of batches the trainer consumes.

The sampler runs in the main process and hands each worker a key `(crop seed, indices)`;
the worker reads and collates the whole batch. Crops depend only on (seed, epoch, batch
position), never on which worker got the batch or where a run resumed.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import torch

from wav2vec2.data.batching import STREAM_CROP, TokenBudgetBatchSampler, batch_seed
from wav2vec2.data.dataset import Collater, RawAudioDataset

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


class BatchStream:
    """Endless, resumable stream of this rank's training batches, epoch after epoch.

    Yields `(epoch, position, batch)`, where `position` is the batch's index in the
    epoch's global (all-rank) batch order. DataLoader workers prefetch, so the sampler
    cannot know how far training got; the stream counts the batches the trainer actually
    *took*, and that count (with the epoch) is the position a checkpoint stores.
    """

    def __init__(
        self,
        dataset: RawAudioDataset,
        sampler: TokenBudgetBatchSampler,
        *,
        seed: int,
        num_workers: int,
        pin_memory: bool = False,
        timeout: float = 0.0,
    ) -> None:
        self.sampler = sampler
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
            self.epoch += 1
            self.consumed = 0
            self._start_epoch()
            batch = next(self._it, None)
        position = self.sampler.rank + self.consumed * self.sampler.num_replicas
        self.consumed += 1
        self.sampler.mark_consumed()
        return self.epoch, position, batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed, "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.epoch, self.consumed = state["epoch"], state["consumed"]
        self._it = None
