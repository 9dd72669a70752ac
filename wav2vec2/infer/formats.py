"""What a transcription is and how it is written: `Word` and `Transcript`, rendered as plain
text, JSON (with word times), SRT or WebVTT subtitles, and `Output`, which puts one record
per input on stdout, in one file or in a directory, atomically.

What a forced alignment is and how it is written: `Alignment` (lines of words of tokens,
each a `Span` with times and a score), rendered by `render_alignment` as JSON, CTM (token,
word or line level), Praat TextGrid (a tier per level, written by praatio) or SRT/WebVTT
(a cue per line); `write_alignment` puts it in a file atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from wav2vec2.files import atomic_output, atomic_write

SRT_MAX_SECONDS, SRT_MAX_CHARS, SRT_MAX_GAP = 7.0, 42, 1.0
"""A subtitle holds at most 7 s and 42 characters (the usual line length), and a pause
longer than 1 s starts a new one."""
FORMATS = {"text": ".txt", "json": ".json", "srt": ".srt", "vtt": ".vtt"}
SUBTITLES = ("srt", "vtt")
ALIGN_FORMATS = {"json": ".json", "ctm": ".ctm", "textgrid": ".TextGrid", "srt": ".srt", "vtt": ".vtt"}
LEVELS = ("token", "word", "line")


@dataclass
class Word:
    word: str
    start: float
    """Seconds from the start of the file."""
    end: float


@dataclass
class Transcript:
    file: str
    text: str
    """The words joined by single spaces."""
    words: list[Word] = field(default_factory=list)
    duration: float = 0.0
    """Seconds of audio at the model's rate."""

    def to_dict(self) -> dict:
        return {"file": self.file, "text": self.text,
                "words": [{"word": w.word, "start": w.start, "end": w.end} for w in self.words],
                "duration": round(self.duration, 3)}


def subtitle_cues(words: Sequence[Word]) -> list[list[Word]]:
    """Words grouped in order into cues of at most SRT_MAX_SECONDS and SRT_MAX_CHARS (a longer
    word gets a cue of its own), a new cue after a pause over SRT_MAX_GAP."""
    cues: list[list[Word]] = []
    for w in words:
        cue = cues[-1] if cues else None
        if (cue is None or w.end - cue[0].start > SRT_MAX_SECONDS or w.start - cue[-1].end > SRT_MAX_GAP
                or sum(len(x.word) + 1 for x in cue) + len(w.word) > SRT_MAX_CHARS):
            cues.append([w])
        else:
            cue.append(w)
    return cues


def format_srt(words: Sequence[Word]) -> str:
    """SubRip subtitles (cues numbered from 1, times as HH:MM:SS,mmm)."""
    return "".join(f"{i}\n{_timestamp(c[0].start, ',')} --> {_timestamp(c[-1].end, ',')}\n"
                   f"{' '.join(w.word for w in c)}\n\n" for i, c in enumerate(subtitle_cues(words), start=1))


def format_vtt(words: Sequence[Word]) -> str:
    """WebVTT subtitles (a "WEBVTT" header, times as HH:MM:SS.mmm), the cues of `format_srt`."""
    return "WEBVTT\n\n" + "".join(f"{_timestamp(c[0].start, '.')} --> {_timestamp(c[-1].end, '.')}\n"
                                   f"{' '.join(w.word for w in c)}\n\n" for c in subtitle_cues(words))


def _timestamp(seconds: float, decimal: str) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{decimal}{ms % 1000:03d}"


def render(transcript: Transcript, fmt: str) -> str:
    """A transcript as `fmt` ("text": one line; "json": one line, an object; "srt", "vtt")."""
    if fmt == "text":
        return transcript.text + "\n"
    if fmt == "json":
        return json.dumps(transcript.to_dict(), ensure_ascii=False) + "\n"
    if fmt == "srt":
        return format_srt(transcript.words)
    if fmt == "vtt":
        return format_vtt(transcript.words)
    raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")


