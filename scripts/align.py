#!/usr/bin/env python
"""Align a known transcript to audio with a CTC model: where each character, word and line is,
with a score; or cut a long recording into one file per line of its text (a fine-tuning set).

examples:
  # words, characters and lines with times and scores (JSON) of a recording and its text
  python scripts/align.py --model runs/ft/checkpoint_best.pt talk.wav talk.txt --out talk.json
  # punctuation the model has no symbol for: leave it out (it is reported), or map it
  python scripts/align.py --model MODEL talk.wav talk.txt --unknown skip --replace "’='" --replace "-= "
  # Praat TextGrid (tiers lines, words, tokens); CTM at word level; SRT with a cue per line
  python scripts/align.py --model MODEL talk.wav talk.txt --format textgrid --out talk.TextGrid
  python scripts/align.py --model MODEL talk.wav talk.txt --format ctm --level word
  # every utterance of a manifest to its line of test.wrd (or .ltr), JSON Lines
  python scripts/align.py --model MODEL --manifest data/test.tsv --out test.align.jsonl
  # segment an hour-long recording with its text (one utterance per line) into a fairseq
  # manifest of the lines scoring at least 0.5, with .wrd/.ltr labels and the audio cut
  python scripts/align.py --model MODEL book.flac book.txt --segment corpus/ --min-score 0.5

Text: each line of the text file is a line of the alignment (a subtitle cue, a segment).
Characters the model's dictionary lacks stop the run, listed by line:column, unless
--unknown says what to do with them (skip: left out; star: read as the wildcard); --replace
FROM=TO maps a character first (TO empty deletes it, a space splits the word there).
A wildcard before, between and after the lines reads audio the text does not cover, and a
line the audio lacks is passed over (--skip-penalty, or --no-skip) and reported.

Long files are run through the model in windows and aligned in lanes of a band of states
(wav2vec2/infer/align_long.py): memory does not grow with their length.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from wav2vec2.files import atomic_write
from wav2vec2.infer.align import AlignOptions, align_file, align_manifest
from wav2vec2.infer.align_text import UNKNOWN_POLICIES, parse_replace
from wav2vec2.infer.formats import ALIGN_FORMATS, LEVELS, render_alignment, write_alignment
from wav2vec2.infer.recognizer import load_recognizer
from wav2vec2.infer.segment import segment_recording
from wav2vec2.infer.transcribe import CONTEXT_SECONDS, WINDOW_SECONDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", nargs="?", help="the recording (anything soundfile reads)")
    parser.add_argument("text", nargs="?", help="its transcript, a text file (a line per utterance)")
    parser.add_argument("--manifest", help="a fairseq manifest DIR/subset.tsv to align instead, with subset.wrd or "
                                           "subset.ltr beside it")
    parser.add_argument("--model", required=True, help="this project's CTC checkpoint, a transformers "
                        "Wav2Vec2ForCTC directory, or a fairseq checkpoint (with --dictionary)")
    parser.add_argument("--dictionary", help="dict.ltr.txt of a fairseq checkpoint")
    parser.add_argument("--format", choices=sorted(ALIGN_FORMATS), default="json",
                        help="json: lines, words and tokens with start, end, score (default); ctm: one span "
                             "per row at --level; textgrid: a tier per level (needs --out); srt, vtt: a cue per line")
    parser.add_argument("--level", choices=LEVELS, default="word", help="the spans of a CTM (default: word)")
    parser.add_argument("--out", help="the output file (a manifest's: JSON Lines or CTM in one file, or DIR/ for "
                                      "a file per utterance); default: stdout")
    parser.add_argument("--segment", metavar="DIR", help="segmentation: write the lines scoring >= --min-score "
                        "as DIR/audio/*.flac, DIR/train.tsv, .wrd, .ltr, dict.ltr.txt and DIR/segments.tsv")
    parser.add_argument("--unknown", choices=UNKNOWN_POLICIES, default="error",
                        help="characters the dictionary lacks: error (default; lists them), skip, star")
    parser.add_argument("--replace", action="append", default=[], metavar="FROM=TO",
                        help="map a character before aligning (repeatable)")
    parser.add_argument("--min-score", type=float, help="flag lines scoring below it (default: 0.3); with "
                        "--segment, keep only lines scoring at least it (default: 0.5)")
    parser.add_argument("--pad", type=float, default=0.1, help="--segment: seconds of audio kept around each "
                        "line, at most half the gap to its neighbours (default: 0.1)")
    parser.add_argument("--no-wildcard", action="store_true", help="no wildcard between lines: every frame is "
                                                                   "read by the text")
    parser.add_argument("--wildcard-penalty", type=float, default=AlignOptions.wildcard_penalty,
                        help=f"the wildcard's log-probability below each frame's best (default: "
                             f"{AlignOptions.wildcard_penalty:g})")
    skip = parser.add_mutually_exclusive_group()
    skip.add_argument("--skip-penalty", type=float, default=AlignOptions.skip_penalty,
                      help=f"log-probability cost per token of passing over a line the audio lacks (default: "
                           f"{AlignOptions.skip_penalty:g})")
    skip.add_argument("--no-skip", action="store_true", help="every line must be found in the audio")
    parser.add_argument("--window", type=float, default=WINDOW_SECONDS, help="seconds per model window")
    parser.add_argument("--context", type=float, default=CONTEXT_SECONDS, help="seconds of context each side")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.manifest) == bool(args.audio):
        parser.error("give AUDIO TEXT, or --manifest")
    if args.audio and not args.text:
        parser.error("give the transcript's text file after the audio")
    if args.format == "textgrid" and not args.out:
        parser.error("--format textgrid needs --out")
    if args.segment and args.manifest:
        parser.error("--segment takes AUDIO TEXT")
    try:
        options = AlignOptions(unknown=args.unknown, replace=parse_replace(args.replace),
                               wildcard=not args.no_wildcard, wildcard_penalty=args.wildcard_penalty,
                               skip_penalty=None if args.no_skip or args.no_wildcard else args.skip_penalty)
        if args.min_score is not None and not args.segment:
            options.min_score = args.min_score
        rec = load_recognizer(args.model, dictionary=args.dictionary, device=args.device)
        if args.manifest:
            return _align_manifest(rec, args, options)
        lines = Path(args.text).read_text(encoding="utf-8").splitlines()
        if args.segment:
            return _segment(rec, args, lines, options)
        alignment = align_file(rec, args.audio, lines, options, window=args.window, context=args.context)
    except (OSError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _report(alignment)
    if args.out:
        write_alignment(alignment, args.out, args.format, level=args.level)
    else:
        sys.stdout.write(render_alignment(alignment, args.format, level=args.level))
    return 0


def _report(alignment) -> None:
    """Unknown characters, flagged and missing lines, on stderr."""
    if alignment.unknown:
        print(f"{alignment.file}: {len(alignment.unknown)} character(s) not in the dictionary, not aligned: "
              f"{', '.join(alignment.unknown[:12])}{' ...' if len(alignment.unknown) > 12 else ''}", file=sys.stderr)
    for line in alignment.lines:
        if line.flagged:
            what = "not found in the audio" if line.start is None else f"score {line.score:.3f}"
            print(f"{alignment.file}: line {line.line} {what}: {line.text[:60]}", file=sys.stderr)


def _segment(rec, args, lines, options) -> int:
    min_score = 0.5 if args.min_score is None else args.min_score
    report = segment_recording(rec, args.audio, lines, args.segment, options=options, min_score=min_score,
                               pad=args.pad)
    print(f"{args.segment}: {len(report.kept)} of {len(report.alignment.lines)} lines kept "
          f"({report.seconds / 60:.1f} min of audio), {len(report.dropped)} dropped:", file=sys.stderr)
    for number, score, why in report.dropped:
        print(f"  line {number}: {why}" + ("" if score is None else f" ({score:.3f})"), file=sys.stderr)
    return 0


def _align_manifest(rec, args, options) -> int:
    out_dir = args.out is not None and (args.out.endswith(os.sep) or Path(args.out).is_dir())
    if not out_dir and args.format not in ("json", "ctm"):
        parser_error = f"--format {args.format} with --manifest needs --out DIR/ (a file per utterance)"
        print(f"error: {parser_error}", file=sys.stderr)
        return 2
    failures, stream = [], []
    if out_dir:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    for path, alignment, why in align_manifest(rec, args.manifest, options):
        if alignment is None:
            print(f"failed: {why}", file=sys.stderr)
            failures.append(path)
            continue
        _report(alignment)
        if out_dir:
            write_alignment(alignment, Path(args.out) / (Path(path).stem + ALIGN_FORMATS[args.format]), args.format,
                            level=args.level)
        elif args.out:
            stream.append(render_alignment(alignment, args.format, level=args.level))
        else:
            sys.stdout.write(render_alignment(alignment, args.format, level=args.level))
    if args.out and not out_dir:
        atomic_write(args.out, "".join(stream))
    if failures:
        print(f"{len(failures)} utterance(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
