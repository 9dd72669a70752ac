"""Segmentation: a long recording and its text, one utterance per line, cut into a fine-tuning
set. Every line is aligned in one pass (`align.align_file`: wildcards between the lines for
audio the text lacks, jumps past lines the audio lacks); the lines found with a score of at
least `min_score` are cut into files and written as a fairseq manifest with their labels:

    OUT/audio/{stem}_{line:05d}.flac    each kept line (mono, at the model's rate, 16-bit),
                                        with up to `pad` seconds of audio each side (never
                                        past half the gap to the next line)
    OUT/{subset}.tsv                    the manifest: root OUT/audio, then `name<TAB>samples`
    OUT/{subset}.wrd, {subset}.ltr      their transcripts as the dictionary spells them:
                                        words, and letters with `|` after each word
    OUT/dict.ltr.txt                    the model's dictionary, for fine-tuning on them
    OUT/segments.tsv                    every line: number, start, end, score, kept or why not,
                                        its text; nothing is dropped without a row here

All files are written atomically.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from wav2vec2.files import atomic_write
from wav2vec2.data.labels import WORD_BOUNDARY, write_label_lines
from wav2vec2.data.manifest import write_manifest
from wav2vec2.infer.align import AlignOptions, align_file
from wav2vec2.infer.align_text import AlignmentText, prepare_text
from wav2vec2.infer.audio import AudioFile
from wav2vec2.infer.formats import Alignment
from wav2vec2.infer.recognizer import Recognizer


@dataclass
class SegmentReport:
    alignment: Alignment
    kept: list[int] = field(default_factory=list)
    """1-based line numbers of the lines written."""
    dropped: list[tuple[int, float | None, str]] = field(default_factory=list)
    """(line number, score or None, why) of every line not written."""
    seconds: float = 0.0
    """Audio written."""


def segment_recording(rec: Recognizer, audio_path: str | os.PathLike, lines: list[str], out: str | os.PathLike, *,
                      options: AlignOptions | None = None, min_score: float = 0.5, pad: float = 0.1,
                      subset: str = "train") -> SegmentReport:
    """Align `lines` to the recording, then cut and write the lines scoring >= `min_score`
    into `out` (see the module's docstring). Returns what was kept and what was dropped, why."""
    options = options or AlignOptions()
    out = Path(out)
    text = prepare_text(lines, rec.dictionary, unknown=options.unknown, replace=options.replace,
                        wildcard=options.wildcard)
    alignment = align_file(rec, audio_path, lines, options)
    report = SegmentReport(alignment)
    stem = Path(audio_path).stem
    found = [k for k, line in enumerate(alignment.lines) if line.start is not None]
    entries, wrd, ltr, rows = [], [], [], []
    (out / "audio").mkdir(parents=True, exist_ok=True)
    with AudioFile(audio_path, sample_rate=rec.sample_rate) as audio:  # raw samples, not normalised
        rate = rec.sample_rate
        for k, line in enumerate(alignment.lines):
            words = text.normalized_line(k)
            if line.start is None:
                why = "not found in the audio"
            elif line.score < min_score:
                why = f"score below {min_score:g}"
            elif not words:
                why = "no word of the dictionary"
            else:
                why = ""
            if why:
                report.dropped.append((line.line, line.score, why))
            else:
                at = found.index(k)
                before = alignment.lines[found[at - 1]].end if at else 0.0
                after = alignment.lines[found[at + 1]].start if at + 1 < len(found) else audio.num_samples / rate
                start = max(line.start - pad, (before + line.start) / 2)
                end = min(line.end + pad, (line.end + after) / 2)
                samples = audio.read(round(start * rate), round(end * rate)).numpy()
                name = f"{stem}_{line.line:05d}.flac"
                buffer = io.BytesIO()
                sf.write(buffer, samples, rate, format="FLAC", subtype="PCM_16")
                atomic_write(out / "audio" / name, buffer.getvalue())
                entries.append((name, len(samples)))
                wrd.append(" ".join(words))
                ltr.append(_letters(text, k))
                report.kept.append(line.line)
                report.seconds += len(samples) / rate
            score = "" if line.score is None else f"{line.score:.4f}"
            times = ("", "") if line.start is None else (f"{line.start:.3f}", f"{line.end:.3f}")
            rows.append(f"{line.line}\t{times[0]}\t{times[1]}\t{score}\t{why or 'kept'}\t{line.text}")
    write_manifest(out / f"{subset}.tsv", str((out / "audio").resolve()), entries)
    write_label_lines(out / f"{subset}.wrd", wrd)
    write_label_lines(out / f"{subset}.ltr", ltr)
    rec.dictionary.save(out / "dict.ltr.txt")
    atomic_write(out / "segments.tsv", "line\tstart\tend\tscore\tstatus\ttext\n" + "".join(r + "\n" for r in rows))
    return report


def _letters(text: AlignmentText, line: int) -> str:
    """The .ltr line of line `line`: its symbols separated by spaces, `|` after each word."""
    words = [[text.symbols[t] for t in w.tokens if text.tokens[t] != text.wildcard_column]
             for w in text.words if w.line == line]
    return " ".join(" ".join(symbols) + f" {WORD_BOUNDARY}" for symbols in words if symbols)
