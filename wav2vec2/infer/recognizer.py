"""A speech recogniser from any CTC model the loader reads (`wav2vec2.interop.load`): this
project's fine-tuning checkpoints, a transformers `Wav2Vec2ForCTC` directory, a fairseq
`Wav2VecCtc` checkpoint (with its dict.ltr.txt).

Everything downstream (transcription, scoring, alignment) takes a `Recognizer`: the model in
eval mode, its vocabulary, and how it wants its audio (sample rate, normalisation).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from wav2vec2.data.labels import Dictionary
from wav2vec2.interop.load import load_model
from wav2vec2.interop.loaded import LoadedModel
from wav2vec2.model.ctc import CtcOutput, Wav2Vec2Ctc

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
"""fp32; bf16: the model's matmuls and convolutions under bfloat16 autocast (the norms, the
softmax and the logits' argmax stay fp32). On a CPU with AMX or AVX512-BF16, and on GPUs, it
is faster; the transcript may differ in a few letters (docs/inference.md measures how many)."""


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


@dataclass
class Recognizer:
    model: Wav2Vec2Ctc
    """In eval mode, on its device."""
    dictionary: Dictionary
    """Output index i is `dictionary.symbols[i]`; index 0 is the CTC blank."""
    normalize: bool
    """Zero-mean unit-variance each file's waveform first (what the model was trained on)."""
    sample_rate: int = 16000
    source: str = ""
    """Where it came from, for messages."""
    manifest_dir: str | None = None
    """The manifests it was fine-tuned on (this project's checkpoints), else None."""
    precision: str = "fp32"
    """One of `PRECISIONS`."""

    def __post_init__(self) -> None:
        check_precision(self.precision)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(self, source: Tensor, padding_mask: Tensor | None = None) -> CtcOutput:
        """Shape: source (B, L) at `sample_rate`, already normalised if `normalize` -> logits (B, T, V),
        float32 whatever the precision."""
        device = self.device
        bf16 = (torch.autocast(device.type, dtype=torch.bfloat16) if self.precision == "bf16"
                else contextlib.nullcontext())
        with bf16:
            out = self.model(source.to(device), None if padding_mask is None else padding_mask.to(device))
        return out if out.logits.dtype == torch.float32 else replace(out, logits=out.logits.float())

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, *, device: str | torch.device = "cpu",
                    precision: str = "fp32") -> Recognizer:
        """A recogniser from a loaded CTC model (an error naming what is missing otherwise)."""
        dictionary = loaded.require_dictionary()
        num_outputs = loaded.weights["proj.weight"].shape[0]
        if num_outputs != len(dictionary):
            raise ValueError(f"{loaded.path}: the model has {num_outputs} outputs but the dictionary "
                             f"{len(dictionary)} symbols: not the dictionary it was trained with")
        normalize = loaded.normalize
        if normalize is None:  # the default of what read the audio where the model was trained
            normalize = loaded.format == "transformers"
            where = ("no preprocessor_config.json: assuming Wav2Vec2FeatureExtractor's default" if normalize
                     else "no task config: assuming fairseq's default")
            log.warning("%s has %s, normalize=%s", loaded.path, where, normalize)
        manifest_dir = (loaded.training or {}).get("data", {}).get("manifest_dir")
        return cls(loaded.build().to(device), dictionary, normalize, loaded.sample_rate, loaded.path, manifest_dir,
                   precision)

    def as_loaded(self) -> LoadedModel:
        """This recogniser as plain data, for the writers (`export_hf`, `export_fairseq`, ONNX)."""
        return LoadedModel.from_module(self.model, normalize=self.normalize, dictionary=self.dictionary,
                                       sample_rate=self.sample_rate, origin="recogniser", path=self.source)


def load_recognizer(path: str | Path, *, dictionary: str | Path | None = None,
                    device: str | torch.device = "cpu", precision: str = "fp32") -> Recognizer:
    """The CTC model at `path` (anything `load_model` reads; `dictionary` is a fairseq
    checkpoint's dict.ltr.txt), run in `precision` (`PRECISIONS`). Nothing is downloaded, and no
    file can run code when loaded."""
    check_precision(precision)  # before the load: the error should not wait for a large file
    return Recognizer.from_loaded(load_model(path, dictionary=dictionary), device=device, precision=precision)
