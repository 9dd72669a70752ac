"""Forced alignment: where each token, word and line of a known transcript is in a recording,
from any CTC model the loader reads, with a score for each.

    rec = load_recognizer("runs/ft/checkpoint_best.pt")
    lines = Path("talk.txt").read_text().splitlines()
    alignment = align_file(rec, "talk.wav", lines, AlignOptions(unknown="skip"))
    alignment.lines[0].words[0]      # AlignedWord(text="Hello", start=0.42, end=0.8, score=0.93, tokens=[...])

How: the file's frame log-probabilities come from the windowed inference of
`transcribe.frame_logits` (bounded memory, any length); the text becomes the model's tokens
(`align_text.prepare_text`: dictionary case, explicit handling of unknown characters, a
wildcard between lines); the best CTC path through them comes from `viterbi.py`, exactly
(every state, a byte of backpointer per frame and state, batched over utterances) while that
fits in `AlignOptions.exact_limit` bytes, else from `align_long.py` (lanes of a moving band of
states, in memory that does not grow with the file).

Times: frame t covers [t, t + 1) x hop / rate seconds (20 ms frames at 16 kHz). A token runs
from the first frame where the path reads it to the end of the last; a word from its first
token to its last, a line from its first word to its last.

Scores (`formats.Span.score`): over a span's frames, the mean of log p(the path's label) -
log p(the frame's best label), exponentiated: 1 where the model would read this very text
unforced, towards 0 where the text is forced on audio that says something else. A line
scoring below `min_score`, or passed over (not found in the audio), is flagged.

Shapes: B utterances, T frames, V vocabulary entries (blank = 0), C = V + 2 emission columns.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from wav2vec2.data.labels import BLANK, read_references
from wav2vec2.data.manifest import read_manifest
from wav2vec2.infer.align_long import LaneOptions, best_path_in_lanes
from wav2vec2.infer.align_text import AlignmentText, describe_unknown, prepare_text
from wav2vec2.infer.audio import AudioFile
from wav2vec2.infer.formats import AlignedLine, AlignedWord, Alignment, Span
from wav2vec2.infer.recognizer import Recognizer
from wav2vec2.infer.transcribe import CONTEXT_SECONDS, WINDOW_SECONDS, frame_logits
from wav2vec2.infer.viterbi import backtrack, best_ends, ctc_graph, viterbi_forward, with_wildcard


_EMISSION_BLOCK = 8192  # frames


@dataclass
class AlignOptions:
    unknown: str = "error"
    """Characters the dictionary lacks: "error", "skip" or "star" (`align_text.prepare_text`)."""
    replace: dict[str, str] = field(default_factory=dict)
    """Explicit character mappings applied first, e.g. {"’": "'"}."""
    wildcard: bool = True
    """A wildcard before, between and after the lines, for audio the text does not cover."""
    wildcard_penalty: float = -1.0
    """The wildcard's log-probability at a frame: the frame's best plus this."""
    skip_penalty: float | None = -6.0
    """The cost, per token, of passing over a line the audio lacks (a jump from one line's
    wildcard to the next); None: every line must be found."""
    min_score: float = 0.3
    """Lines scoring below this are flagged."""
    exact_limit: int = 1 << 26
    """Bytes of backpointers (frames x states) up to which the search is exact (64 MiB: about
    what a group of lanes keeps); longer inputs go to lanes of a band (`align_long.py`)."""
    lanes: LaneOptions = field(default_factory=LaneOptions)


def emissions_of(log_probs: Tensor, penalty: float) -> Tensor:
    """Log-softmax of the model's outputs with the wildcard and padding columns appended
    (`viterbi.with_wildcard`), a block of frames at a time: no temporary copy of an hour's.
    Shape: (..., T, V) -> (..., T, V + 2)."""
    out = log_probs.new_empty(*log_probs.shape[:-1], log_probs.shape[-1] + 2, dtype=torch.float32)
    for a in range(0, log_probs.shape[-2], _EMISSION_BLOCK):
        block = log_probs[..., a:a + _EMISSION_BLOCK, :].float().log_softmax(dim=-1)
        out[..., a:a + _EMISSION_BLOCK, :] = with_wildcard(block, penalty)
    return out


def align_batch(logits: Tensor, lengths: Tensor, texts: list[AlignmentText], *, frame_seconds: float,
                options: AlignOptions | None = None, files: list[str] | None = None) -> list[Alignment]:
    """Align a batch of utterances at once with the exact search (B x T x S backpointer bytes).

    Shape: logits (B, T, V) model outputs (any scale: they are log-softmaxed), lengths (B,)."""
    options = options or AlignOptions()
    B, _, V = logits.shape
    emissions = emissions_of(logits, options.wildcard_penalty)  # (B, T, C)
    jumps = [t.jumps(options.skip_penalty) if options.skip_penalty is not None else [] for t in texts]
    graph = ctc_graph([t.tokens for t in texts], blank=BLANK, pad_column=V + 1, jumps=jumps, device=logits.device)
    forward = viterbi_forward(emissions, lengths, graph)
    ends, scores = best_ends(forward.alpha, forward.lo, graph)
    paths = backtrack(forward, graph, lengths, ends)  # (B, T)
    out = []
    for b in range(B):
        T = int(lengths[b])
        file = files[b] if files else ""
        if not math.isfinite(float(scores[b])):
            raise ValueError(_too_short(file, texts[b], T, frame_seconds))
        out.append(spans_of_path(paths[b, :T], emissions[b, :T].cpu(), texts[b], frame_seconds=frame_seconds,
                                 min_score=options.min_score, file=file))
    return out


def align_logits(logits: Tensor, text: AlignmentText, *, frame_seconds: float, options: AlignOptions | None = None,
                 file: str = "") -> Alignment:
    """One recording of any length: the exact search if its backpointers fit in
    `options.exact_limit` bytes, else lanes of a band. Shape: logits (T, V)."""
    options = options or AlignOptions()
    T, V = logits.shape
    if T * (2 * len(text.tokens) + 1) <= options.exact_limit:
        return align_batch(logits[None], torch.tensor([T]), [text], frame_seconds=frame_seconds, options=options,
                           files=[file])[0]
    emissions = emissions_of(logits, options.wildcard_penalty)  # (T, C)
    graph = ctc_graph([text.tokens], blank=BLANK, pad_column=V + 1,
                      jumps=[text.jumps(options.skip_penalty) if options.skip_penalty is not None else []],
                      device=logits.device)
    path = best_path_in_lanes(emissions, graph, options.lanes)
    if path is None:
        raise ValueError(_too_short(file, text, T, frame_seconds))
    return spans_of_path(path, emissions.cpu(), text, frame_seconds=frame_seconds, min_score=options.min_score,
                         file=file)


def align_file(rec: Recognizer, path: str | os.PathLike, lines: list[str], options: AlignOptions | None = None, *,
               window: float = WINDOW_SECONDS, context: float = CONTEXT_SECONDS) -> Alignment:
    """Align `lines` (one utterance or paragraph each) to the recording at `path` (any length,
    any format soundfile reads). Raises ValueError for unknown characters under
    `unknown="error"`, audio it cannot read, or a text too long for the audio."""
    options = options or AlignOptions()
    text = prepare_text(lines, rec.dictionary, unknown=options.unknown, replace=options.replace,
                        wildcard=options.wildcard)
    with AudioFile(path, sample_rate=rec.sample_rate, normalize=rec.normalize) as audio:
        logits = frame_logits(rec, audio, window=window, context=context)  # (T, V)
        duration = audio.num_samples / rec.sample_rate
    alignment = align_logits(logits, text, frame_seconds=rec.model.cfg.feature_encoder.hop / rec.sample_rate,
                             options=options, file=os.fspath(path))
    alignment.duration = duration
    return alignment


def _too_short(file: str, text: AlignmentText, num_frames: int, frame_seconds: float) -> str:
    real = [c for c in text.tokens if c != text.wildcard_column]
    needed = len(real) + sum(a == b for a, b in zip(real, real[1:]))  # a blank between repeats
    if needed > num_frames:
        return (f"{file or 'the audio'}: cannot align {len(real)} tokens to {num_frames} frames of "
                f"{frame_seconds * 1000:g} ms: the text needs at least {needed} frames; is it the right text?")
    return (f"{file or 'the audio'}: no alignment of the text reached its end within the band of states "
            f"searched; is it the right text? (lines the audio lacks can be passed over unless --no-skip)")


# ---------------------------------------------------------------- path -> spans
def spans_of_path(path: np.ndarray, emissions: Tensor, text: AlignmentText, *, frame_seconds: float,
                  min_score: float, file: str = "") -> Alignment:
    """Token, word and line spans of a best path.

    Shape: path (T,) state per frame; emissions (T, C) as `emissions_of` made them."""
    tokens = np.asarray(text.tokens)
    on_token = path % 2 == 1  # (T,) odd states are tokens
    token_of_frame = np.where(on_token, (path - 1) // 2, -1)  # (T,)
    column = np.where(on_token, tokens[np.maximum(token_of_frame, 0)], BLANK)  # (T,)
    frame_logp = emissions.gather(1, torch.from_numpy(column)[:, None])[:, 0]  # (T,)
    best = emissions[:, :-2].max(dim=1).values  # (T,) the best real column
    gap = (frame_logp - best).double().numpy()  # (T,) <= 0, but at wildcard frames
    cumulative = np.concatenate([[0.0], np.cumsum(gap)])  # (T + 1,)

    frames = np.nonzero(on_token)[0]
    visited, first = np.unique(token_of_frame[frames], return_index=True)
    last = len(frames) - 1 - np.unique(token_of_frame[frames][::-1], return_index=True)[1]
    first_frame = dict(zip(visited.tolist(), frames[first].tolist()))
    end_frame = dict(zip(visited.tolist(), (frames[last] + 1).tolist()))

    def span(label: str, a: int | None, b: int | None, cls=Span, **extra):
        if a is None:
            return cls(label, None, None, None, **extra)
        score = math.exp((cumulative[b] - cumulative[a]) / (b - a))
        return cls(label, round(a * frame_seconds, 3), round(b * frame_seconds, 3), score, **extra)

    lines = [AlignedLine(line, None, None, None, line=number)
             for line, number in zip(text.lines, text.line_numbers)]
    bounds: list[list[int]] = [[] for _ in text.lines]  # frames of each line's words
    for word in text.words:
        token_spans = [span(text.symbols[k], first_frame.get(k), end_frame.get(k)) for k in word.tokens]
        found = [k for k in word.tokens if k in first_frame]
        a, b = (first_frame[found[0]], end_frame[found[-1]]) if found else (None, None)
        lines[word.line].words.append(span(word.text, a, b, AlignedWord, tokens=token_spans))
        if found:
            bounds[word.line] += [a, b]
    for line, frames_of_line in zip(lines, bounds):
        if frames_of_line:
            filled = span(line.text, min(frames_of_line), max(frames_of_line))
            line.start, line.end, line.score = filled.start, filled.end, filled.score
        line.flagged = line.score is None or line.score < min_score
    unknown = [describe_unknown([u]).split(": ", 1)[1] for u in text.unknown]
    duration = len(path) * frame_seconds
    return Alignment(file=file, duration=duration, lines=lines, unknown=unknown)


# ---------------------------------------------------------------- manifests
def align_manifest(rec: Recognizer, manifest: str | os.PathLike, options: AlignOptions | None = None, *,
                   batch_size: int = 16) -> Iterator[tuple[str, Alignment | None, str | None]]:
    """Align each utterance of a fairseq manifest `DIR/subset.tsv` to its line of `subset.wrd`
    (or `subset.ltr`) beside it, `batch_size` utterances per exact search. Yields (path,
    alignment, None) in manifest order, or (path, None, why) for one that failed (unreadable
    audio, unknown characters under "error", a line too long for its audio)."""
    options = options or AlignOptions()
    root, entries = read_manifest(manifest)
    references = read_references(manifest, num_lines=len(entries))
    if references is None:
        raise ValueError(f"{manifest}: no .wrd or .ltr transcripts beside it to align")
    frame_seconds = rec.model.cfg.feature_encoder.hop / rec.sample_rate
    pending: list[tuple[str, Tensor, AlignmentText, float]] = []

    def flush():
        if not pending:
            return
        lengths = torch.tensor([len(lg) for _, lg, _, _ in pending])
        padded = torch.nn.utils.rnn.pad_sequence([lg for _, lg, _, _ in pending], batch_first=True)  # (B, T, V)
        try:
            done = align_batch(padded, lengths, [t for _, _, t, _ in pending], frame_seconds=frame_seconds,
                               options=options, files=[p for p, _, _, _ in pending])
            results = [(p, a, None) for (p, _, _, _), a in zip(pending, done)]
        except ValueError:  # one utterance that cannot be aligned: align them one by one to name it
            results = []
            for p, lg, t, _ in pending:
                try:
                    results.append((p, align_logits(lg, t, frame_seconds=frame_seconds, options=options, file=p), None))
                except ValueError as err:
                    results.append((p, None, str(err)))
        for (_, _, _, duration), (p, a, why) in zip(pending, results):
            if a is not None:
                a.duration = duration
            yield p, a, why
        pending.clear()

    for (rel, _), line in zip(entries, references):
        path = os.path.join(root, rel)
        try:
            text = prepare_text([line], rec.dictionary, unknown=options.unknown, replace=options.replace,
                                wildcard=options.wildcard)
            with AudioFile(path, sample_rate=rec.sample_rate, normalize=rec.normalize) as audio:
                logits = frame_logits(rec, audio)  # (T, V)
                duration = audio.num_samples / rec.sample_rate
        except (OSError, ValueError) as err:
            yield from flush()
            yield path, None, str(err) if path in str(err) else f"{path}: {err}"
            continue
        pending.append((path, logits, text, duration))
        if len(pending) == batch_size:
            yield from flush()
    yield from flush()
