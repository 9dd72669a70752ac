"""Atomic checkpoint files in a run directory.

Layout: `checkpoint_last.pt` (newest), `checkpoint_{update:08d}.pt` (interval snapshots,
pruned to the newest `keep_last`), `checkpoint_best.pt` (the best validation so far by the
task's `best_metric`: the loss for pretraining, WER or CER for CTC fine-tuning).

Every file is written with `wav2vec2.files.atomic_write`: a reader (or a resumed run after
a SIGKILL) sees either the old complete file or the new complete one, never a torn file.
`checkpoint_last` is written first in each save, so it is never older than a snapshot.
A write that fails (disk full, permissions) leaves the file it would have replaced
untouched and raises CheckpointWriteError naming the path and errno. Pruning old snapshots
never removes the newest one that loads. Files are read with `files.load_checkpoint`
(weights-only: no code from a file runs).

Rank 0 writes; `save_from_rank0` lets every rank know whether it could. What goes into a
checkpoint is `Trainer.state_dict`'s business, which one a run starts from `resume.py`'s, the
RNG states `rng.py`'s.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from wav2vec2.files import FileWriteError, atomic_write, is_loadable, load_checkpoint, serialize
from wav2vec2.train.distributed import all_reduce_sum

log = logging.getLogger(__name__)

LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"
_SNAPSHOT = re.compile(r"^checkpoint_(\d{8})\.pt$")


def snapshot_name(num_updates: int) -> str:
    return f"checkpoint_{num_updates:08d}.pt"


class CheckpointWriteError(FileWriteError):
    """A checkpoint could not be written; the file it was to replace is intact."""


def _write(path: Path, data: bytes) -> None:
    try:
        atomic_write(path, data)
    except FileWriteError as err:
        raise CheckpointWriteError(
            f"{err}. Training stops rather than run on without checkpoints. Free disk space or fix the "
            "permissions of the run directory, then rerun the same command to resume.", errno=err.errno,
        ) from err


def save(
    run_dir: Path, state: dict[str, Any], *, snapshot: bool, best: bool, keep_last: int
) -> None:
    """Write `checkpoint_last`, then optionally a snapshot and `checkpoint_best`; prune.

    First removes the `.tmp` files of writes a kill interrupted: a resumed run may never
    write that name again (the snapshot of the update it resumes at), so they would stay.
    Only rank 0 writes checkpoints, so no other write is in flight.
    """
    run_dir = Path(run_dir)
    for stray in run_dir.glob("checkpoint*.pt.tmp"):
        stray.unlink(missing_ok=True)
    data = serialize(state)
    _write(run_dir / LAST, data)
    if snapshot:
        _write(run_dir / snapshot_name(int(state["num_updates"])), data)
        prune_snapshots(run_dir, keep_last)
    if best:
        _write(run_dir / BEST, data)


def save_from_rank0(
    run_dir: Path, state: dict[str, Any], *, is_main: bool, device: torch.device, snapshot: bool, best: bool,
    keep_last: int,
) -> None:
    """`save` on rank 0, and every rank learns whether it worked (a collective, also the
    barrier): a write that fails (disk full, permissions) raises CheckpointWriteError on
    every rank, leaving the files already there intact. A run that cannot checkpoint must
    not train on for days at risk."""
    failure: CheckpointWriteError | None = None
    if is_main:
        try:
            save(run_dir, state, snapshot=snapshot, best=best, keep_last=keep_last)
        except CheckpointWriteError as err:
            log.error("%s", err)
            failure = err
    failed = all_reduce_sum(torch.tensor([float(failure is not None)], device=device))
    if failure is not None:
        raise failure
    if failed.item() > 0:
        raise CheckpointWriteError(f"rank 0 could not write a checkpoint to {run_dir} (its log says why)")


def describe_best(run_dir: Path) -> str:
    """One line: the update `checkpoint_best.pt` holds and its validation metric."""
    path = Path(run_dir) / BEST
    if not path.is_file():
        return f"no {BEST}: the run has not validated"
    try:
        state = load_checkpoint(path, mmap=True)  # the tensors stay on disk
    except Exception as err:  # noqa: BLE001 - a summary line, not a reason to fail a finished run
        return f"{BEST} does not load: {err}"
    best = state.get("best_valid_metric") or {"name": "loss", "value": state.get("best_valid_loss")}  # version 1
    value = "unknown" if best["value"] is None else f"{best['value']:.4g}"
    return f"{BEST} holds update {state['num_updates']}: valid {best['name']} {value}"


def snapshots(run_dir: Path) -> list[Path]:
    """Interval snapshots, oldest first."""
    found = [p for p in Path(run_dir).glob("checkpoint_*.pt") if _SNAPSHOT.match(p.name)]
    return sorted(found, key=lambda p: int(_SNAPSHOT.match(p.name).group(1)))


def prune_snapshots(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` snapshots (0 keeps all), except that when none
    of those loads (a torn or corrupt file), the newest older one that does is kept too."""
    if keep_last <= 0:
        return
    found = snapshots(run_dir)
    kept, old = found[-keep_last:], found[:-keep_last]
    if old and not any(is_loadable(p) for p in reversed(kept)):
        good = next((p for p in reversed(old) if is_loadable(p)), None)
        if good is not None:
            log.warning("newest snapshots unreadable: keeping %s, the newest one that loads", good)
            old.remove(good)
    for path in old:
        path.unlink(missing_ok=True)


def find_latest(run_dir: Path) -> Path | None:
    """The newest checkpoint in `run_dir` that loads, or None (see `load_latest`)."""
    found = load_latest(run_dir)
    return None if found is None else found[0]


def load_latest(
    run_dir: Path, *, map_location: str | torch.device = "cpu"
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in `run_dir` that loads, with its contents, or None.

    `checkpoint_last` is tried first; snapshots follow, newest first, in case `last` is
    unreadable (a disk fault, or a file copied in by hand). Leftover `.tmp` files from a
    killed write are ignored.
    """
    run_dir = Path(run_dir)
    candidates = [run_dir / LAST] + list(reversed(snapshots(run_dir)))
    for path in candidates:
        if not path.is_file():
            continue
        try:
            return path, load_checkpoint(path, map_location=map_location)
        except Exception as err:  # noqa: BLE001 - any unreadable file means "try the next"
            log.warning("skipping unreadable checkpoint %s: %s", path, err)
    return None
