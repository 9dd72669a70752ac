"""When the loop validates and saves: fairseq's rule (`fairseq_cli/train.py`,
`validate_and_save`), as one pure function of where training is.

After each update (and at the end of each epoch) fairseq decides, in this order:

- a save is due at the end of every `save_interval`-th epoch, every `save_interval_updates`
  updates once validation may start (`validate_after_updates`), and at the end of training;
- a validation is due with a save that falls *within* an epoch, at the end of every
  `validate_interval`-th epoch, every `validate_interval_updates` updates, and at the end;
  never before `validate_after_updates`.

This project's names for those settings are `checkpoint.save_every_epochs`,
`checkpoint.save_every`, `train.validate_every_epochs`, `train.validate_every` and
`train.validate_after_updates`. Two departures, both kept from before (docs/finetuning.md):
the end of training validates even before `validate_after_updates`, and a validation that
finds a new best model always saves it (fairseq saves only when a save is due anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

from wav2vec2.config import CheckpointConfig, LoopConfig


@dataclass(frozen=True)
class Due:
    """What is due after one update."""

    validate: bool
    save: bool
    """Write `checkpoint_last` (a validation's new best is saved whatever this says)."""
    snapshot: bool
    """Also write the numbered snapshot `checkpoint_{update:08d}.pt`: a save by count."""


def due(num_updates: int, *, epoch: int, end_of_epoch: bool, last: bool, updated: bool = True,
        loop: LoopConfig, checkpoint: CheckpointConfig) -> Due:
    """What is due now that `num_updates` updates are done.

    `epoch` is the epoch of the update just run and `end_of_epoch` whether it took that
    epoch's last batch; `last` whether training ends here. `updated` is False after a
    skipped update (inf/nan, fp16 overflow): the count did not move, so only the epoch's
    end can make something due (fairseq checks after every step, skipped or not).
    """
    started = num_updates >= loop.validate_after_updates
    by_count = updated and num_updates > 0 and started and _every(num_updates, checkpoint.save_every)
    by_epoch = end_of_epoch and _every(epoch, checkpoint.save_every_epochs)
    save = by_count or by_epoch or last
    validate = last or started and (
        (save and not end_of_epoch)
        or (end_of_epoch and _every(epoch, loop.validate_every_epochs))
        or (updated and num_updates > 0 and _every(num_updates, loop.validate_every))
    )
    return Due(validate=validate, save=save, snapshot=by_count)


def _every(count: int, interval: int) -> bool:
    """`count` is a multiple of `interval`; an interval of 0 means never."""
    return interval > 0 and count % interval == 0