class Output:
    """Where transcripts go, one record per input in input order:

    - `out=None`: stdout, as each file is done;
    - `out="DIR/"` (trailing slash, or an existing directory): DIR/<name>.txt|json|srt|vtt per
      input (`name` its file name, or its path inside a manifest), each written atomically
      when its file is done;
    - any other `out`: one file, grown as `out.tmp` and renamed to `out` by `close()`, which
      also runs if a later file crashes the batch, so nothing done is lost.

    In a stream (stdout or one file), text is one line per input: `path<TAB>text` when there
    are several inputs (so each line says which file it is; a silent file has an empty text,
    a failed one no line: its error went to stderr) and the bare text for one. With
    `aligned` (a manifest's inputs), text lines are bare and line k is input k, a failed input
    leaving an empty line: the hypothesis file that goes with the manifest's transcripts.
    json is a JSON object per line (JSON Lines), a failed input giving {"file", "error"}.
    Subtitles take one input per stream. If every input fails, nothing is left behind: no
    output file, and no output directory that this run created.
    """

    def __init__(self, fmt: str, out: str | os.PathLike | None, names: Sequence[str], *,
                 aligned: bool = False) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
        self.fmt, self.names, self.aligned = fmt, list(names), aligned
        self.dir: Path | None = None
        self.path: Path | None = None
        self._stream: TextIO | None = None
        self._written = 0
        self._made_dir = False
        if out is not None and (os.fspath(out).endswith(os.sep) or Path(out).is_dir()):
            self.dir = Path(out)
            targets = [self._target(n) for n in self.names]
            clashes = sorted({str(t) for t in targets if targets.count(t) > 1})
            if clashes:
                raise ValueError(f"several inputs would write {', '.join(clashes)}: give them different names")
            return
        if fmt in SUBTITLES and len(self.names) > 1:
            raise ValueError(f"{fmt} subtitles take one input per file: give a directory (--out DIR/)")
        if out is None:
            self._stream = sys.stdout
        else:
            self.path = Path(out)
            self._stream = open(self.path.with_name(self.path.name + ".tmp"), "w", encoding="utf-8")

    def _target(self, name: str) -> Path:
        return self.dir / Path(name).with_suffix(FORMATS[self.fmt])

    def write(self, index: int, path: str, transcript: Transcript | None, error: str | None = None) -> None:
        """Input `index` (at `path`): its transcript, or its failure (`transcript` None, `error` why)."""
        if self.dir is not None:
            if transcript is not None:
                if not self.dir.exists():
                    self._made_dir = True
                target = self._target(self.names[index])
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(target, render(transcript, self.fmt))
                self._written += 1
            return
        if transcript is not None:
            text = render(transcript, self.fmt)
            if self.fmt == "text" and len(self.names) > 1 and not self.aligned:
                text = f"{os.fspath(path)}\t{text}"
            self._written += 1
        elif self.fmt == "json":
            text = json.dumps({"file": os.fspath(path), "error": error}, ensure_ascii=False) + "\n"
        else:
            text = "\n" if self.fmt == "text" and self.aligned else ""
        self._stream.write(text)
        self._stream.flush()

    def close(self) -> None:
        """Finish the output; with nothing transcribed, remove what this run created."""
        if self.path is not None and self._stream is not None:
            self._stream.close()
            if self._written:
                os.replace(self._stream.name, self.path)
            else:
                Path(self._stream.name).unlink(missing_ok=True)
        if self.dir is not None and self._made_dir and not self._written:
            shutil.rmtree(self.dir, ignore_errors=True)
        self._stream = None


# ---------------------------------------------------------------- alignments
@dataclass
class Span:
    text: str
    start: float | None
    """Seconds from the start of the file; None when the span was not found in the audio
    (its line was passed over)."""
    end: float | None
    score: float | None
    """exp of the mean, over the span's frames, of log p(the path's label) - log p(the frame's
    best label): 1 when the model itself would read the text there, towards 0 the less it
    would. None when not found."""

    def to_dict(self, key: str = "text") -> dict:
        return {key: self.text, "start": self.start, "end": self.end,
                "score": None if self.score is None else round(self.score, 4)}


