"""Atomic checkpoint files in a run directory.

Layout: `checkpoint_last.pt` (newest), `checkpoint_{update:08d}.pt` (interval snapshots,
pruned to the newest `keep_last`), `checkpoint_best.pt` (lowest validation loss).

Every file is written to `<name>.tmp` in the same directory, fsynced, then renamed over the
target with `os.replace`, which is atomic on POSIX: a reader (or a resumed run after a
SIGKILL) sees either the old complete file or the new complete one, never a torn file.
`checkpoint_last` is written first in each save, so it is never older than a snapshot.
A write that fails (disk full, permissions) removes its `.tmp`, leaves the file it would
have replaced untouched and raises CheckpointWriteError naming the path and errno. Pruning
old snapshots never removes the newest one that loads.

File I/O only: what goes into a checkpoint is the trainer's business, the RNG states and
seeding are in `state.py`.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"
_SNAPSHOT = re.compile(r"^checkpoint_(\d{8})\.pt$")


def snapshot_name(num_updates: int) -> str:
    return f"checkpoint_{num_updates:08d}.pt"


def serialize(state: dict[str, Any]) -> bytes:
    """The bytes of `torch.save(state)`, so several files can be written from one pickle."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


class CheckpointWriteError(RuntimeError):
    """A file of the run directory could not be written; the one it was to replace is intact."""

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` is always either absent, old or new, complete.

    Raises CheckpointWriteError if the file cannot be written, leaving no `.tmp` behind.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # the directory itself is unwritable: nothing was created to remove
            pass
        name = errno.errorcode.get(err.errno, "?") if err.errno is not None else "no errno"
        raise CheckpointWriteError(
            f"cannot write {path}: {err.strerror or err} (errno {err.errno}, {name}). The previous file is "
            "intact; training stops rather than run on without checkpoints. Free disk space or fix the "
            "permissions of the run directory, then rerun the same command to resume.", errno=err.errno,
        ) from err
    # fsync the directory so the rename itself survives a power loss, not just a SIGKILL.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
    atomic_write(run_dir / LAST, data)
    if snapshot:
        atomic_write(run_dir / snapshot_name(int(state["num_updates"])), data)
        prune_snapshots(run_dir, keep_last)
    if best:
        atomic_write(run_dir / BEST, data)


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
    if old and not any(_loads(p) for p in reversed(kept)):
        good = next((p for p in reversed(old) if _loads(p)), None)
        if good is not None:
            log.warning("newest snapshots unreadable: keeping %s, the newest one that loads", good)
            old.remove(good)
    for path in old:
        path.unlink(missing_ok=True)


def _loads(path: Path) -> bool:
    """Whether `path` is a complete checkpoint: its pickle reads, tensors memory-mapped,
    so even a large file is checked without reading its tensor data."""
    try:
        with torch.serialization.safe_globals([*_NUMPY_ARRAYS, _NUMPY_RECONSTRUCT]):
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not loadable"
        return False


class UnsafeCheckpointError(ValueError):
    """A checkpoint file that asks to run code (or build objects) when unpickled."""


# NumPy arrays: checkpoints written before RNG states became tensors hold NumPy's state as one.
# Rebuilding an array runs no code of the file's choosing.
_NUMPY_ARRAYS = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
try:  # numpy 2 moved it to _core; pickles name whichever module wrote them
    from numpy._core.multiarray import _reconstruct as _NUMPY_RECONSTRUCT
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _NUMPY_RECONSTRUCT


def load(path: Path, *, map_location: str | torch.device = "cpu", allow: list[Any] = ()) -> dict[str, Any]:
    """A checkpoint's contents, read with torch's weights-only unpickler: tensors and plain
    containers (plus NumPy arrays and the types in `allow`), never code from the file.

    Raises UnsafeCheckpointError naming what the file asked for, if anything else.
    """
    try:
        with torch.serialization.safe_globals([*_NUMPY_ARRAYS, _NUMPY_RECONSTRUCT, *allow]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        try:
            wanted = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path)) or str(err)[:200]
        except Exception:  # noqa: BLE001 - the name list is only for the message
            wanted = str(err)[:200]
        raise UnsafeCheckpointError(
            f"refused to load {path}: unpickling it would build or call {wanted}, which a checkpoint "
            "holds only if someone put code in it. If you trust where it came from, convert it once "
            "with torch.load(path, weights_only=False) and save its state dict."
        ) from None


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
            return path, load(path, map_location=map_location)
        except Exception as err:  # noqa: BLE001 - any unreadable file means "try the next"
            log.warning("skipping unreadable checkpoint %s: %s", path, err)
    return None
