"""Files, on the lowest floor: the one atomic write and the one weights-only checkpoint reader.

- `atomic_write(path, data)` / `atomic_output(path)`: a file is always absent, old or new and
  complete, never half-written. The data goes to `<name>.tmp` beside it, is fsynced and
  renamed over the target with `os.replace` (atomic on POSIX); the directory is fsynced so
  the rename survives a power loss. A failure removes the `.tmp` and leaves the old file.
- `load_checkpoint(path, allow=...)`: a `torch.save` file read with torch's weights-only
  unpickler: tensors, plain containers, NumPy arrays and the types in `allow` (fairseq's
  configs, say), never code chosen by the file. A text file, a truncated copy or a file that
  asks to run code is a one-line error naming the file and what it is not.

Everything that writes or reads these (checkpoints, manifests, transcripts, features,
exports) goes through here.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


class FileWriteError(RuntimeError):
    """A file could not be written; the one it was to replace is intact."""

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


def _write_error(path: Path, err: OSError) -> FileWriteError:
    name = errno.errorcode.get(err.errno, "?") if err.errno is not None else "no errno"
    return FileWriteError(f"cannot write {path}: {err.strerror or err} (errno {err.errno}, {name}); the previous "
                          "file, if any, is intact", errno=err.errno)


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without an exception, that
    file (which the block must have written and closed) replaces `path`. On an exception it is
    removed and `path` stays as it was. For writers that need a path (memory maps, streams,
    libraries); `atomic_write` is the short form for bytes or text.

    Raises FileWriteError when the rename or the sync fails."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _remove(tmp)
        raise _write_error(path, err) from err
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` (text is UTF-8) to `path` so that `path` is always absent, old or new and
    complete. Raises FileWriteError if it cannot, leaving no `.tmp` behind."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = Path(path)
    try:
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            f.write(data)
    except OSError as err:  # the open or the write; the rename's own errors are already FileWriteError
        raise _write_error(path, err) from err


def _remove(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError:  # the directory itself is unwritable: nothing was created to remove
        pass


def serialize(state: dict[str, Any]) -> bytes:
    """The bytes of `torch.save(state)`, so several files can be written from one pickle."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


# ------------------------------------------------------------------------------ reading
class UnsafeCheckpointError(ValueError):
    """A checkpoint file that asks to run code (or build objects) when unpickled."""


class NotACheckpointError(ValueError):
    """A file that is not a (complete) `torch.save` file: text, a truncated copy, garbage."""


# NumPy arrays: checkpoints written before RNG states became tensors hold NumPy's state as one.
# Rebuilding an array runs no code of the file's choosing.
_NUMPY_ARRAYS = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
try:  # numpy 2 moved it to _core; pickles name whichever module wrote them
    from numpy._core.multiarray import _reconstruct as _NUMPY_RECONSTRUCT
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _NUMPY_RECONSTRUCT


def _what_it_is(path: Path) -> str:
    """A short description of a file that torch could not read, for the error message."""
    size = path.stat().st_size
    if size == 0:
        return "it is empty (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"PK"):
        return f"a zip archive that is truncated or corrupt ({size:,} bytes; a copy cut off?)"
    if head[:1] == b"\x80":
        return f"a pickle that is truncated or corrupt ({size:,} bytes)"
    try:
        head.decode("utf-8")
        return "it is a text file"
    except UnicodeDecodeError:
        return f"its {size:,} bytes are neither a zip archive nor a pickle"


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu",
                    allow: list[Any] | tuple = (), mmap: bool = False) -> dict[str, Any]:
    """A `torch.save` file's contents, read with torch's weights-only unpickler: tensors and
    plain containers (plus NumPy arrays and the types in `allow`), never code from the file.

    Raises FileNotFoundError for a missing path, IsADirectoryError for a directory,
    UnsafeCheckpointError naming what the file asked for, NotACheckpointError for anything
    that is not a complete `torch.save` file (text, truncated, garbage)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a checkpoint file")
    try:
        with torch.serialization.safe_globals([*_NUMPY_ARRAYS, _NUMPY_RECONSTRUCT, *allow]):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        what = _what_it_is(path)
        if "Weights only load failed" not in str(err) or not what.startswith(("a zip", "a pickle")):
            # bytes that are not a pickle can fail as "unsafe" too: torch read an opcode it refuses
            raise NotACheckpointError(f"{path} is not a PyTorch checkpoint: {what}") from None
        try:
            wanted = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path)) or str(err)[:200]
        except Exception:  # noqa: BLE001 - the name list is only for the message
            wanted = str(err)[:200]
        raise UnsafeCheckpointError(
            f"refused to load {path}: unpickling it would build or call {wanted}, which a checkpoint "
            "holds only if someone put code in it. If you trust where it came from, convert it once "
            "with torch.load(path, weights_only=False) and save its state dict."
        ) from None
    except (RuntimeError, EOFError, IndexError, KeyError, zipfile.BadZipFile, ValueError, TypeError) as err:
        # torch's reader fails in many ways on files that are not its own: "PytorchStreamReader
        # failed reading zip archive" (truncated), "pop from empty list" (text), EOF...
        what = _what_it_is(path)
        if what.startswith("its "):  # nothing recognisable: torch's own words may help
            what += f" ({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''})"
        raise NotACheckpointError(f"{path} is not a PyTorch checkpoint: {what}") from None


def is_loadable(path: str | os.PathLike) -> bool:
    """Whether `path` is a complete checkpoint: its pickle reads, tensors memory-mapped, so
    even a large file is checked without reading its tensor data."""
    try:
        load_checkpoint(path, mmap=True)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not loadable"
        return False
