"""Transcribe recordings of any length with a CTC `Recognizer`, with word timestamps.

    rec = load_recognizer("runs/ft/checkpoint_best.pt")
    t = transcribe_file(rec, "talk.mp3")           # any soundfile format, rate, channels
    t.text, t.words[0]                             # "HELLO WORLD", Word("HELLO", 0.42, 0.8)

Every file is read in pieces (`AudioFile`: downmixed, resampled to the model's rate,
normalised over the whole file if the model wants it) and run through the model in
overlapping windows (`run_in_windows`: 30 s cores with 5 s of context on each side by
default); the windows' frame logits are stitched and decoded once, greedily or with a beam
(flashlight's CTC decoder, optionally with a KenLM n-gram). Memory holds one window of audio
and activations, plus the file's logits: 4·V bytes per 20 ms frame, 23 MB an hour at V = 32.

Word timestamps come from the CTC frames (one frame = hop / sample_rate = 20 ms) of the
decoded path (the best path, or the beam's): a word starts at the first frame of its first
letter and ends after the last frame of its last letter (the run of frames on that letter).

`transcribe_batch` runs a list of files into an `Output` (`formats.py`: stdout, one file, or
a directory with one file per input) and scores the result against manifest transcripts if
it has them; `scripts/transcribe.py` is its command line. Decoding is `decode.py`'s.

Shapes: L samples, T frames, V vocabulary entries (blank = 0).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
from torch import Tensor

from wav2vec2.data.labels import read_references
from wav2vec2.data.manifest import read_manifest
from wav2vec2.infer.audio import AudioFile
from wav2vec2.infer.chunking import run_in_windows
from wav2vec2.infer.decode import BeamSearch, error_counts, greedy_words, wer_cer
from wav2vec2.infer.formats import Output, Transcript, Word
from wav2vec2.infer.recognizer import Recognizer

WINDOW_SECONDS = 30.0
"""Audio per window whose frames are kept (transformers' pipeline uses 30 s chunks too)."""
CONTEXT_SECONDS = 5.0
"""Audio on each side of a window's core, computed and thrown away: the core frames' context."""
PROGRESS_AFTER_SECONDS = 60.0
"""Files longer than this get a progress bar (when asked for)."""


# ---------------------------------------------------------------- frames
def frame_logits(rec: Recognizer, audio: AudioFile, *, window: float = WINDOW_SECONDS,
                 context: float = CONTEXT_SECONDS, progress: Callable[[int], None] | None = None) -> Tensor:
    """The file's frame logits, computed window by window (`window` seconds kept per window,
    `context` seconds of audio on each side) and stitched. One window at a time, never a
    padded batch, which matters for group-norm (BASE-style) encoders.

    Shape: returns (T, V) float32 on the CPU; T = 0 for audio shorter than a frame.
    """
    if window <= 0 or context < 0:
        raise ValueError(f"window must be > 0 s and context >= 0 s, got window={window}, context={context}")
    encoder = rec.model.cfg.feature_encoder
    frame = encoder.hop / rec.sample_rate
    logits = run_in_windows(lambda wav: rec(wav).logits.float().cpu(), audio.read, audio.num_samples, encoder,
                            window_frames=max(1, round(window / frame)), context_frames=round(context / frame),
                            progress=progress)
    return logits if len(logits) else torch.zeros(0, len(rec.dictionary))



# ---------------------------------------------------------------- files
def transcribe_file(rec: Recognizer, path: str | os.PathLike, *, beam: BeamSearch | None = None,
                    window: float = WINDOW_SECONDS, context: float = CONTEXT_SECONDS,
                    progress: bool = False) -> Transcript:
    """One recording of any length, greedy CTC unless `beam`. With `progress`, files over a
    minute show a tqdm bar on stderr. Raises ValueError for audio it cannot read or that is empty."""
    frame = rec.model.cfg.feature_encoder.hop / rec.sample_rate  # seconds per CTC frame
    with AudioFile(path, sample_rate=rec.sample_rate, normalize=rec.normalize) as audio:
        duration = audio.num_samples / rec.sample_rate
        bar = None
        if progress and duration > PROGRESS_AFTER_SECONDS:
            from tqdm import tqdm

            bar = tqdm(total=round(duration, 1), desc=Path(path).name, unit="s", file=sys.stderr, leave=False,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]")
        try:
            logits = frame_logits(rec, audio, window=window, context=context,
                                  progress=None if bar is None else lambda done: bar.update(
                                      round(done / rec.sample_rate, 1) - bar.n))
        finally:
            if bar is not None:
                bar.close()
    spans = beam(logits) if beam is not None else greedy_words(logits, rec.dictionary)
    words = [Word(w, round(start * frame, 3), round(end * frame, 3)) for w, start, end in spans]
    return Transcript(file=os.fspath(path), text=" ".join(w.word for w in words), words=words, duration=duration)



# ---------------------------------------------------------------- batches
def read_manifest_inputs(path: str | os.PathLike) -> tuple[list[str], list[str], list[str] | None]:
    """(audio paths, their paths inside the manifest, reference transcripts or None) of a
    fairseq manifest `DIR/subset.tsv`; the references are `subset.ltr` or `subset.wrd` beside
    it (`wav2vec2.data.labels.read_references`)."""
    root, entries = read_manifest(path)
    names = [rel for rel, _ in entries]
    references = read_references(path, num_lines=len(entries))
    return [os.path.join(root, n) for n in names], names, references


@dataclass
class BatchReport:
    hypotheses: list[str | None]
    """One per input, None where it failed."""
    failures: list[tuple[str, str]]
    """(path, why) of each input that failed, in order."""
    counts: dict[str, int] | None = None
    """Error counts against the references (the inputs that did not fail), if given."""
    wer: float | None = None
    cer: float | None = None


def transcribe_batch(rec: Recognizer, paths: Sequence[str], output: Output, *, references: Sequence[str] | None = None,
                     beam: BeamSearch | None = None, window: float = WINDOW_SECONDS, context: float = CONTEXT_SECONDS,
                     progress: bool = False, log: TextIO | None = None) -> BatchReport:
    """Transcribe `paths` one by one into `output` (then closed). An input that cannot be
    read, or holds no audio, or fails in any other way, is reported to `log` (stderr) by
    name and skipped; the batch goes on. With `references` (one per path), WER and CER of
    the inputs that did not fail."""
    log = sys.stderr if log is None else log
    report = BatchReport(hypotheses=[], failures=[])
    try:
        for i, path in enumerate(paths):
            transcript = error = None
            try:
                transcript = transcribe_file(rec, path, beam=beam, window=window, context=context, progress=progress)
            except Exception as err:  # noqa: BLE001 - one bad file must not end the batch; it is reported
                error = str(err) or type(err).__name__
                error = error if os.fspath(path) in error else f"{path}: {error}"
                print(f"failed: {error}", file=log, flush=True)
                report.failures.append((path, error))
            output.write(i, path, transcript, error)
            report.hypotheses.append(None if transcript is None else transcript.text)
    finally:
        output.close()  # also on Ctrl-C: what is done is kept
    if references is not None:
        pairs = [(r, h) for r, h in zip(references, report.hypotheses) if h is not None]
        if pairs:
            report.counts = error_counts(*map(list, zip(*pairs)))
            report.wer, report.cer = wer_cer(report.counts)
    return report
