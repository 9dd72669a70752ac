"""Long recordings as segment manifests: spans of files, no audio cut or copied.

`wav2vec2-segment SRC.tsv DEST.tsv` reads a manifest of long recordings (hours of talk,
broadcasts) and writes one row per span, `path<TAB>length<TAB>start=S`
(`wav2vec2/data/manifest.py`), which training reads by seeking. Two ways to choose spans:
- by length only (the default): each file is cut into equal spans of at most
  `--max-seconds`, from its header alone, without decoding;
- `--vad`: an energy voice-activity detector. The file is decoded block by block (memory
  stays at one block); a 30 ms frame is speech when its RMS level is within `--threshold-db`
  of the file's loud frames (its 95th percentile), pauses shorter than `--min-pause` join
  their neighbours, and each speech region is then cut as above.
Spans shorter than `--min-seconds` are left out, and counted.

From an alignment instead (`--alignment`): the sources are what `scripts/align.py` wrote
(JSON, or JSON Lines for a manifest), and each line of text it found, scoring at least
`--min-score`, becomes one row, padded by up to `--pad` seconds (never past half the gap to
its neighbours), with its text on the same line of `DEST.wrd`: a fine-tuning set made of
spans of the recordings, none cut or copied (`align.py --segment` cuts them into files).
Lines not found, scoring low, shorter than `--min-seconds` or longer than `--max-seconds`
are left out, and counted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import soundfile as sf
from tqdm import tqdm

from wav2vec2.data.labels import write_label_lines
from wav2vec2.data.manifest import Manifest, Row, read_rows, write_rows

FRAME_SECONDS = 0.03
"""Energy frames of the detector: 30 ms, a common VAD frame."""
LOUD_PERCENTILE = 95.0
"""The level speech is measured against: the file's loud frames, robust to a few clicks."""


