"""Per-layer features of a wav2vec 2.0 encoder, for downstream research (probing, clustering,
units): every Transformer layer and the CNN features of files, directories or a manifest,
written as float32 `.npy` arrays (the CLI is `scripts/extract_features.py`).

    ex = load_extractor("runs/pretrain/checkpoint_best.pt")
    feats = ex.extract("a.wav", ["0", "6", "cnn"])  # {layer: (T, X)} in memory
    extract_to_dir(ex, find_utterances(["audio/"]), "feats/", layers=parse_layers("all", ex.num_layers))
                                                    # feature_files.py: .npy on disk

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

Shapes: L samples, T frames, X values per frame (D model dim for layers, C for "cnn").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from wav2vec2.infer.audio import AudioFile
from wav2vec2.infer.chunking import Window, plan_windows
from wav2vec2.interop.load import load_model
from wav2vec2.model.wav2vec2 import Wav2Vec2Model

log = logging.getLogger(__name__)

CNN = "cnn"


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


def load_extractor(path: str | os.PathLike, *, normalize: bool | None = None, sample_rate: int | None = None,
                   device: str | torch.device = "cpu", window_seconds: float = 30.0,
                   context_seconds: float = 5.0) -> FeatureExtractor:
    """The encoder of anything the loader reads (`wav2vec2.interop.load.load_model`: this
    project's pretraining or CTC checkpoints, fairseq checkpoints, transformers directories).
    `normalize` None means the model's own; a model that does not record it must be told.
    `sample_rate` None means the model's (16 kHz unless it says otherwise)."""
    loaded = load_model(path)
    trained_normalize = loaded.normalize
    if normalize is None:
        if trained_normalize is None:
            raise ValueError(f"{path} does not record whether it was trained on normalised audio: "
                             "say which (normalize=True/False, --normalize/--no-normalize)")
        normalize = trained_normalize
    elif trained_normalize is not None and normalize != trained_normalize:
        log.warning("%s was trained with normalize=%s, extracting with normalize=%s", path, trained_normalize,
                    normalize)
    cfg = loaded.config
    cfg.crop_seq_to_multiple = 1  # a training-time speed-up that drops the last frames: keep every frame
    model = Wav2Vec2Model(cfg)
    model.remove_pretraining_modules()
    model.load_state_dict(loaded.encoder_weights(), strict=True)
    return FeatureExtractor(model.to(device).eval(), normalize=normalize, sample_rate=sample_rate or loaded.sample_rate,
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
