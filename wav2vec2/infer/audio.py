"""Audio files as a model wants them, read in pieces so an hour-long file never has to be in
memory: any format and layout soundfile reads, downmixed to mono, resampled with soxr to the
model's rate, and normalised over the whole file if the model was trained that way.

Shapes: L samples (at the model's rate).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

_BLOCK = 1 << 20  # samples per block while scanning or resampling a file


class AudioFile:
    """`path` as mono float32 at `sample_rate`: `num_samples`, and `read(start, end)`.

    A file at another rate is resampled once, block by block (soxr's streaming resampler),
    into a temporary file on disk; memory stays at a block whatever the file's length.
    With `normalize`, every piece is standardised with the mean and variance of the whole
    file (as fairseq's dataset does before cropping), computed in one streaming pass.
    """

    def __init__(self, path: str | os.PathLike, *, sample_rate: int, normalize: bool = False) -> None:
        self.path = os.fspath(path)
        self.sample_rate = sample_rate
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"no such file: {self.path}")
        if os.path.isdir(self.path):
            raise IsADirectoryError(f"{self.path} is a directory, not an audio file")
        if os.path.getsize(self.path) == 0:
            raise ValueError(f"{self.path} is empty (0 bytes)")
        try:
            info = sf.info(self.path)
        except Exception as err:  # libsndfile raises several types; "System error." says nothing
            reason = str(err).split(": ", 1)[-1].strip() or type(err).__name__
            if reason.rstrip(".") == "System error":
                reason = "not an audio file soundfile can read"
            raise ValueError(f"cannot read audio {self.path}: {reason}") from None
        if info.frames == 0:
            raise ValueError(f"{self.path} holds no audio (0 samples)")
        self._tmp: tempfile._TemporaryFileWrapper | None = None
        if info.samplerate == sample_rate:
            self._data = None
            self.num_samples = info.frames
        else:
            self._data = self._resample_to_disk(info.samplerate)
            self.num_samples = len(self._data)
        if self.num_samples == 0:
            raise ValueError(f"{self.path} is too short to hold a sample at {sample_rate} Hz")
        self.mean, self.std = 0.0, 1.0
        if normalize:
            self.mean, self.std = self._moments()

    def _blocks(self, start: int = 0, end: int | None = None):
        """Mono float32 blocks of the file at its own rate."""
        with sf.SoundFile(self.path) as f:
            f.seek(start)
            left = (end if end is not None else f.frames) - start
            while left > 0:
                block = f.read(min(_BLOCK, left), dtype="float32", always_2d=True)  # (n, channels)
                if len(block) == 0:
                    break
                left -= len(block)
                yield block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]

    def _resample_to_disk(self, rate: int) -> np.ndarray:
        import soxr

        stream = soxr.ResampleStream(rate, self.sample_rate, 1, dtype="float32", quality="HQ")
        self._tmp = tempfile.NamedTemporaryFile(prefix="wav2vec2-audio-", suffix=".f32")
        with open(self._tmp.name, "wb") as out:
            for block in self._blocks():
                out.write(stream.resample_chunk(block).astype(np.float32).tobytes())
            out.write(stream.resample_chunk(np.zeros(0, np.float32), last=True).astype(np.float32).tobytes())
        size = Path(self._tmp.name).stat().st_size // 4
        return np.memmap(self._tmp.name, dtype=np.float32, mode="r", shape=(size,)) if size else np.zeros(0, np.float32)

    def _moments(self) -> tuple[float, float]:
        total, total_sq, n = 0.0, 0.0, 0
        for start in range(0, self.num_samples, _BLOCK):
            x = self._read(start, min(start + _BLOCK, self.num_samples)).astype(np.float64)
            total, total_sq, n = total + x.sum(), total_sq + (x * x).sum(), n + len(x)
        mean = total / n
        var = max(total_sq / n - mean * mean, 0.0)
        return mean, float(np.sqrt(var + 1e-5))  # F.layer_norm's eps, as the datasets normalise

    def _read(self, start: int, end: int) -> np.ndarray:
        if self._data is not None:
            return np.array(self._data[start:end], dtype=np.float32)  # a copy: the memmap is read-only
        return np.concatenate(list(self._blocks(start, end)) or [np.zeros(0, np.float32)])

    def read(self, start: int = 0, end: int | None = None) -> Tensor:
        """Samples [start, end) at the model's rate, normalised if asked. Shape: (L,)."""
        end = self.num_samples if end is None else min(end, self.num_samples)
        x = self._read(start, end)
        if self.mean != 0.0 or self.std != 1.0:
            x = (x - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def close(self) -> None:
        if self._tmp is not None:
            self._data = None
            self._tmp.close()
            self._tmp = None

    def __enter__(self) -> AudioFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
