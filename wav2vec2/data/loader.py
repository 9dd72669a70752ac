"""DataLoader wiring: whole batches per worker, crops seeded by batch position.

The sampler runs in the main process and hands each worker a key
`(crop_seed, indices)`; the worker reads and collates the whole batch. Crops depend only
on (seed, epoch, batch position), never on which worker got the batch or where a run
resumed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from wav2vec2.data.batching import TokenBudgetBatchSampler
from wav2vec2.data.dataset import Collater, RawAudioDataset, crop_seed

BatchKey = tuple[int, list[int]]  # (crop seed, dataset indices)


class _BatchKeys(torch.utils.data.Sampler):
    """Turns a TokenBudgetBatchSampler into a stream of BatchKeys."""

    def __init__(self, batch_sampler: TokenBudgetBatchSampler, seed: int) -> None:
        self.batch_sampler = batch_sampler
        self.seed = seed

    def __iter__(self) -> Iterator[BatchKey]:
        epoch = self.batch_sampler.epoch
        for pos, indices in self.batch_sampler.iter_with_position():
            yield crop_seed(self.seed, epoch, pos), indices

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
) -> torch.utils.data.DataLoader:
    """DataLoader yielding collated batches: pretraining crops, or padding if dataset.pad.

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
    )
