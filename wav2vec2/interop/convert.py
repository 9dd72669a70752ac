"""Move a wav2vec 2.0 model between this project, fairseq and transformers, in one call.

    convert("runs/ft/checkpoint_best.pt", "hf_dir", to="hf")              # ours -> transformers
    convert("runs/pretrain/checkpoint_best.pt", "w2v.pt", to="fairseq")   # ours -> fairseq
    convert("wav2vec_small_10m.pt", "hf_dir", to="hf", dictionary="dict.ltr.txt")  # fairseq -> transformers
    convert("hf_dir", "w2v_ctc.pt", to="fairseq")                         # transformers -> fairseq

A source is read by what it is (`read_model`): this project's checkpoint (pretraining or
CTC), a fairseq checkpoint (`wav2vec2` pretraining or `wav2vec_ctc`; a CTC one needs the
`dict.ltr.txt` it was fine-tuned with), or a local transformers directory (`Wav2Vec2ForCTC`
with its tokenizer, or `Wav2Vec2ForPreTraining`). Every tool of this project already reads
all three, so there is no "to ours": convert only to hand a model to someone using the other
two. A CTC model stays a CTC model; a pretraining model must keep its quantizer and
projections (fairseq's and transformers' pretraining models have them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from wav2vec2.files import load_checkpoint
from wav2vec2.config import ModelConfig
from wav2vec2.infer.recognizer import Recognizer, load_recognizer
from wav2vec2.model.wav2vec2 import Wav2Vec2Model

TARGETS = ("fairseq", "hf")


@dataclass
class PretrainingModel:
    """A pretraining model with what its users need beside the weights."""

    model: Wav2Vec2Model
    normalize: bool | None
    """Whether it was trained on standardised waveforms; None if the source does not say."""


def read_model(path: str | os.PathLike, *, dictionary: str | os.PathLike | None = None) -> Recognizer | PretrainingModel:
    """The model at `path` (module docstring): a `Recognizer` for CTC models, else a
    `PretrainingModel`. No file can run code while it loads; nothing is downloaded."""
    path = Path(path)
    if path.is_dir():
        architectures = _hf_architectures(path)
        if "Wav2Vec2ForCTC" in architectures or (path / "vocab.json").is_file():
            return load_recognizer(path)
        from wav2vec2.interop.hf import _read_feature_extractor, load_hf_pretraining

        settings = _read_feature_extractor(path)  # (preprocessor config, its file) or None
        normalize = None if settings is None else bool(settings[0].get("do_normalize", True))  # absent: their default
        return PretrainingModel(load_hf_pretraining(path), normalize)
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}: give a checkpoint file or a transformers directory")
    from wav2vec2.interop.fairseq import FAIRSEQ_SAFE_TYPES, _parse, is_fairseq_checkpoint, load_fairseq_pretraining

    state = load_checkpoint(path, allow=FAIRSEQ_SAFE_TYPES)
    if is_fairseq_checkpoint(state):
        if _parse(state)[0] == "wav2vec_ctc":
            if dictionary is None:
                raise ValueError(f"{path} is a fairseq CTC checkpoint: its letters are in a separate "
                                 "dict.ltr.txt; pass it (--dictionary)")
            return load_recognizer(path, dictionary=dictionary)
        cfg, weights, normalize = load_fairseq_pretraining(path, state, heads=True)
        return PretrainingModel(_model(cfg, weights, path), normalize)
    if state.get("task") == "ctc":
        return load_recognizer(path)
    if "model" not in state or "config" not in state:
        raise ValueError(f"{path} is neither a checkpoint of this project (no model/config) nor fairseq's")
    schema = OmegaConf.structured(ModelConfig)
    cfg = OmegaConf.to_object(OmegaConf.merge(schema, state["config"]["model"]))
    normalize = state["config"].get("data", {}).get("normalize")
    return PretrainingModel(_model(cfg, state["model"], path), None if normalize is None else bool(normalize))


def _hf_architectures(path: Path) -> list[str]:
    config = path / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a transformers save_pretrained directory")
    return json.loads(config.read_text(encoding="utf-8")).get("architectures") or []


def _model(cfg: ModelConfig, weights: dict, path: Path) -> Wav2Vec2Model:
    model = Wav2Vec2Model(cfg)
    if not any(k.startswith("quantizer.") for k in weights):
        raise ValueError(f"{path} has no quantizer: only the encoder of a pretraining model is there, and "
                         "fairseq's and transformers' pretraining models need the quantizer and projections")
    model.load_state_dict(weights, strict=True)
    return model.eval()


def convert(source: str | os.PathLike, out: str | os.PathLike, *, to: str,
            dictionary: str | os.PathLike | None = None, normalize: bool | None = None) -> Path:
    """Write the model at `source` to `out` in the `to` format ("fairseq": a checkpoint file,
    plus dict.ltr.txt beside it for CTC models; "hf": a save_pretrained directory).
    `normalize` is needed only when the source does not record it. Returns `out`."""
    if to not in TARGETS:
        raise ValueError(f"to must be one of {TARGETS}, got {to!r}")
    model = read_model(source, dictionary=dictionary)
    if isinstance(model, Recognizer):
        if to == "hf":
            from wav2vec2.interop.hf import export_hf_ctc

            return export_hf_ctc(model, out)
        from wav2vec2.interop.fairseq import export_fairseq

        return export_fairseq(model.model, out, normalize=model.normalize, dictionary=model.dictionary)
    normalize = model.normalize if model.normalize is not None else normalize
    if to == "hf":
        from wav2vec2.interop.hf import export_hf

        return export_hf(model.model, out, normalize=normalize)
    if normalize is None:
        raise ValueError(f"{source} does not record whether it was trained on normalised audio, which fairseq's "
                         "task config needs: say which (--normalize / --no-normalize)")
    from wav2vec2.interop.fairseq import export_fairseq

    return export_fairseq(model.model, out, normalize=normalize)
