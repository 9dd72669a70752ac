#!/usr/bin/env python
"""Transcribe recordings of any length (any format, rate and channels) with a CTC model.

examples:
  # one line per file to stdout: PATH<TAB>TEXT (the text alone for a single file)
  python scripts/transcribe.py --model runs/ft/checkpoint_best.pt talk.mp3 interview.wav
  # subtitles, one .srt per input, in subs/
  python scripts/transcribe.py --model runs/ft/checkpoint_best.pt --format srt --out subs/ lecture*.flac
  # words with timestamps (JSON Lines: an object per file)
  python scripts/transcribe.py --model hf/wav2vec2-base-960h --format json --out words.jsonl a.wav b.wav
  # a manifest, one line per utterance in its order; WER/CER if test.ltr (or .wrd) is beside it
  python scripts/transcribe.py --model wav2vec_small_960h.pt --dictionary dict.ltr.txt \\
      --manifest data/test.tsv --out hyp.txt
  # beam search (pip install -e '.[lm]'), with a KenLM word n-gram and its lexicon
  python scripts/transcribe.py --model runs/ft/checkpoint_best.pt --beam 50 talk.wav
  python scripts/transcribe.py --model runs/ft/checkpoint_best.pt --beam 500 --lm 4-gram.bin \\
      --lexicon lexicon.txt talk.wav

Long files are read in pieces and run in windows (--window seconds kept per window, --context
seconds of audio on each side), so memory does not grow with their length. A file that cannot
be read or holds no audio is reported and skipped; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import os
import sys

from wav2vec2.infer.decode import BeamSearch
from wav2vec2.infer.formats import FORMATS, Output
from wav2vec2.infer.recognizer import PRECISIONS, load_recognizer
from wav2vec2.infer.transcribe import CONTEXT_SECONDS, WINDOW_SECONDS, read_manifest_inputs, transcribe_batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", nargs="*", help="audio files (anything soundfile reads)")
    parser.add_argument("--manifest", help="a fairseq manifest DIR/subset.tsv to transcribe instead")
    parser.add_argument("--model", required=True,
                        help="this project's CTC checkpoint, a transformers Wav2Vec2ForCTC directory, "
                             "or a fairseq checkpoint (with --dictionary)")
    parser.add_argument("--dictionary", help="dict.ltr.txt of a fairseq checkpoint")
    parser.add_argument("--format", choices=sorted(FORMATS), default="text",
                        help="text: a line per file (PATH<TAB>TEXT with several files); json: {file, text, "
                             "words: [{word, start, end}], duration} per line; srt, vtt: subtitles (default: text)")
    parser.add_argument("--out", help="a file, or a directory (DIR/ or an existing one) for one file per input; "
                                      "default: stdout")
    parser.add_argument("--beam", type=int, metavar="N", help="beam search of width N (default: greedy)")
    parser.add_argument("--lm", help="KenLM word n-gram (.arpa or .bin) for the beam search")
    parser.add_argument("--lexicon", help="the words the LM may produce, flashlight's format ('WORD\\tW O R D |' "
                                          "per line); default: the .arpa's unigrams")
    parser.add_argument("--lm-weight", type=float, default=2.0, help="weight of the LM (default: 2)")
    parser.add_argument("--word-score", type=float, default=0.0, help="score added per word (default: 0)")
    parser.add_argument("--window", type=float, default=WINDOW_SECONDS,
                        help=f"seconds of audio kept per window (default: {WINDOW_SECONDS:g})")
    parser.add_argument("--context", type=float, default=CONTEXT_SECONDS,
                        help=f"seconds of context on each side of a window (default: {CONTEXT_SECONDS:g})")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="bf16: matmuls and convolutions in bfloat16, faster on CPUs with AMX or "
                             "AVX512-BF16 and on GPUs; a few letters may differ (docs/inference.md) (default: fp32)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar for long files")
    args = parser.parse_args(argv)
    if bool(args.audio) == bool(args.manifest):
        parser.error("give audio files or --manifest, not both")
    if args.lm and args.beam is None:
        parser.error("--lm needs --beam N")
    if args.lexicon and not args.lm:
        parser.error("--lexicon goes with --lm")

    try:
        rec = load_recognizer(args.model, dictionary=args.dictionary, device=args.device, precision=args.precision)
        beam = None if args.beam is None else BeamSearch(rec.dictionary, beam_width=args.beam, lm=args.lm,
                                                         lexicon=args.lexicon, lm_weight=args.lm_weight,
                                                         word_score=args.word_score)
        references = None
        if args.manifest:
            paths, names, references = read_manifest_inputs(args.manifest)
        else:  # in a directory, outputs are named after the files
            paths, names = args.audio, [os.path.basename(p) for p in args.audio]
        output = Output(args.format, args.out, names, aligned=bool(args.manifest))
    except (OSError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        report = transcribe_batch(rec, paths, output, references=references, beam=beam, window=args.window,
                                  context=args.context, progress=not args.no_progress)
    except ValueError as err:  # scoring: a reference line without words
        print(f"error: {err}", file=sys.stderr)
        return 1
    if report.counts is not None:
        c = report.counts
        skipped = f", {len(report.failures)} failed and not scored" if report.failures else ""
        print(f"{args.manifest}: {len(paths) - len(report.failures)} utterances{skipped}, {c['words']} words: "
              f"WER {report.wer:.2f}% ({c['word_errors']} errors), CER {report.cer:.2f}% ({c['char_errors']} errors)",
              file=sys.stderr)
    if report.failures:
        print(f"{len(report.failures)} of {len(paths)} inputs failed:", file=sys.stderr)
        for path, _ in report.failures:
            print(f"  {path}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
