"""Per-layer features of many files on disk, for downstream research: the files to encode
(`find_utterances`: files, directories, manifests), and `extract_to_dir`, which writes each
layer of each file as a float32 `.npy` (or one stacked array per layer with an index) and
`features.json`, which says what the arrays are and how their frames line up with the audio.

Every array is written under a temporary name and renamed when complete
(`wav2vec2.files.atomic_output`), so a crash leaves no half-written file under a final
name; a run in which every file fails leaves nothing behind. The encoding itself is
`features.py`'s (`FeatureExtractor`).

Shapes: T frames, X values per frame (D model dim for layers, C for "cnn").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import soundfile as sf

from wav2vec2.data.manifest import read_manifest
from wav2vec2.files import atomic_output, atomic_write
from wav2vec2.infer.features import CNN, FeatureExtractor

log = logging.getLogger(__name__)

FEATURES_JSON = "features.json"
INDEX_TSV = "index.tsv"

# Extensions of the containers soundfile (libsndfile) reads; headerless RAW is left out.
_EXTENSIONS = {"WAV": ("wav",), "FLAC": ("flac",), "OGG": ("ogg", "oga", "opus"), "MP3": ("mp3",),
               "AIFF": ("aif", "aiff", "aifc"), "AU": ("au", "snd"), "CAF": ("caf",), "W64": ("w64",),
               "RF64": ("rf64",), "NIST": ("sph", "nist"), "VOC": ("voc",)}
AUDIO_EXTENSIONS = frozenset(e for fmt, exts in _EXTENSIONS.items() if fmt in sf.available_formats() for e in exts)
# What a file that cannot be extracted raises: unreadable or truncated audio (ValueError,
# soundfile's RuntimeErrors), too short, out of memory, a full disk (OSError).
_PER_FILE_ERRORS = (ValueError, RuntimeError, OSError)


@dataclass(frozen=True)
class Utterance:
    path: Path
    name: str
    """Its id in the outputs: its path relative to the directory or manifest root it came
    from, or the file's name for a file given alone."""

    @property
    def npy_name(self) -> str:
        return str(PurePosixPath(self.name).with_suffix(".npy"))


def find_utterances(inputs: Sequence[str | os.PathLike] = (),
                    manifests: Sequence[str | os.PathLike] = ()) -> list[Utterance]:
    """Files and directories (every file with an audio extension under them, sorted) in
    the order given, then the entries of fairseq manifests. A path that is not a directory is taken as a
    file, so a missing one fails with the others' extraction, by name."""
    found = []
    for item in map(Path, inputs):
        if item.is_dir():
            for p in sorted(item.rglob("*")):
                rel = p.relative_to(item)
                if (p.suffix[1:].lower() in AUDIO_EXTENSIONS and p.is_file()
                        and not any(part.startswith(".") for part in rel.parts)):
                    found.append(Utterance(p, rel.as_posix()))
        else:
            found.append(Utterance(item, item.name))
    for manifest in manifests:
        root, entries = read_manifest(manifest)
        found += [Utterance(Path(root) / rel, rel) for rel, _ in entries]
    if not found:
        raise ValueError("no audio to extract: give files, directories with audio or --manifest")
    seen: dict[str, Utterance] = {}
    for u in found:
        if PurePosixPath(u.name).is_absolute() or ".." in PurePosixPath(u.name).parts:
            raise ValueError(f"{u.name}: an utterance name must stay inside the output directory")
        if u.npy_name in seen:
            raise ValueError(f"{seen[u.npy_name].path} and {u.path} would both be written as {u.npy_name}: "
                             "give their common directory or a manifest instead")
        seen[u.npy_name] = u
    return found


