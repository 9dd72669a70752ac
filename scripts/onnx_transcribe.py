#!/usr/bin/env python
"""Transcribe audio with an exported wav2vec 2.0 CTC model, without PyTorch.

    python scripts/onnx_transcribe.py asr.onnx speech.wav
    python scripts/onnx_transcribe.py asr.int8.onnx a.flac b.wav --threads 2

Needs numpy, soundfile and onnxruntime (and soxr, only for audio at another sample rate):
this file imports neither torch nor the wav2vec2 package, so it can be copied on its own
next to the model. Everything about the model comes from the JSON sidecar that
`scripts/export.py` writes beside it (`asr.onnx` -> `asr.onnx.json`): vocabulary, blank, word
delimiter, sample rate, normalisation, frame hop and receptive field.

Each file is read in pieces, downmixed to mono, resampled if needed (block by block, into a
temporary file), standardised with the whole file's mean and variance if the model was
trained so, and run in windows: --window seconds of frames kept per window, with --context
seconds of audio on each side, exactly as `scripts/transcribe.py` windows it, so memory stays
at one window whatever the file's length and the text is the same. The stitched frames are
decoded greedily (argmax per frame, repeats collapsed, blanks dropped, the delimiter becomes a
space). One file prints its transcript; several print `path<TAB>transcript` per line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

try:
    import onnxruntime as ort
except ImportError:  # a device or a fresh venv: say what to install, no traceback
    sys.exit("error: onnx_transcribe.py needs onnxruntime: pip install onnxruntime "
             "(in this project: pip install -e '.[export]')")

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


_BLOCK = 1 << 20  # samples per block while scanning or resampling a file


class Audio:
    """A file as the model wants it, read in pieces: mono float32 at the model's rate
    (resampled once, block by block, into a temporary file), standardised with the whole
    file's moments if the model wants it. Shape of `read`: (L,)."""

    def __init__(self, path: str, meta: dict) -> None:
        self.path, self.rate = path, meta["sample_rate"]
        if not Path(path).exists():
            raise FileNotFoundError(f"no such file: {path}")
        if Path(path).stat().st_size == 0:
            raise ValueError(f"{path} is empty (0 bytes)")
        try:
            info = sf.info(path)
        except Exception as err:  # libsndfile raises several types
            raise ValueError(f"cannot read audio {path}: {str(err).split(': ', 1)[-1]}") from None
        self._tmp = None
        self._data: np.ndarray | None = None
        if info.samplerate == self.rate:
            self.num_samples = info.frames
        else:
            try:
                import soxr  # only needed here
            except ImportError:
                raise ValueError(f"{path} is at {info.samplerate} Hz and the model wants {self.rate} Hz: "
                                 "resampling needs soxr (pip install soxr)") from None
            self._data = self._resample_to_disk(soxr, info.samplerate)
            self.num_samples = len(self._data)
        if self.num_samples < meta["min_samples"]:
            raise ValueError(f"{path}: {self.num_samples} samples at {self.rate} Hz; the model needs at "
                             f"least {meta['min_samples']}")
        self.mean, self.std = 0.0, 1.0
        if meta["normalize"]:  # F.layer_norm over the whole file: (x - mean) / sqrt(var + eps)
            total = total_sq = 0.0
            for start in range(0, self.num_samples, _BLOCK):
                x = self._read(start, min(start + _BLOCK, self.num_samples)).astype(np.float64)
                total, total_sq = total + x.sum(), total_sq + (x * x).sum()
            mean = total / self.num_samples
            self.mean = mean
            self.std = float(np.sqrt(max(total_sq / self.num_samples - mean * mean, 0.0) + meta["normalize_eps"]))

    def _blocks(self, start: int = 0, end: int | None = None):
        with sf.SoundFile(self.path) as f:
            f.seek(start)
            left = (end if end is not None else f.frames) - start
            while left > 0:
                block = f.read(min(_BLOCK, left), dtype="float32", always_2d=True)  # (n, channels)
                if len(block) == 0:
                    break
                left -= len(block)
                yield block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]

    def _resample_to_disk(self, soxr, rate: int) -> np.ndarray:
        stream = soxr.ResampleStream(rate, self.rate, 1, dtype="float32", quality="HQ")
        self._tmp = tempfile.NamedTemporaryFile(prefix="onnx-transcribe-", suffix=".f32")
        with open(self._tmp.name, "wb") as out:
            for block in self._blocks():
                out.write(stream.resample_chunk(block).astype(np.float32).tobytes())
            out.write(stream.resample_chunk(np.zeros(0, np.float32), last=True).astype(np.float32).tobytes())
        size = Path(self._tmp.name).stat().st_size // 4
        return np.memmap(self._tmp.name, dtype=np.float32, mode="r", shape=(size,)) if size else np.zeros(0, np.float32)

    def _read(self, start: int, end: int) -> np.ndarray:
        if self._data is not None:
            return np.array(self._data[start:end], dtype=np.float32)
        return np.concatenate(list(self._blocks(start, end)) or [np.zeros(0, np.float32)])

    def read(self, start: int, end: int) -> np.ndarray:
        x = self._read(start, min(end, self.num_samples))
        if self.mean != 0.0 or self.std != 1.0:
            x = ((x.astype(np.float64) - self.mean) / self.std).astype(np.float32)
        return np.ascontiguousarray(x, dtype=np.float32)

    def close(self) -> None:
        self._data = None
        if self._tmp is not None:
            self._tmp.close()


