"""The sums of one update (or one validation), the task's kept apart from the loop's.

The task's sums (`LossOutput.sums`, plus "sample_size") and the loop's own (the
back-propagated loss, utterances, audio samples, replaced files) are added side by side and
come back as two dicts, so neither can replace the other. Where the two meet, in the sums
`Task.metrics` gets and in the logged rows, the loop's names are those of
`wav2vec2.tasks.base.RESERVED`: `refuse_reserved` turns a task that uses one into a
ValueError naming the name and the task.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from wav2vec2.tasks.base import RESERVED, LossOutput, Task
from wav2vec2.train import distributed as dist_utils


def refuse_reserved(task: Task, names: Iterable[str], what: str) -> None:
    """Raise ValueError if a task's `what` ("sum" or "metric") uses a name the loop reserves:
    `RESERVED`, and `best_{best_metric}` of the validation rows."""
    reserved = RESERVED | {f"best_{task.best_metric}"}
    clash = sorted(set(names) & reserved)
    if clash:
        raise ValueError(f"task {task.name!r} returned a {what} named {clash[0]!r}, which the loop reserves "
                         f"(wav2vec2.tasks.base.RESERVED: {', '.join(sorted(RESERVED))}); rename it")


class Sums:
    """Named sums over the micro-batches of one update (or the batches of one validation),
    in float64 on the device, all-reduced over ranks in a single call.

    Two sides that never mix: the task's (`LossOutput.sums`, plus `sample_size`, the
    summed `LossOutput.sample_size`: what `Task.metrics` gets) and the loop's own counts.
    """

    def __init__(self, task: Task, device: torch.device) -> None:
        self.task = task
        self.device = device
        self.keys: tuple[list[str], list[str]] | None = None
        """(task keys, loop keys), fixed by the first `add`."""
        self.total: torch.Tensor | None = None

    def add(self, task_sums: dict[str, Any], *, sample_size: Any, **loop_sums: Any) -> None:
        """One micro-batch: the task's `LossOutput.sums` and `sample_size`, and the loop's counts."""
        if self.keys is None:
            refuse_reserved(self.task, task_sums, "sum")
            self.keys = (sorted([*task_sums, "sample_size"]), sorted(loop_sums))
        elif sorted([*task_sums, "sample_size"]) != self.keys[0]:
            raise ValueError(f"task {self.task.name!r} must return the same sums every time: "
                             f"{sorted(task_sums)} vs {self.keys[0]}")
        task_keys, loop_keys = self.keys
        named = {**task_sums, "sample_size": sample_size}
        values = [named[k] for k in task_keys] + [loop_sums[k] for k in loop_keys]
        part = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device) for v in values])
        self.total = part if self.total is None else self.total + part

    def all_reduce(self, *, uneven: bool = False) -> tuple[dict[str, float], dict[str, float]]:
        """(the task's sums, the loop's) over every rank as Python floats: the update's one
        host sync of them. With `uneven` (validation), a rank that had no batch contributes
        zeros; ({}, {}) when rank 0 had none either."""
        keys = dist_utils.broadcast_object(self.keys) if uneven else self.keys
        if keys is None:
            return {}, {}
        task_keys, loop_keys = keys
        total = self.total if self.total is not None else torch.zeros(len(task_keys) + len(loop_keys),
                                                                      dtype=torch.float64, device=self.device)
        values = dist_utils.all_reduce_sum(total).tolist()
        return dict(zip(task_keys, values)), dict(zip(loop_keys, values[len(task_keys):]))


def batch_counts(batch: dict[str, Any]) -> dict[str, int]:
    """The loop's own counts of a (host) batch: utterances and unpadded audio samples."""
    padding = batch.get("padding_mask")
    samples = batch["source"].numel() if padding is None else int((~padding).sum())
    return {"utterances": batch["source"].shape[0], "audio_samples": samples}


def nothing(out: LossOutput) -> LossOutput:
    """What a micro-batch that must count for nothing adds (a rank's stand-in batch): the
    names of `out`'s sums, every value zero, whatever `out` held (even inf or nan)."""
    return LossOutput(loss=torch.zeros((), device=out.loss.device), sample_size=0.0,
                      sums=dict.fromkeys(out.sums, 0.0))
