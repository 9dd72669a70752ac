"""Per-layer features of a wav2vec 2.0 encoder, written as float32 .npy arrays.

examples:
  # every layer (0..N) of every audio file under audio/ -> feats/<layer>/<relpath>.npy
  python scripts/extract_features.py --model runs/pretrain/checkpoint_best.pt --out feats audio/
  # layers 0, 6, 12 and the CNN features of a manifest's files, one array per layer + index.tsv
  python scripts/extract_features.py --model hf_dir --manifest data/valid.tsv --layers 0,6,12,cnn \\
      --format stacked --out feats
  # two files, the last layer only, a transformers directory with no preprocessor_config.json
  python scripts/extract_features.py --model hf_dir --no-normalize --layers 12 --out feats a.wav b.flac

The model is anything the loader reads (`wav2vec2/interop/load.py`): a pretraining or CTC
checkpoint of this project, a fairseq checkpoint or a transformers directory. Layer i is `EncoderOutput.hidden_states[i]`: 0 the
input of the first Transformer layer, N (num_layers) the encoder's output; cnn the CNN
features. feats/features.json records the numbering, dims, frame rate (50 Hz at 16 kHz), hop
and receptive field. Files longer than --window seconds are encoded in windows with --context
seconds of audio on each side, in bounded memory. A file that cannot be read is reported by
name and skipped; the exit status is then 1, with the failures listed at the end.
"""

from __future__ import annotations

import argparse
import logging
import sys

from wav2vec2.infer.feature_files import extract_to_dir, failure_message, find_utterances
from wav2vec2.infer.features import load_extractor, parse_layers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", help="audio files and directories (searched recursively)")
    parser.add_argument("--manifest", action="append", default=[], help="a fairseq manifest (.tsv); repeatable")
    parser.add_argument("--model", required=True, help="checkpoint file or transformers directory")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--layers", default="all",
                        help="comma-separated: layer numbers 0..N, 'all' (0..N), 'cnn' (default: all)")
    parser.add_argument("--format", choices=["npy", "stacked"], default="npy",
                        help="npy: <layer>/<utterance>.npy; stacked: <layer>.npy + index.tsv (default: npy)")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                        help="standardise each waveform (default: what the model was trained with)")
    parser.add_argument("--sample-rate", type=int, default=None,
                        help="the model's sample rate (default: what the model records, else 16000)")
    parser.add_argument("--window", type=float, default=30.0, help="seconds of output per window (default: 30)")
    parser.add_argument("--context", type=float, default=5.0,
                        help="seconds of audio a window sees on each side (default: 5)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quiet", action="store_true", help="no line per file")
    args = parser.parse_args(argv)
    if not args.inputs and not args.manifest:
        parser.error("give audio files, directories or --manifest")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")

    try:
        extractor = load_extractor(args.model, normalize=args.normalize, sample_rate=args.sample_rate,
                                   device=args.device, window_seconds=args.window, context_seconds=args.context)
        layers = parse_layers(args.layers, extractor.num_layers)
        utterances = find_utterances(args.inputs, args.manifest)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = extract_to_dir(extractor, utterances, args.out, layers=layers, stacked=args.format == "stacked")
    print(f"{len(result.num_frames)} utterances, {sum(result.num_frames.values())} frames, layers "
          f"{','.join(layers)} -> {args.out}", file=sys.stderr)
    if result.failures:
        print(f"{len(result.failures)} files failed:", file=sys.stderr)
        for path, reason in result.failures:
            print(f"  {failure_message(path, reason)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