def fixed_spans(num_samples: int, *, max_len: int, min_len: int, offset: int = 0) -> list[tuple[int, int]]:
    """(start, length) of equal spans of at most `max_len` covering [offset, offset + num_samples),
    those shorter than `min_len` left out."""
    if num_samples <= 0:
        return []
    pieces = -(-num_samples // max_len)
    bounds = [offset + num_samples * k // pieces for k in range(pieces + 1)]
    return [(a, b - a) for a, b in zip(bounds, bounds[1:]) if b - a >= min_len]


def speech_regions(path: str, *, threshold_db: float, min_pause: float) -> tuple[list[tuple[int, int]], int]:
    """(start, length) of the speech regions of a file by frame energy, and its sample rate.
    Decodes the file block by block; channels are averaged."""
    info = sf.info(path)
    frame = max(1, int(round(FRAME_SECONDS * info.samplerate)))
    levels = []
    for block in sf.blocks(path, blocksize=frame * 1000, dtype="float32", always_2d=True, fill_value=0.0):
        mono = block.mean(axis=1)  # (L, channels) -> (L,)
        usable = len(mono) - len(mono) % frame
        if usable:
            frames = mono[:usable].reshape(-1, frame)  # (L,) -> (L / frame, frame)
            levels.append(10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-10))
    if not levels:
        return [], info.samplerate
    level = np.concatenate(levels)
    speech = level > np.percentile(level, LOUD_PERCENTILE) + threshold_db
    # Pauses shorter than min_pause join their neighbours.
    edges = np.flatnonzero(np.diff(np.concatenate([[0], speech.astype(np.int8), [0]])))
    runs = list(zip(edges[::2], edges[1::2]))  # [first, end) frame of each speech run
    max_gap = int(min_pause / FRAME_SECONDS)
    merged: list[list[int]] = []
    for first, end in runs:
        if merged and first - merged[-1][1] <= max_gap:
            merged[-1][1] = end
        else:
            merged.append([first, end])
    return [(int(a) * frame, int(b - a) * frame) for a, b in merged], info.samplerate


def _spans_of(job: tuple[str, int, float, float, float | None, float]) -> tuple[list[tuple[int, int]], str | None]:
    """One file's spans (run in a worker process): (spans, error or None)."""
    path, num_samples, max_seconds, min_seconds, threshold_db, min_pause = job
    try:
        rate = sf.info(path).samplerate
        max_len, min_len = int(max_seconds * rate), int(min_seconds * rate)
        if threshold_db is None:
            return fixed_spans(num_samples, max_len=max_len, min_len=min_len), None
        regions, _ = speech_regions(path, threshold_db=threshold_db, min_pause=min_pause)
        return [s for start, n in regions for s in fixed_spans(n, max_len=max_len, min_len=min_len, offset=start)], None
    except Exception as e:  # libsndfile raises several types; all mean "unreadable"
        return [], f"unreadable: {e}".replace("\n", " ")


def segment_manifest(src: str | os.PathLike, dest: str | os.PathLike, *, max_seconds: float, min_seconds: float,
                     threshold_db: float | None = None, min_pause: float = 0.3, num_workers: int = 1,
                     progress: bool = False) -> dict[str, int]:
    """Write `dest`, a segment manifest of the files of manifest `src` (module docstring);
    `threshold_db` None cuts by length only. Returns counts: files, segments, files that
    gave none, unreadable files."""
    if not 0 < min_seconds <= max_seconds:
        raise ValueError(f"need 0 < --min-seconds <= --max-seconds, got {min_seconds} and {max_seconds}")
    manifest = read_rows(src)
    jobs = [(manifest.abspath(r), r.num_samples, max_seconds, min_seconds, threshold_db, min_pause)
            for r in manifest.rows]
    with ProcessPoolExecutor(max_workers=num_workers) if num_workers > 1 else _InProcess() as pool:
        results = pool.map(_spans_of, jobs, chunksize=max(1, min(64, len(jobs) // (8 * num_workers))))
        if progress:
            results = tqdm(results, total=len(jobs), unit="file", desc="segmenting")
        results = list(results)
    rows, counts = [], {"files": len(jobs), "segments": 0, "no_segment": 0, "unreadable": 0}
    for row, (spans, error) in zip(manifest.rows, results):
        if error is not None:
            counts["unreadable"] += 1
            print(f"skipped {manifest.abspath(row)}: {error}", file=sys.stderr)
        counts["no_segment"] += not spans and error is None
        base = 0 if row.start is None else row.start  # a segment of a segment is a span of the file
        rows += [Row(row.path, n, start=base + start, root=row.root) for start, n in spans]
    counts["segments"] = len(rows)
    write_rows(dest, Manifest(manifest.roots, rows))
    return counts


def aligned_spans(lines: list[dict], *, rate: int, num_samples: int, min_score: float, pad: float,
                  min_seconds: float, max_seconds: float) -> tuple[list[tuple[int, int, str]], dict[str, int]]:
    """(start, length, text) in samples of the lines of one alignment (`scripts/align.py`'s
    JSON "lines") worth training on, and why the others were left out (counts)."""
    found = [ln for ln in lines if ln.get("start") is not None]
    why = {"not_found": len(lines) - len(found), "low_score": 0, "length": 0}
    spans = []
    for k, ln in enumerate(found):
        if ln["score"] < min_score:
            why["low_score"] += 1
            continue
        # Pad into the silence around the line, never past half the gap to a neighbour.
        before = (ln["start"] - found[k - 1]["end"]) / 2 if k else ln["start"]
        after = (found[k + 1]["start"] - ln["end"]) / 2 if k + 1 < len(found) else num_samples / rate - ln["end"]
        start = max(0, int(round((ln["start"] - min(pad, max(before, 0))) * rate)))
        end = min(num_samples, int(round((ln["end"] + min(pad, max(after, 0))) * rate)))
        if not min_seconds * rate <= end - start <= max_seconds * rate:
            why["length"] += 1
            continue
        spans.append((start, end - start, " ".join(ln["text"].split())))
    return spans, why


def read_alignments(path: str | os.PathLike) -> list[dict]:
    """The alignments in a file `scripts/align.py` wrote: one JSON object, or JSON Lines.
    Errors name the file and line."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        pass
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not an alignment from scripts/align.py ({e.msg})") from None
    return out


def segment_alignments(sources: list[str | os.PathLike], dest: str | os.PathLike, *, max_seconds: float,
                       min_seconds: float, min_score: float = 0.5, pad: float = 0.1) -> dict[str, int]:
    """Write `dest` (a segment manifest) and `dest`'s `.wrd` from alignment files (module
    docstring). An alignment's "file" is read as align.py was given it: from the working
    directory, else from the alignment file's directory. Returns counts."""
    if not 0 < min_seconds <= max_seconds:
        raise ValueError(f"need 0 < --min-seconds <= --max-seconds, got {min_seconds} and {max_seconds}")
    found: list[tuple[str, list[tuple[int, int, str]]]] = []
    counts = {"files": 0, "failed": 0, "lines": 0, "segments": 0, "not_found": 0, "low_score": 0, "length": 0}
    for source in sources:
        for k, alignment in enumerate(read_alignments(source), start=1):
            where = f"{os.fspath(source)}:{k}"
            if "error" in alignment:  # align.py could not align this file: reported, not fatal
                counts["failed"] += 1
                print(f"skipped {alignment.get('file')!r} ({where}): {alignment['error']}", file=sys.stderr)
                continue
            if "lines" not in alignment or "file" not in alignment:
                raise ValueError(f"{where}: not an alignment from scripts/align.py (no 'file' or 'lines')")
            path = alignment["file"]
            if not os.path.isfile(path):
                path = os.path.join(os.path.dirname(os.fspath(source)), path)
            if not os.path.isfile(path):
                raise ValueError(f"{where}: audio file {alignment['file']!r} not found (from the working directory "
                                 f"or beside {os.fspath(source)})")
            info = sf.info(path)
            spans, why = aligned_spans(alignment["lines"], rate=info.samplerate, num_samples=info.frames,
                                       min_score=min_score, pad=pad, min_seconds=min_seconds, max_seconds=max_seconds)
            found.append((os.path.realpath(path), spans))
            counts["files"] += 1
            counts["lines"] += len(alignment["lines"])
            for key, n in why.items():
                counts[key] += n
    if not any(spans for _, spans in found):  # also when nothing could be aligned at all
        raise ValueError(f"no line of {counts['lines']} in {len(sources)} alignment file(s) was kept: "
                         f"{counts['not_found']} not found, {counts['low_score']} below --min-score {min_score}, "
                         f"{counts['length']} outside [--min-seconds, --max-seconds]")
    root = os.path.commonpath([os.path.dirname(p) for p, _ in found])
    rows = [Row(os.path.relpath(p, root), n, start=start) for p, spans in found for start, n, _ in spans]
    counts["segments"] = len(rows)
    write_rows(dest, Manifest([root], rows))
    stem = os.fspath(dest)[:-4] if os.fspath(dest).endswith(".tsv") else os.fspath(dest)
    write_label_lines(stem + ".wrd", [text for _, spans in found for _, _, text in spans])
    return counts


class _InProcess:
    """`ProcessPoolExecutor`'s map, in this process (one worker)."""

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn, items, chunksize: int = 1):
        return map(fn, items)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wav2vec2-segment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", nargs="+", help="a manifest of long recordings; with --alignment, the JSON or JSON "
                                               "Lines files scripts/align.py wrote")
    parser.add_argument("dest", help="segment manifest to write (with --alignment, and DEST's .wrd)")
    parser.add_argument("--max-seconds", type=float, default=15.0, help="longest span (default 15)")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="shorter spans are left out (default 2)")
    parser.add_argument("--vad", action="store_true", help="cut speech regions found by frame energy")
    parser.add_argument("--threshold-db", type=float, default=-35.0,
                        help="--vad: speech is within this many dB of the file's loud frames (default -35)")
    parser.add_argument("--min-pause", type=float, default=0.3, help="--vad: shorter pauses join regions (s)")
    parser.add_argument("--alignment", action="store_true", help="the sources are alignments: a row per line found")
    parser.add_argument("--min-score", type=float, default=0.5, help="--alignment: lines scoring less are left out "
                                                                     "(default 0.5)")
    parser.add_argument("--pad", type=float, default=0.1, help="--alignment: seconds kept around each line, at most "
                                                               "half the gap to its neighbours (default 0.1)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if len(args.src) > 1 and not args.alignment:
        parser.error("one manifest at a time (several sources only with --alignment)")
    try:
        if args.alignment:
            counts = segment_alignments(args.src, args.dest, max_seconds=args.max_seconds,
                                        min_seconds=args.min_seconds, min_score=args.min_score, pad=args.pad)
            print(f"{counts['segments']} segments from {counts['lines']} aligned lines of {counts['files']} files "
                  f"into {args.dest}; left out: {counts['not_found']} not found, {counts['low_score']} scoring "
                  f"under {args.min_score}, {counts['length']} too short or too long; {counts['failed']} files "
                  "align.py could not align")
            return 0
        counts = segment_manifest(args.src[0], args.dest, max_seconds=args.max_seconds,
                                  min_seconds=args.min_seconds, threshold_db=args.threshold_db if args.vad else None,
                                  min_pause=args.min_pause, num_workers=args.workers,
                                  progress=not args.no_progress and sys.stderr.isatty())
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{counts['segments']} segments from {counts['files']} files into {args.dest}; "
          f"{counts['no_segment']} files gave no segment, {counts['unreadable']} unreadable")
    return 0
