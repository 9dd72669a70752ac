"""Endless, resumable stream of this rank's training batches, epoch after epoch.

DataLoader workers prefetch, so the sampler cannot know how far training got; the stream
counts the batches the trainer actually *took*, and that count (with the epoch) is the
position a checkpoint stores.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from wav2vec2.data import RawAudioDataset, TokenBudgetBatchSampler, build_dataloader


def batch_seed(seed: int, epoch: int, position: int, *, stream: int) -> int:
    """A 62-bit seed for one batch, from its *global* position in the epoch.

    Masking, negatives and Gumbel noise are seeded per batch from this (`stream` keeps them
    apart from the crop seeds), so a batch gets the same masks whichever rank processes it
    and however many ranks there are: N ranks x M micro-batches then reproduce one process
    on the whole batch, and a resumed run needs no generator state.
    """
    state = np.random.SeedSequence([seed, epoch, position, stream]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


class BatchStream:
    """Yields `(epoch, position, batch)` for this rank, where `position` is the batch's
    index in the epoch's global (all-rank) batch order."""

    def __init__(
        self,
        dataset: RawAudioDataset,
        sampler: TokenBudgetBatchSampler,
        *,
        seed: int,
        num_workers: int,
        pin_memory: bool = False,
    ) -> None:
        self.sampler = sampler
        self.loader = build_dataloader(
            dataset, sampler, seed=seed, num_workers=num_workers, pin_memory=pin_memory
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