def windows(num_samples: int, meta: dict, window: float, context: float) -> list[tuple[int, int, int, int]]:
    """(start sample, end sample, first kept frame, one past the last) of each window: cores of
    `window` seconds of frames tiling the file's frames, each with `context` seconds of audio
    on either side (the windows of wav2vec2.infer.chunking.plan_windows)."""
    hop, field = meta["frame_hop"], meta["receptive_field"]
    total = (num_samples - field) // hop + 1 if num_samples >= field else 0
    core = max(1, round(window * meta["sample_rate"] / hop))
    ctx = round(context * meta["sample_rate"] / hop)
    out = []
    for core_start in range(0, total, core):
        core_end = min(core_start + core, total)
        first, last = max(0, core_start - ctx), min(total, core_end + ctx)
        out.append((first * hop, min(num_samples, (last - 1) * hop + field), core_start - first, core_end - first))
    return out


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


def transcribe(session: ort.InferenceSession, audio: Audio, meta: dict, *, window: float = 30.0,
               context: float = 5.0) -> str:
    """The file's frame logits, window by window, stitched and decoded once."""
    pieces = []
    for start, end, keep_from, keep_to in windows(audio.num_samples, meta, window, context):
        wav = audio.read(start, end)  # (L,)
        logits, _ = session.run(["logits", "frame_lengths"],
                                {"waveform": wav[None, :], "lengths": np.array([len(wav)], dtype=np.int64)})
        pieces.append(logits[0, keep_from:keep_to])  # (T_core, V)
    return greedy_text(np.concatenate(pieces), meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="the .onnx file written by scripts/export.py")
    parser.add_argument("audio", nargs="+", help="audio files (any format soundfile reads)")
    parser.add_argument("--sidecar", type=Path, default=None, help="default: the model's path + .json")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--window", type=float, default=30.0, help="seconds of frames kept per window (default: 30)")
    parser.add_argument("--context", type=float, default=5.0,
                        help="seconds of audio on each side of a window (default: 5)")
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
        audio = None
        try:
            audio = Audio(path, meta)
            text = transcribe(session, audio, meta, window=args.window, context=args.context)
        except (OSError, ValueError, sf.LibsndfileError) as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
            continue
        finally:
            if audio is not None:
                audio.close()
        print(text if len(args.audio) == 1 else f"{path}\t{text}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
