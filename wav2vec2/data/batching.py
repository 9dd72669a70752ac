"""Token-budget batching with fairseq `batch_by_size` semantics, sharded and resumable.

Per epoch (fairseq `FileAudioDataset.ordered_indices` + `EpochBatchIterator`):
1. order utterances longest first, ties broken by a permutation seeded with seed+epoch;
2. cut that order into batches with `batch_by_size`;
3. shuffle the batches with seed+epoch;
4. deal batch i to rank i mod num_replicas.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

# Random streams seeded per batch by `batch_seed`; each use has its own, so none shifts another.
STREAM_CROP = 0
"""Crop starts in the collater (pretraining's crop-to-shortest)."""
STREAM_TRAIN = 1
"""The model's generator on a training batch: masks, negatives, Gumbel noise."""
STREAM_VALID = 2
"""The same on a validation batch, so every validation of a run sees the same masks."""
STREAM_LAYERDROP = 3
"""LayerDrop under sharded training, seeded alike on every rank from (seed, update,
micro-batch index) in place of (seed, epoch, position): `ContextNetwork.layerdrop_generator`."""


def batch_seed(seed: int, epoch: int, position: int, *, stream: int) -> int:
    """The one rule for a batch's random seed: a 62-bit seed (fits `manual_seed`) from the
    run seed, the epoch, the batch's *global* position in the epoch (all ranks' batches
    counted) and the use (`STREAM_*`).

    It depends on neither the rank nor the worker that handles the batch, nor on where a run
    resumed: N ranks x M micro-batches reproduce one process on the whole batch, and a
    resumed run needs no generator state.
    """
    state = np.random.SeedSequence([seed, epoch, position, stream]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def batch_by_size(
    indices: np.ndarray,
    sizes: np.ndarray,
    *,
    max_tokens: int | None,
    max_sentences: int | None = None,
    required_batch_size_multiple: int = 1,
) -> list[np.ndarray]:
    """Cut `indices` (in order) into batches, as fairseq's `batch_by_size`.

    A batch grows while n_items <= max_sentences and n_items * longest <= max_tokens.
    When it closes (budget reached or no items left), a batch of more than
    `required_batch_size_multiple` items is rounded down to a multiple of it and the rest
    starts the next batch; so every batch is either smaller than the multiple or a
    multiple of it. Nothing is dropped: the last batch may be smaller than the multiple.
    """
    mult = required_batch_size_multiple
    if mult < 1:
        raise ValueError(f"required_batch_size_multiple must be >= 1, got {mult}")
    if max_sentences is not None and max_sentences < 1:
        raise ValueError(f"max_sentences must be >= 1, got {max_sentences}")
    item_sizes = sizes[indices]
    if max_tokens is not None and len(indices) and item_sizes.max() > max_tokens:
        i = int(indices[int(np.argmax(item_sizes))])
        raise ValueError(
            f"item {i} has {int(sizes[i])} samples > max_tokens={max_tokens}; "
            "raise max_tokens or set max_sample_size to crop"
        )
    batches: list[np.ndarray] = []
    start, n = 0, len(indices)
    while start < n:
        longest, end = 0, start
        while end < n:
            longest_new = max(longest, int(item_sizes[end]))
            count = end - start + 1
            if (max_sentences is not None and count > max_sentences) or (
                max_tokens is not None and count * longest_new > max_tokens
            ):
                break
            longest, end = longest_new, end + 1
        count = end - start
        if count > mult:  # keep a multiple; the rest starts the next batch
            count -= count % mult
        batches.append(indices[start : start + count])
        start += count
    return batches


def check_fits_budget(sizes: np.ndarray, max_tokens: int | None, describe: Callable[[int], str], *,
                      sample_rate: int) -> None:
    """Raise ValueError, naming the longest file and how many are too long, if any item has
    more samples than a batch may hold (`data.max_tokens`): `batch_by_size` could not place it.
    `describe(i)` names item i (`RawAudioDataset.describe`: its path and manifest line)."""
    if max_tokens is None or not len(sizes):
        return
    over = np.flatnonzero(sizes > max_tokens)
    if len(over):
        i = int(over[np.argmax(sizes[over])])
        raise ValueError(
            f"{describe(i)} has {int(sizes[i])} samples ({sizes[i] / sample_rate:.1f} s), more than a batch may "
            f"hold (data.max_tokens={max_tokens}, {max_tokens / sample_rate:.1f} s); {len(over)} file(s) of its "
            f"manifest are too long. Raise data.max_tokens to at least {int(sizes[i])}, or leave them out of the "
            "manifest")


class TokenBudgetBatchSampler(torch.utils.data.Sampler):
    """Batches of dataset indices under a budget of samples per batch, per rank.

    Usable as `DataLoader(..., batch_sampler=sampler)`, or through
    `wav2vec2.data.build_dataloader`, which also seeds each batch's crops.

    Sharding: every rank yields the same number of batches per epoch. With
    `drop_last=True` (default) the `num_batches % num_replicas` batches left over after
    the per-epoch shuffle are skipped for that epoch (a different few each epoch), so no
    utterance is seen twice. With `drop_last=False` they are dealt to the first ranks,
    which then yield one batch more than the others (fairseq's behaviour; the trainer must
    cope with uneven ranks, e.g. for validation).

    Resume: the batches of an epoch are a pure function of (sizes, seed, epoch, settings).
    The trainer reports what it has *used*, since DataLoader workers prefetch ahead of it:

        sampler.set_epoch(epoch)
        for batch in loader:
            train_step(batch)
            sampler.mark_consumed()          # one more batch of this epoch fully used
            if time_to_save:
                save({"sampler": sampler.state_dict(), ...})

    `state_dict()` is `{"epoch", "num_batches_consumed", ...}`. After
    `load_state_dict(state)` the next iteration of that epoch yields exactly the batches
    that had not been consumed; `set_epoch` with the same epoch keeps that position, a
    different epoch starts at 0. The position applies to one iteration: the one after it
    starts the epoch from the beginning again.
    """

    def __init__(
        self,
        sizes: Sequence[int] | np.ndarray,
        *,
        max_tokens: int | None,
        max_sentences: int | None = None,
        required_batch_size_multiple: int = 8,
        seed: int = 1,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        describe: Callable[[int], str] | None = None,
        sample_rate: int = 16000,
    ) -> None:
        """`describe(i)` names item i in errors (a dataset's `describe`: its file and
        manifest line); `sample_rate` turns sample counts into seconds there."""
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.max_tokens = max_tokens
        self.max_sentences = max_sentences
        self.required_batch_size_multiple = required_batch_size_multiple
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 1
        self.num_batches_consumed = 0
        self._resume_at = 0
        self._cache: tuple[int, list[np.ndarray]] | None = None
        check_fits_budget(self.sizes, max_tokens, describe or (lambda i: f"item {i}"), sample_rate=sample_rate)
        self.epoch_batches(self.epoch)  # fail fast on bad settings

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """All batches of an epoch (every rank's), in the shuffled order they are dealt."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        if self.shuffle:
            rng = np.random.RandomState((self.seed + epoch) % 2**32)
            tie_break = rng.permutation(len(self.sizes))
        else:
            tie_break = np.arange(len(self.sizes))
        # lexsort keys: last is primary. Ascending size, then reversed: longest first.
        order = np.lexsort((tie_break, self.sizes))[::-1]
        batches = batch_by_size(
            order,
            self.sizes,
            max_tokens=self.max_tokens,
            max_sentences=self.max_sentences,
            required_batch_size_multiple=self.required_batch_size_multiple,
        )
        if self.shuffle:
            np.random.RandomState((self.seed + epoch) % 2**32).shuffle(batches)
        self._cache = (epoch, batches)
        return batches

    def _rank_positions(self, epoch: int) -> range:
        """Global positions (in `epoch_batches`) of this rank's batches."""
        total = len(self.epoch_batches(epoch))
        if self.drop_last:
            total -= total % self.num_replicas
        return range(self.rank, total, self.num_replicas)

    def rank_batches(self, epoch: int) -> int:
        """This rank's batches in a whole `epoch`, whatever has been consumed of it."""
        return len(self._rank_positions(epoch))

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.num_batches_consumed = 0
            self._resume_at = 0

    def mark_consumed(self, num_batches: int = 1) -> None:
        """Record that the trainer has fully used `num_batches` more batches of this epoch."""
        self.num_batches_consumed += num_batches

    def iter_with_position(self) -> Iterator[tuple[int, list[int]]]:
        """Yield (global batch position in the epoch, indices) for this rank."""
        positions = self._rank_positions(self.epoch)[self._resume_at :]
        self.num_batches_consumed = self._resume_at
        self._resume_at = 0
        batches = self.epoch_batches(self.epoch)
        for pos in positions:
            yield pos, batches[pos].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for _, batch in self.iter_with_position():
            yield batch

    def __len__(self) -> int:
        """Batches the next iteration yields: a full epoch, or what remains after a resume."""
        return len(self._rank_positions(self.epoch)) - self._resume_at

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "num_batches_consumed": self.num_batches_consumed,
            "seed": self.seed,
            "num_replicas": self.num_replicas,
            "rank": self.rank,
            "num_batches": self.rank_batches(self.epoch),
            # every rank's: one rank's checkpoint restores all ranks, whose counts differ
            # by one when batches are dealt unevenly (drop_last=False)
            "epoch_batches": len(self.epoch_batches(self.epoch)),
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "num_replicas"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state has {key}={state[key]}, this sampler {getattr(self, key)}; "
                    "resuming mid-epoch needs the same batching settings"
                )
        self.epoch = state["epoch"]
        if "epoch_batches" in state:
            saved, made = state["epoch_batches"], len(self.epoch_batches(self.epoch))
        else:  # older checkpoints: the saving rank's count (equal on all ranks with drop_last)
            saved, made = state["num_batches"], len(self._rank_positions(self.epoch))
        if saved != made:
            raise ValueError(
                f"sampler state had {saved} batches in epoch {self.epoch}, "
                f"this sampler makes {made}: dataset or batching settings changed"
            )
        self.num_batches_consumed = state["num_batches_consumed"]
        self._resume_at = self.num_batches_consumed