@dataclass
class AlignedWord(Span):
    tokens: list[Span] = field(default_factory=list)


@dataclass
class AlignedLine(Span):
    line: int = 0
    """1-based line number in the input text."""
    words: list[AlignedWord] = field(default_factory=list)
    flagged: bool = False
    """Not found, or scored below the threshold asked for."""


@dataclass
class Alignment:
    file: str
    duration: float
    """Seconds of audio."""
    lines: list[AlignedLine] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    """Characters of the text that the dictionary lacks, "'.' (1:12)", skipped or wildcarded."""

    def spans(self, level: str) -> list[Span]:
        """The line, word or token spans in order."""
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        if level == "line":
            return list(self.lines)
        words = [w for line in self.lines for w in line.words]
        return words if level == "word" else [t for w in words for t in w.tokens]

    def to_dict(self) -> dict:
        return {"file": self.file, "duration": round(self.duration, 3), "unknown": self.unknown,
                "lines": [{**line.to_dict(), "line": line.line, "flagged": line.flagged,
                           "words": [{**w.to_dict("word"), "tokens": [t.to_dict("token") for t in w.tokens]}
                                     for w in line.words]} for line in self.lines]}


def format_ctm(alignment: Alignment, level: str) -> str:
    """NIST CTM: `file 1 start duration text score` per span found (spaces in a line's text
    written `<space>`, as NeMo's aligner does)."""
    name = Path(alignment.file).stem
    return "".join(f"{name} 1 {s.start:.3f} {s.end - s.start:.3f} {s.text.replace(' ', '<space>')} {s.score:.4f}\n"
                   for s in alignment.spans(level) if s.start is not None)


def format_line_cues(alignment: Alignment, fmt: str) -> str:
    """SRT or WebVTT with one cue per line found."""
    lines = [line for line in alignment.lines if line.start is not None]
    if fmt == "srt":
        return "".join(f"{i}\n{_timestamp(x.start, ',')} --> {_timestamp(x.end, ',')}\n{x.text}\n\n"
                       for i, x in enumerate(lines, start=1))
    return "WEBVTT\n\n" + "".join(f"{_timestamp(x.start, '.')} --> {_timestamp(x.end, '.')}\n{x.text}\n\n"
                                   for x in lines)


def render_alignment(alignment: Alignment, fmt: str, *, level: str = "word") -> str:
    """An alignment as text: "json" (every level), "ctm" (`level`), "srt" or "vtt" (lines)."""
    if fmt == "json":
        return json.dumps(alignment.to_dict(), ensure_ascii=False) + "\n"
    if fmt == "ctm":
        return format_ctm(alignment, level)
    if fmt in SUBTITLES:
        return format_line_cues(alignment, fmt)
    raise ValueError(f"format must be one of {sorted(ALIGN_FORMATS)} (textgrid only to a file), got {fmt!r}")


def write_alignment(alignment: Alignment, path: str | os.PathLike, fmt: str, *, level: str = "word") -> None:
    """Write an alignment to `path` atomically; "textgrid" has an interval tier per level
    (lines, words, tokens), gaps as empty intervals."""
    if fmt != "textgrid":
        atomic_write(path, render_alignment(alignment, fmt, level=level))
        return
    try:  # the optional TextGrid writer (the `align` extra): imported only when asked for
        from praatio import textgrid
    except ImportError:
        raise ImportError("TextGrid output needs praatio: pip install -e '.[align]'") from None

    grid = textgrid.Textgrid()
    end = max([alignment.duration] + [s.end for s in alignment.spans("token") if s.end is not None])
    for name, level_ in (("lines", "line"), ("words", "word"), ("tokens", "token")):
        entries = [(s.start, s.end, s.text) for s in alignment.spans(level_) if s.start is not None]
        grid.addTier(textgrid.IntervalTier(name, entries, 0.0, end))
    with atomic_output(path) as tmp:
        grid.save(str(tmp), format="long_textgrid", includeBlankSpaces=True, reportingMode="error")
