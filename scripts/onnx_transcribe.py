#!/usr/bin/env python
"""Transcribe audio with an exported wav2vec 2.0 CTC model, without PyTorch.

    python scripts/onnx_transcribe.py asr.onnx speech.wav
    python scripts/onnx_transcribe.py asr.int8.onnx a.flac b.wav --threads 2

Needs numpy, soundfile and onnxruntime (and soxr, only for audio at another sample rate):
this file imports neither torch nor the wav2vec2 package, so it can be copied on its own
next to the model. Everything about the model comes from the JSON sidecar that
`scripts/export.py` writes beside it (`asr.onnx` -> `asr.onnx.json`): vocabulary, blank, word
delimiter, sample rate, normalisation.

Each file is read whole, downmixed to mono, resampled if needed, standardised over the
whole file if the model was trained so, run as one utterance and decoded greedily (argmax
per frame, repeats collapsed, blanks dropped, the delimiter becomes a space): the same
transcript as `wav2vec2.infer`'s greedy decoding. One file prints its transcript; several
print `path<TAB>transcript` per line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import soundfile as sf

FORMAT = "wav2vec2-ctc"


def load_meta(model: Path, sidecar: Path | None = None) -> dict:
    sidecar = sidecar or model.with_name(model.name + ".json")
    if not sidecar.is_file():
        raise FileNotFoundError(f"no sidecar {sidecar} beside {model}: export with scripts/export.py, "
                                "or pass --sidecar")
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{sidecar} is not a {FORMAT} sidecar (format {meta.get('format')!r})")
    return meta


def read_audio(path: str, meta: dict) -> np.ndarray:
    """Mono float32 at the model's rate, standardised if the model wants it. Shape: (L,)."""
    audio, rate = sf.read(path, dtype="float32", always_2d=True)  # (L, channels)
    audio = audio.mean(axis=1, dtype=np.float32) if audio.shape[1] > 1 else audio[:, 0]
    if rate != meta["sample_rate"]:
        import soxr  # only needed here

        audio = soxr.resample(audio, rate, meta["sample_rate"], quality="HQ").astype(np.float32)
    if len(audio) < meta["min_samples"]:
        raise ValueError(f"{path}: {len(audio)} samples at {meta['sample_rate']} Hz; the model needs at "
                         f"least {meta['min_samples']}")
    if meta["normalize"]:
        # F.layer_norm over the whole file: (x - mean) / sqrt(var + eps), moments in float64.
        x = audio.astype(np.float64)
        audio = ((x - x.mean()) / np.sqrt(x.var() + meta["normalize_eps"])).astype(np.float32)
    return np.ascontiguousarray(audio)


def greedy_text(logits: np.ndarray, meta: dict) -> str:
    """Best path: argmax per frame, collapse repeats, drop blanks; then symbols -> words.

    Shape: logits (T, V).
    """
    ids = logits.argmax(axis=-1)  # (T,)
    keep = np.ones(len(ids), dtype=bool)
    keep[1:] = ids[1:] != ids[:-1]  # collapse first: a blank between equal labels keeps both
    keep &= ids != meta["blank"]
    symbols, not_text = meta["symbols"], set(meta["not_text"])
    text = "".join(symbols[i] for i in ids[keep].tolist() if i not in not_text)
    return " ".join(text.replace(meta["word_delimiter"], " ").split())


def transcribe(session: ort.InferenceSession, audio: np.ndarray, meta: dict) -> str:
    logits, frame_lengths = session.run(
        ["logits", "frame_lengths"],
        {"waveform": audio[None, :], "lengths": np.array([len(audio)], dtype=np.int64)},
    )
    return greedy_text(logits[0, : int(frame_lengths[0])], meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="the .onnx file written by scripts/export.py")
    parser.add_argument("audio", nargs="+", help="audio files (any format soundfile reads)")
    parser.add_argument("--sidecar", type=Path, default=None, help="default: the model's path + .json")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    args = parser.parse_args(argv)
    try:
        meta = load_meta(args.model, args.sidecar)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(args.model), options, providers=["CPUExecutionProvider"])
    status = 0
    for path in args.audio:
        try:
            text = transcribe(session, read_audio(path, meta), meta)
        except (OSError, ValueError, sf.LibsndfileError) as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
            continue
        print(text if len(args.audio) == 1 else f"{path}\t{text}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
