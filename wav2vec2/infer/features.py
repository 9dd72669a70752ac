"""Per-layer features of a wav2vec 2.0 encoder, for downstream research (probing, clustering,
units): every Transformer layer and the CNN features of files, directories or a manifest,
written as float32 `.npy` arrays (the CLI is `scripts/extract_features.py`).

    ex = load_extractor("runs/pretrain/checkpoint_best.pt")
    feats = ex.extract("a.wav", ["0", "6", "cnn"])  # {layer: (T, X)} in memory
    extract_to_dir(ex, find_utterances(["audio/"]), "feats/", layers=parse_layers("all", ex.num_layers))

Layers are named as `EncoderOutput.hidden_states` numbers them: "0" the input of the first
Transformer layer, "i" the output of layer i, "N" (num_layers) the encoder's output; "cnn"
is `EncoderOutput.features`. `features.json` beside the arrays says so, with the frame rate
and alignment.

A file is encoded in windows (`chunking.plan_windows`: a core of `window_seconds` plus
`context_seconds` of audio each side), and each window's core frames go straight into
per-layer memory maps, so neither the audio nor all layers' frames of a long file are ever
in memory at once (`run_in_windows` would concatenate them: we use its plan, not its loop).
A file no longer than one window is exactly one pass over it. Longer ones differ from one
pass (see `chunking.py`): attention sees only the window (little: a LARGE-style CNN's
frames are local, and the tests measure < 0.5% per frame with 1 s windows), and the BASE
CNN's first GroupNorm normalises each channel over the window's time, not the file's (more:
16% per frame with 1 s windows on syllabic audio; keep windows long for BASE models).
Files are encoded one at a time: in a padded batch that GroupNorm would mix an utterance
with its padding.

Every array is written under a temporary name and renamed when complete, so a crash leaves
no half-written file under a final name.

Shapes: L samples, T frames, X values per frame (D model dim for layers, C for "cnn").
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np
import soundfile as sf
import torch

from wav2vec2.data.manifest import read_manifest
from wav2vec2.infer.audio import AudioFile
from wav2vec2.infer.chunking import Window, plan_windows
from wav2vec2.model.wav2vec2 import Wav2Vec2Model

log = logging.getLogger(__name__)

CNN = "cnn"
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


@dataclass
class FeatureExtractor:
    model: Wav2Vec2Model
    """Without its pretraining modules, in eval mode, on its device."""
    normalize: bool
    """Standardise each file's waveform first (what the model was trained on)."""
    sample_rate: int = 16000
    source: str = ""
    """Where the model came from, for features.json."""
    window_seconds: float = 30.0
    """Core of each window: the frames a window contributes."""
    context_seconds: float = 5.0
    """Audio a window sees on each side of its core (less at the file's edges)."""

    @property
    def hop(self) -> int:
        """Samples between frames: the product of the conv strides (320)."""
        return self.model.cfg.feature_encoder.hop

    @property
    def receptive_field(self) -> int:
        """Samples one frame sees (400 for the paper's encoder)."""
        return self.model.feature_encoder.receptive_field

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    @property
    def num_layers(self) -> int:
        return self.model.cfg.transformer.num_layers

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def dim(self, layer: str) -> int:
        return self.model.feature_encoder.out_dim if layer == CNN else self.model.cfg.transformer.embed_dim

    def num_frames(self, num_samples: int) -> int:
        return self.model.cfg.feature_encoder.num_frames(num_samples)

    def open(self, path: str | os.PathLike) -> AudioFile:
        """`path` as the model wants it: resampled, normalised over the whole file if asked."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"no such file: {path}")
        return AudioFile(path, sample_rate=self.sample_rate, normalize=self.normalize)

    def windows(self, num_samples: int) -> list[Window]:
        windows = plan_windows(
            num_samples, self.model.cfg.feature_encoder, window_frames=max(1, round(self.window_seconds * self.frame_rate)),
            context_frames=round(self.context_seconds * self.frame_rate))
        # The last window reads to the end of the file: the tail past the last frame makes
        # no frame (< hop samples, the frame count is unchanged) but enters the statistics
        # of the BASE CNN's GroupNorm, so a file in one window is exactly one pass over it.
        if windows:
            windows[-1] = replace(windows[-1], end=num_samples)
        return windows

    @torch.no_grad()
    def iter_frames(self, audio: AudioFile, layers: Sequence[str]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(file frame of the first row, {layer: (T_core, X) float32}) for each window of
        `audio` (opened with `open`), in order; the cores tile the file's frames exactly."""
        if self.num_frames(audio.num_samples) == 0:
            raise ValueError(f"{audio.path} is too short: {audio.num_samples} samples at {self.sample_rate} Hz, "
                             f"fewer than one frame's receptive field ({self.receptive_field})")
        want_hidden = any(layer != CNN for layer in layers)
        for w in self.windows(audio.num_samples):
            wav = audio.read(w.start, w.end)  # (L,)
            if len(wav) != w.end - w.start:
                raise ValueError(f"{audio.path}: read {len(wav)} samples at sample {w.start}, expected "
                                 f"{w.end - w.start} (a truncated file?)")
            out = self.model.encode(wav.unsqueeze(0).to(self.device), return_hidden_states=want_hidden,
                                    return_features=CNN in layers)
            assert out.x.shape[1] == self.num_frames(len(wav)), "hop/receptive field do not match the model"
            frames = {}
            for layer in layers:
                x = out.features if layer == CNN else out.hidden_states[int(layer)]  # (1, T, X)
                frames[layer] = x[0, w.keep_from:w.keep_to].float().cpu().numpy()  # (T_core, X)
            yield w.first_frame, frames

    def extract(self, path: str | os.PathLike, layers: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One file's frames in memory: {layer: (T, X)}, all layers by default. For short
        files and notebooks; `extract_to_dir` writes long ones without holding them."""
        layers = list(layers) if layers is not None else parse_layers("all", self.num_layers)
        pieces: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
        with self.open(path) as audio:
            for _, frames in self.iter_frames(audio, layers):
                for layer, x in frames.items():
                    pieces[layer].append(x)
        return {layer: np.concatenate(p) for layer, p in pieces.items()}


def load_extractor(path: str | os.PathLike, *, normalize: bool | None = None, sample_rate: int = 16000,
                   device: str | torch.device = "cpu", window_seconds: float = 30.0,
                   context_seconds: float = 5.0) -> FeatureExtractor:
    """The encoder of anything `load_pretrained_encoder` reads (this project's pretraining or
    CTC checkpoints, a transformers directory). `normalize` None means the model's own;
    a model that does not record it must be told."""
    from wav2vec2.tasks.ctc import load_pretrained_encoder

    cfg, state, trained_normalize = load_pretrained_encoder(str(path))
    if normalize is None:
        if trained_normalize is None:
            raise ValueError(f"{path} does not record whether it was trained on normalised audio: "
                             "say which (normalize=True/False, --normalize/--no-normalize)")
        normalize = trained_normalize
    elif trained_normalize is not None and normalize != trained_normalize:
        log.warning("%s was trained with normalize=%s, extracting with normalize=%s", path, trained_normalize,
                    normalize)
    cfg.crop_seq_to_multiple = 1  # a training-time speed-up that drops the last frames: keep every frame
    model = Wav2Vec2Model(cfg)
    model.remove_pretraining_modules()
    model.load_state_dict(state, strict=True)
    return FeatureExtractor(model.to(device).eval(), normalize=normalize, sample_rate=sample_rate,
                            source=str(path), window_seconds=window_seconds, context_seconds=context_seconds)


def parse_layers(spec: str, num_layers: int) -> list[str]:
    """"0,6,12", "all" (0..num_layers), "cnn", or a mix ("all,cnn"), in the order given."""
    layers: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if item == "all":
            names = [str(i) for i in range(num_layers + 1)]
        elif item == CNN:
            names = [CNN]
        elif item.isdecimal() and int(item) <= num_layers:
            names = [str(int(item))]
        else:
            raise ValueError(f"layers: {item!r} is not a layer: give numbers 0..{num_layers} (0 = the input of the "
                             f"first Transformer layer, {num_layers} = the output), 'all' or 'cnn'")
        layers += [n for n in names if n not in layers]
    return layers


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
    features.json, and left out; the others go on.
    """
    out = Path(out_dir)
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
        if sink is not None:
            sink.finish()
    finally:
        if sink is not None:
            sink.discard()
    _write_text(out / FEATURES_JSON, json.dumps(describe(extractor, layers, stacked=stacked, result=result),
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
    """One utterance, one `.npy` per layer, filled window by window through memory maps."""
    finals = {layer: out / layer / utt.npy_name for layer in layers}
    tmps = {layer: path.with_name(path.name + ".tmp") for layer, path in finals.items()}
    arrays: dict[str, np.memmap] = {}
    try:
        with extractor.open(utt.path) as audio:
            total = extractor.num_frames(audio.num_samples)
            for layer in layers:
                tmps[layer].parent.mkdir(parents=True, exist_ok=True)
                arrays[layer] = np.lib.format.open_memmap(tmps[layer], mode="w+", dtype=np.float32,
                                                          shape=(total, extractor.dim(layer)))
            for first, frames in extractor.iter_frames(audio, layers):
                for layer, x in frames.items():
                    arrays[layer][first:first + len(x)] = x
        for layer in layers:
            arrays.pop(layer).flush()  # and unmap
            os.replace(tmps[layer], finals[layer])
    finally:
        arrays.clear()
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)
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
            final = self.out / f"{layer}.npy"
            tmp = final.with_name(final.name + ".tmp")
            try:
                if self.total == 0:  # nothing to map
                    with open(tmp, "wb") as g:
                        np.save(g, np.zeros(shape, np.float32))
                else:
                    src = np.memmap(self.staging[layer], dtype=np.float32, mode="r", shape=shape)
                    dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
                    for start in range(0, self.total, self._COPY_ROWS):
                        dst[start:start + self._COPY_ROWS] = src[start:start + self._COPY_ROWS]
                    dst.flush()
                    del src, dst
                os.replace(tmp, final)
            finally:
                tmp.unlink(missing_ok=True)
        rows = "".join(f"{name}\t{start}\t{n}\n" for name, start, n in self.index)
        _write_text(self.out / INDEX_TSV, "utterance\tstart_frame\tnum_frames\n" + rows)

    def discard(self) -> None:
        for layer, f in self.files.items():
            f.close()
            self.staging[layer].unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_stacked(out_dir: str | os.PathLike, layer: str) -> dict[str, np.ndarray]:
    """{utterance: (T, X)} views into a stacked `<layer>.npy` (memory-mapped), by its index."""
    out = Path(out_dir)
    array = np.load(out / f"{layer}.npy", mmap_mode="r")
    rows = (out / INDEX_TSV).read_text(encoding="utf-8").splitlines()[1:]
    return {name: array[int(start):int(start) + int(n)] for name, start, n in (r.split("\t") for r in rows)}
