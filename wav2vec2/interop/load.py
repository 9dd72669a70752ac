"""The one loader: "what is this path?" answered once, for every tool of the project.

    model = load_model("runs/ft/checkpoint_best.pt")        # or a fairseq .pt, or a transformers dir
    model.kind, model.config, model.weights                  # plain data (`LoadedModel`)
    convert("wav2vec_small_10m.pt", "w2v_10m/", to="hf", dictionary="dict.ltr.txt")

A path is one of:

- a checkpoint of this project (pretraining or CTC fine-tuning; `ours.py`);
- a fairseq wav2vec 2.0 checkpoint, 2020 or Hydra layout, pretraining or `Wav2VecCtc` (whose
  letters are in a separate dict.ltr.txt: `dictionary`, unless the file keeps a copy;
  `fairseq/checkpoint.py`);
- a local transformers directory, `Wav2Vec2ForPreTraining`, `Wav2Vec2Model` or
  `Wav2Vec2ForCTC` (`hf/directory.py`).

Files are read with torch's weights-only unpickler (`wav2vec2.files.load_checkpoint`): no
code from a file runs; nothing is downloaded. What a consumer needs beyond that (a CTC
head, a dictionary, the pretraining heads) it asks of the `LoadedModel`, whose errors say
what is missing. The recogniser, the CTC task's `init`, feature extraction, export and
conversion all start here; the format modules only translate.
"""

from __future__ import annotations

import os
from pathlib import Path

from wav2vec2.files import load_checkpoint
from wav2vec2.interop.fairseq import FAIRSEQ_SAFE_TYPES, export_fairseq, is_fairseq_checkpoint, read_fairseq
from wav2vec2.interop.hf import export_hf, is_hf_directory, read_hf
from wav2vec2.interop.loaded import LoadedModel
from wav2vec2.interop.ours import is_our_checkpoint, read_ours

TARGETS = ("fairseq", "hf")


def load_model(path: str | os.PathLike, *, dictionary: str | os.PathLike | None = None) -> LoadedModel:
    """The model at `path` (module docstring). `dictionary` is a fairseq CTC checkpoint's
    dict.ltr.txt; the other formats carry their vocabulary and ignore it."""
    path = Path(path)
    if path.is_dir():
        if is_hf_directory(path):
            return read_hf(path)
        raise FileNotFoundError(f"{path} is a directory without config.json: give a checkpoint file or a "
                                "transformers save_pretrained directory")
    if not path.exists():
        raise FileNotFoundError(f"no model at {path}: give a checkpoint file or a transformers directory")
    state = load_checkpoint(path, allow=FAIRSEQ_SAFE_TYPES)
    if is_fairseq_checkpoint(state):
        return read_fairseq(path, state=state, dictionary=dictionary)
    if is_our_checkpoint(state):
        return read_ours(path, state)
    raise ValueError(f"{path} is a PyTorch file but not a wav2vec 2.0 checkpoint: neither this project's "
                     "(model + config) nor fairseq's (model + args or cfg)")


def save_model(model: LoadedModel, out: str | os.PathLike, *, to: str, normalize: bool | None = None) -> Path:
    """Write `model` to `out` in the `to` format ("fairseq": a checkpoint file, plus
    dict.ltr.txt beside it for CTC models; "hf": a save_pretrained directory). `normalize`
    is needed only when the model does not record it. Returns `out`."""
    if to not in TARGETS:
        raise ValueError(f"to must be one of {TARGETS}, got {to!r}")
    if to == "hf":
        return export_hf(model, out, normalize=normalize)
    return export_fairseq(model, out, normalize=normalize)


def convert(source: str | os.PathLike, out: str | os.PathLike, *, to: str,
            dictionary: str | os.PathLike | None = None, normalize: bool | None = None) -> Path:
    """The model at `source` written to `out` in the `to` format. Every tool of this project
    reads all three formats as they are, so there is no "to ours": convert only to hand a
    model to someone using fairseq or transformers. A CTC model stays a CTC model; a
    pretraining model keeps its quantizer and projections."""
    if to not in TARGETS:
        raise ValueError(f"to must be one of {TARGETS}, got {to!r}")
    model = load_model(source, dictionary=dictionary)
    if model.kind == "ctc":
        model.require_dictionary()
    return save_model(model, out, to=to, normalize=normalize)
