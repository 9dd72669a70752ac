"""A model as plain data, whatever file it came from: what the one loader returns
(`wav2vec2.interop.load.load_model`) and what every writer takes.

Three kinds, by which weights are there:

- "pretraining": `Wav2Vec2Model` with its quantizer, project_q and final_proj (can continue
  pretraining, and be converted to any format's pretraining model);
- "encoder": `Wav2Vec2Model` without them (transformers' `Wav2Vec2Model`, a fairseq model
  saved after `remove_pretraining_modules`): features and fine-tuning only;
- "ctc": `Wav2Vec2Ctc`, the encoder under `wav2vec2.` and the output layer `proj`; with the
  `dictionary` its rows mean, when the source carries it (a fairseq checkpoint keeps its
  letters in a separate dict.ltr.txt).

The weights are always in this project's names; nothing here knows a file format.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from wav2vec2.config import ModelConfig
from wav2vec2.data.labels import BLANK, Dictionary
from wav2vec2.model.ctc import Wav2Vec2Ctc
from wav2vec2.model.wav2vec2 import Wav2Vec2Model

PRETRAINING, ENCODER, CTC = "pretraining", "encoder", "ctc"
KINDS = (PRETRAINING, ENCODER, CTC)
PRETRAINING_MODULES = ("quantizer.", "project_q.", "final_proj.")
"""What `Wav2Vec2Model.remove_pretraining_modules` drops (fairseq's method of that name)."""
CTC_ENCODER = "wav2vec2."
"""The prefix of the encoder's weights in a `Wav2Vec2Ctc` state dict."""


@dataclass
class LoadedModel:
    kind: str
    """"pretraining", "encoder" or "ctc" (module docstring)."""
    config: ModelConfig
    """The architecture (and, where the source records them, dropouts, masking, schedule)."""
    weights: dict[str, Tensor]
    """State dict in this project's names: `Wav2Vec2Model`'s (kind pretraining: with the
    pretraining modules; encoder: without) or `Wav2Vec2Ctc`'s (kind ctc)."""
    normalize: bool | None = None
    """Whether the model was trained on zero-mean unit-variance waveforms; None if the
    source does not say."""
    sample_rate: int = 16000
    dictionary: Dictionary | None = None
    """kind ctc: the output rows' symbols (index 0 the blank), or None if the source does not
    carry them."""
    final_dropout: float = 0.0
    """kind ctc: dropout before the output layer (training only)."""
    format: str = ""
    """The source's format: "wav2vec2" (this project), "fairseq" or "transformers" ("" for a
    model built in memory)."""
    origin: str = ""
    """What the source was, for messages and logs: "wav2vec2 checkpoint", "fairseq checkpoint
    (Hydra layout)", "transformers directory (Wav2Vec2ForCTC)"..."""
    path: str = ""
    training: dict[str, Any] | None = field(default=None, repr=False)
    """This project's checkpoints: the run's whole config as a plain dict (data, task...)."""
    num_updates: int | None = None
    """Updates the source was trained for, if it records them."""
    optimizer_state: dict[str, dict[str, Tensor]] | None = field(default=None, repr=False)
    """Adam's moments, when the source carries them (this project's checkpoints, fairseq's):
    {our parameter name: {"step", "exp_avg", "exp_avg_sq"}}, for continuing pretraining."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    def describe(self) -> str:
        """"{path}: a {origin} of a {kind} model", for messages."""
        kind = {PRETRAINING: "pretraining model (with quantizer)", ENCODER: "encoder (no pretraining heads)",
                CTC: "CTC model"}[self.kind]
        return f"{self.path} ({self.origin}, {kind})"

    def encoder_weights(self) -> dict[str, Tensor]:
        """The `Wav2Vec2Model` weights without the pretraining modules, from any kind: what
        fine-tuning, feature extraction and probing start from."""
        if self.kind == CTC:
            return {k[len(CTC_ENCODER):]: v for k, v in self.weights.items() if k.startswith(CTC_ENCODER)}
        return {k: v for k, v in self.weights.items() if not k.startswith(PRETRAINING_MODULES)}

    def require_pretraining_heads(self, why: str) -> None:
        """An error unless the quantizer and projections are there; `why` says who needs them."""
        if self.kind != PRETRAINING:
            what = "a CTC model" if self.kind == CTC else "only the encoder of a pretraining model"
            raise ValueError(f"{self.describe()} has no quantizer, project_q and final_proj ({what} is there): {why}")

    def require_dictionary(self) -> Dictionary:
        """The CTC vocabulary, or an error saying how to give it."""
        if self.kind != CTC:
            raise ValueError(f"{self.describe()} has no CTC output layer: fine-tune it first "
                             "(configs/ctc_*.yaml with task.init=...)")
        if self.dictionary is None:
            if self.format == "fairseq":
                raise ValueError(f"{self.path} is a fairseq CTC checkpoint: its letters are in a separate "
                                 "dict.ltr.txt; pass it (--dictionary)")
            raise ValueError(f"{self.path} ({self.origin}) carries no vocabulary for its output layer (a "
                             "transformers directory keeps it in vocab.json: Wav2Vec2Processor.save_pretrained "
                             "writes it)")
        return self.dictionary

    def build(self) -> nn.Module:
        """The model with these weights, in eval mode on the CPU: `Wav2Vec2Ctc` for kind ctc,
        else `Wav2Vec2Model` (without its pretraining modules for kind encoder)."""
        if self.kind == CTC:
            model: nn.Module = Wav2Vec2Ctc(self.config, vocab_size=self.weights["proj.weight"].shape[0],
                                           final_dropout=self.final_dropout, blank=BLANK)
        else:
            model = Wav2Vec2Model(self.config)
            if self.kind == ENCODER:
                model.remove_pretraining_modules()
        model.load_state_dict(self.weights, strict=True)
        return model.eval()

    @classmethod
    def from_module(cls, model: nn.Module, *, normalize: bool | None = None, dictionary: Dictionary | None = None,
                    sample_rate: int = 16000, origin: str = "in-memory model", path: str = "") -> LoadedModel:
        """A model built here (`Wav2Vec2Model` or `Wav2Vec2Ctc`) as plain data, for the writers."""
        if isinstance(model, Wav2Vec2Ctc):
            if dictionary is not None and len(dictionary) != model.proj.out_features:
                raise ValueError(f"the model has {model.proj.out_features} outputs but the dictionary "
                                 f"{len(dictionary)} symbols")
            kind, final_dropout = CTC, model.final_dropout.p
        elif isinstance(model, Wav2Vec2Model):
            kind, final_dropout = (ENCODER if model.quantizer is None else PRETRAINING), 0.0
        else:
            raise TypeError(f"expected a Wav2Vec2Model or Wav2Vec2Ctc, got {type(model).__name__}")
        weights = {k: v.detach() for k, v in model.state_dict().items()}
        return cls(kind, copy.deepcopy(model.cfg), weights, normalize=normalize, sample_rate=sample_rate,
                   dictionary=dictionary, final_dropout=final_dropout, origin=origin, path=path)


def kind_of_weights(weights: dict[str, Any]) -> str | None:
    """The kind a state dict in our names is ("ctc": encoder under `wav2vec2.` and `proj`;
    "pretraining": the encoder with all three pretraining modules; "encoder": none of them),
    None if it is none of these (some of the pretraining modules but not all: a broken file)."""
    keys = list(weights)
    if "proj.weight" in weights and any(k.startswith(CTC_ENCODER) for k in keys):
        return CTC
    if not any(k.startswith("feature_encoder.") for k in keys):
        return None
    heads = [any(k.startswith(module) for k in keys) for module in PRETRAINING_MODULES]
    return PRETRAINING if all(heads) else ENCODER if not any(heads) else None


def moments_by_name(names: list[str], shapes: list[tuple[int, ...]], state: dict[Any, dict[str, Any]],
                    ) -> dict[str, dict[str, Tensor]] | None:
    """Adam's per-parameter state (`{index: {"step", "exp_avg", "exp_avg_sq"}}`, indices in
    the optimizer's parameter order = `names`) as {name: moments}. Also reads the one flat
    state fairseq's FP16Optimizer keeps for all parameters concatenated in that order. None
    when the state fits neither (another optimizer, other parameters)."""
    entries = [v for v in state.values() if isinstance(v, dict) and "exp_avg" in v and "exp_avg_sq" in v]
    if not entries or len(entries) != len(state):
        return None
    numels = [int(torch.Size(shape).numel()) for shape in shapes]
    if len(state) == 1 and len(names) > 1 and entries[0]["exp_avg"].numel() == sum(numels):
        flat = entries[0]
        pieces = {key: torch.split(flat[key].reshape(-1), numels) for key in ("exp_avg", "exp_avg_sq")}
        return {name: {"step": flat.get("step", 0), "exp_avg": pieces["exp_avg"][i].view(shape),
                       "exp_avg_sq": pieces["exp_avg_sq"][i].view(shape)}
                for i, (name, shape) in enumerate(zip(names, shapes))}
    if sorted(state) != list(range(len(names))):
        return None
    out = {}
    for i, (name, shape) in enumerate(zip(names, shapes)):
        moments = state[i]
        if tuple(moments["exp_avg"].shape) != tuple(shape):
            return None
        out[name] = {"step": moments.get("step", 0), "exp_avg": moments["exp_avg"], "exp_avg_sq": moments["exp_avg_sq"]}
    return out
