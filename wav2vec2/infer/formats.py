"""What a transcription is and how it is written: `Word` and `Transcript`, rendered as plain
text, JSON (with word times), SRT or WebVTT subtitles, and `Output`, which puts one record
per input on stdout, in one file or in a directory, atomically.
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

from wav2vec2.files import atomic_write

SRT_MAX_SECONDS, SRT_MAX_CHARS, SRT_MAX_GAP = 7.0, 42, 1.0
"""A subtitle holds at most 7 s and 42 characters (the usual line length), and a pause
longer than 1 s starts a new one."""
FORMATS = {"text": ".txt", "json": ".json", "srt": ".srt", "vtt": ".vtt"}
SUBTITLES = ("srt", "vtt")


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