@dataclass
class ExtractionResult:
    num_frames: dict[str, int] = field(default_factory=dict)
    """Frames of each utterance written, by name, in order."""
    failures: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) of each file that could not be extracted."""


def extract_to_dir(extractor: FeatureExtractor, utterances: Sequence[Utterance], out_dir: str | os.PathLike, *,
                   layers: Sequence[str], stacked: bool = False) -> ExtractionResult:
    """Write `layers` of every utterance under `out_dir`, then `features.json`:

    - default: `<layer>/<utterance name with .npy>`, (T, X) float32 each;
    - `stacked`: `<layer>.npy`, (sum of T, X), the utterances one after another along time,
      and `index.tsv` (utterance, start_frame, num_frames) to cut them out.

    A file that cannot be read is logged by name, listed in the result and in
    features.json, and left out; the others go on. If every file fails, nothing is written
    (and an output directory this call created is removed).
    """
    out = Path(out_dir)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    result = ExtractionResult()
    sink = _StackedWriter(out, layers, extractor) if stacked else None
    try:
        for i, utt in enumerate(utterances, 1):
            try:
                if sink is not None:
                    frames = sink.add(utt)
                else:
                    frames = _write_npy(extractor, utt, out, layers)
            except _PER_FILE_ERRORS as err:
                result.failures.append((str(utt.path), str(err)))
                log.error("[%d/%d] FAILED %s", i, len(utterances), failure_message(str(utt.path), str(err)))
                continue
            result.num_frames[utt.name] = frames
            log.info("[%d/%d] %s: %d frames", i, len(utterances), utt.name, frames)
        if sink is not None and result.num_frames:
            sink.finish()
    finally:
        if sink is not None:
            sink.discard()
    if not result.num_frames:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        return result
    atomic_write(out / FEATURES_JSON, json.dumps(describe(extractor, layers, stacked=stacked, result=result),
                                                 indent=1) + "\n")
    return result


def failure_message(path: str, reason: str) -> str:
    """The reason, led by the path unless it already names it."""
    return reason if path in reason else f"{path}: {reason}"


def describe(extractor: FeatureExtractor, layers: Sequence[str], *, stacked: bool,
             result: ExtractionResult) -> dict:
    """The body of features.json: what the arrays are and how to line them up with audio."""
    n = extractor.num_layers
    pre_ln = extractor.model.cfg.transformer.layer_norm_first
    return {
        "model": extractor.source,
        "normalize": extractor.normalize,
        "sample_rate": extractor.sample_rate,
        "frame_rate": extractor.frame_rate,
        "hop_samples": extractor.hop,
        "receptive_field_samples": extractor.receptive_field,
        "alignment": "frame t sees samples [t * hop_samples, t * hop_samples + receptive_field_samples); a file of "
                     "L samples has floor((L - receptive_field_samples) / hop_samples) + 1 frames",
        "num_layers": n,
        "layer_numbering": {
            CNN: "feature-encoder (CNN) output after its LayerNorm, before the projection to the model dim "
                 "(EncoderOutput.features; fairseq `features`, transformers `extract_features`)",
            "0": "input of the first Transformer layer: projected CNN features plus the positional convolution"
                 + ("" if pre_ln else ", after the encoder LayerNorm"),
            "i": f"output of Transformer layer i (1-based), 1 <= i <= {n} (EncoderOutput.hidden_states[i])",
            str(n): "output of the last layer, the encoder's output EncoderOutput.x"
                    + (" (after the final LayerNorm, as transformers 4.x)" if pre_ln else ""),
        },
        "layer_norm_first": pre_ln,
        "layers": list(layers),
        "dims": {layer: extractor.dim(layer) for layer in layers},
        "dtype": "float32",
        "format": "stacked" if stacked else "npy",
        "files": ({"arrays": "<layer>.npy", "index": INDEX_TSV} if stacked
                  else "<layer>/<utterance path with .npy>"),
        "window_seconds": extractor.window_seconds,
        "context_seconds": extractor.context_seconds,
        "windowing": "files longer than window_seconds are encoded in windows seeing context_seconds of audio on "
                     "each side; their frames are close to, not equal to, one pass over the whole file",
        "num_utterances": len(result.num_frames),
        "num_frames": sum(result.num_frames.values()),
        "failed": [{"path": p, "error": e} for p, e in result.failures],
    }


def _write_npy(extractor: FeatureExtractor, utt: Utterance, out: Path, layers: Sequence[str]) -> int:
    """One utterance, one `.npy` per layer, filled window by window through memory maps; all
    its layers appear together, or none (a failure removes every temporary file)."""
    finals = {layer: out / layer / utt.npy_name for layer in layers}
    with extractor.open(utt.path) as audio, contextlib.ExitStack() as renames:
        total = extractor.num_frames(audio.num_samples)
        arrays: dict[str, np.memmap] = {}
        for layer in layers:
            finals[layer].parent.mkdir(parents=True, exist_ok=True)
            tmp = renames.enter_context(atomic_output(finals[layer]))
            arrays[layer] = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                                      shape=(total, extractor.dim(layer)))
        for first, frames in extractor.iter_frames(audio, layers):
            for layer, x in frames.items():
                arrays[layer][first:first + len(x)] = x
        for array in arrays.values():
            array.flush()
        arrays.clear()  # unmapped before the renames
    return total


class _StackedWriter:
    """Appends each utterance's frames to a raw staging file per layer (cut back if the
    utterance fails), then copies them into `<layer>.npy` memory maps once the total
    length is known: two writes of the data, never more than a window in memory."""

    _COPY_ROWS = 1 << 16

    def __init__(self, out: Path, layers: Sequence[str], extractor: FeatureExtractor) -> None:
        self.out, self.layers, self.extractor = out, list(layers), extractor
        self.staging = {layer: out / f".{layer}.f32.partial" for layer in layers}
        self.files = {layer: open(path, "wb") for layer, path in self.staging.items()}
        self.index: list[tuple[str, int, int]] = []  # (name, start frame, frames)
        self.total = 0

    def add(self, utt: Utterance) -> int:
        offsets = {layer: f.tell() for layer, f in self.files.items()}
        written = 0
        try:
            with self.extractor.open(utt.path) as audio:
                for first, frames in self.extractor.iter_frames(audio, self.layers):
                    assert first == written, "windows must come in order"
                    for layer, x in frames.items():
                        self.files[layer].write(np.ascontiguousarray(x, dtype=np.float32).tobytes())
                    written += len(next(iter(frames.values())))
        except BaseException:
            for layer, f in self.files.items():
                f.seek(offsets[layer])
                f.truncate()
            raise
        self.index.append((utt.name, self.total, written))
        self.total += written
        return written

    def finish(self) -> None:
        for layer, f in self.files.items():
            f.close()
            shape = (self.total, self.extractor.dim(layer))
            with atomic_output(self.out / f"{layer}.npy") as tmp:
                src = np.memmap(self.staging[layer], dtype=np.float32, mode="r", shape=shape)
                dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
                for start in range(0, self.total, self._COPY_ROWS):
                    dst[start:start + self._COPY_ROWS] = src[start:start + self._COPY_ROWS]
                dst.flush()
                del src, dst
        rows = "".join(f"{name}\t{start}\t{n}\n" for name, start, n in self.index)
        atomic_write(self.out / INDEX_TSV, "utterance\tstart_frame\tnum_frames\n" + rows)

    def discard(self) -> None:
        for layer, f in self.files.items():
            f.close()
            self.staging[layer].unlink(missing_ok=True)



def read_stacked(out_dir: str | os.PathLike, layer: str) -> dict[str, np.ndarray]:
    """{utterance: (T, X)} views into a stacked `<layer>.npy` (memory-mapped), by its index."""
    out = Path(out_dir)
    array = np.load(out / f"{layer}.npy", mmap_mode="r")
    rows = (out / INDEX_TSV).read_text(encoding="utf-8").splitlines()[1:]
    return {name: array[int(start):int(start) + int(n)] for name, start, n in (r.split("\t") for r in rows)}
