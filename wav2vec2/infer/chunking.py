"""Long audio in bounded memory: run a frame-level model over overlapping windows and stitch
the frames, each taken from the window where it has the most context on both sides.

The encoder maps samples to frames with a fixed hop (320 samples, 20 ms at 16 kHz) and
receptive field (400 samples), so window starts that are multiples of the hop line every
window's frames up with the file's. Each output frame of the file belongs to exactly one
window's *core*; a window is its core plus `context` frames of audio on each side (fewer at
the file's edges), and only its core frames are kept. Decoding the stitched frames once
(CTC best path, or a beam) then loses or doubles no word at a boundary: a word is decoded
from frames that each saw at least `context` frames of audio around them. This is the
stride scheme of transformers' ASR pipeline, on frame indices rather than seconds.

What it cannot make equal to one pass over the whole file: the encoder's attention sees only
the window, and the BASE encoder's first GroupNorm normalises over the window's time. With a
context of a few seconds the frames differ little; the tests bound the word differences.

Shapes: L samples, T frames, X values per frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from wav2vec2.config import FeatureEncoderConfig


@dataclass(frozen=True)
class Window:
    start: int
    """First sample of the window (a multiple of the hop)."""
    end: int
    """One past its last sample."""
    keep_from: int
    """First frame of the window's output to keep (its core starts here)..."""
    keep_to: int
    """...and one past the last."""
    first_frame: int
    """The file's frame index of the window's first kept frame."""


def plan_windows(
    num_samples: int, encoder: FeatureEncoderConfig, *, window_frames: int, context_frames: int
) -> list[Window]:
    """Cut a file of `num_samples` into windows whose cores of `window_frames` frames tile
    its frames exactly, each with up to `context_frames` frames of audio on either side.
    `encoder` gives the frame arithmetic (hop, receptive field, frame count)."""
    if window_frames < 1 or context_frames < 0:
        raise ValueError(f"window_frames must be >= 1 and context_frames >= 0, got {window_frames}, {context_frames}")
    hop, receptive_field = encoder.hop, encoder.receptive_field
    total = encoder.num_frames(num_samples)
    windows = []
    for core_start in range(0, total, window_frames):
        core_end = min(core_start + window_frames, total)
        first = max(0, core_start - context_frames)  # first frame the window computes
        last = min(total, core_end + context_frames)  # one past its last
        start = first * hop
        end = min(num_samples, (last - 1) * hop + receptive_field)
        windows.append(Window(start=start, end=end, keep_from=core_start - first, keep_to=core_end - first,
                              first_frame=core_start))
    return windows


def run_in_windows(
    fn: Callable[[Tensor], Tensor],
    read: Callable[[int, int], Tensor],
    num_samples: int,
    encoder: FeatureEncoderConfig,
    *,
    window_frames: int,
    context_frames: int,
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """The file's frames, computed window by window.

    `read(start, end)` returns samples [start, end) of the file (so the file need not be in
    memory); `fn` maps a window's samples (1, L) to its frames (1, T, X) with T =
    `encoder.num_frames(L)`. `progress(samples_done)` is called after each window.

    Shape: returns (T_file, X).
    """
    pieces = []
    windows = plan_windows(num_samples, encoder, window_frames=window_frames, context_frames=context_frames)
    for i, w in enumerate(windows):
        wav = read(w.start, w.end).unsqueeze(0)  # (L,) -> (1, L)
        frames = fn(wav)  # (1, T, X)
        expected = encoder.num_frames(w.end - w.start)
        if frames.shape[1] != expected:
            raise ValueError(f"the model made {frames.shape[1]} frames of {w.end - w.start} samples, expected "
                             f"{expected}: the encoder config's frame arithmetic does not match the model")
        pieces.append(frames[0, w.keep_from:w.keep_to])  # (T_core, X)
        if progress is not None:  # the tail past the last frame is done with the last window
            progress(num_samples if i == len(windows) - 1 else w.end)
    if not pieces:
        return torch.zeros(0, 0)
    return torch.cat(pieces)  # (T_file, X)
