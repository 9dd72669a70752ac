"""fairseq wav2vec 2.0 checkpoint files in and out: a `Wav2Vec2Model` (pretraining) or
`Wav2VecCtc` (CTC fine-tuned) `.pt`, 2020 or Hydra layout, read as a `LoadedModel` and
written from one. fairseq is never imported.

A fairseq `.pt` is a pickled dict: "model" (the state dict), "args" (an argparse.Namespace,
files from 2020) or "cfg" (Hydra era: a plain dict, sometimes an omegaconf DictConfig) with
"model", "task" and "criterion" sections, plus optimizer and training state. Files are read
with torch's weights-only unpickler and `FAIRSEQ_SAFE_TYPES`: no code from a file runs. The
names and config fields are translated by `names.py` and `config.py`; a fine-tuned model is
rebuilt as fairseq rebuilds it (from its `w2v_args`, with no masks when `apply_mask` is
False), and `blank_weight` (mode "add") is folded into the blank's output bias.
"""

from __future__ import annotations

import argparse
import collections
import copy
import logging
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode
from torch import Tensor, nn

from wav2vec2.config import ModelConfig
from wav2vec2.data.labels import SPECIALS, Dictionary
from wav2vec2.files import atomic_write, load_checkpoint, serialize
from wav2vec2.interop.fairseq.config import (
    ASR_OVERRIDES,
    config_from_fairseq,
    config_to_fairseq,
    ctc_config_from_fairseq,
    ctc_head_settings,
    head_problems,
    plain,
    sections,
    task_normalize,
    task_sample_rate,
)
from wav2vec2.interop.fairseq.names import (
    HEADS,
    ctc_state_dict_from_fairseq,
    ctc_state_dict_to_fairseq,
    state_dict_from_fairseq,
    state_dict_to_fairseq,
)
from wav2vec2.interop.loaded import CTC, ENCODER, PRETRAINING, LoadedModel, moments_by_name
from wav2vec2.model.ctc import Wav2Vec2Ctc
from wav2vec2.model.wav2vec2 import Wav2Vec2Model

log = logging.getLogger(__name__)


class FairseqDictionaryState:
    """What a pickled fairseq `Dictionary` (the `target_dictionary` in a fine-tuned checkpoint's
    task_state) unpickles to: its attributes (`symbols`, `count`, `indices`...) and no code."""

    symbols: list[str]


try:  # numpy 2 (numpy 1.26 has a numpy._core stub without multiarray)
    from numpy._core.multiarray import scalar as _NP_SCALAR
except ImportError:
    from numpy.core.multiarray import scalar as _NP_SCALAR

# The allow-list for `checkpoint.load(path, allow=FAIRSEQ_SAFE_TYPES)`. Each entry only builds
# data: none runs code chosen by the file.
# - argparse.Namespace: the 2020 files' "args".
# - omegaconf containers, nodes and metadata (and the plain types and typing.Any their
#   metadata names): a "cfg" pickled as a DictConfig. Found by pickling one and asking
#   torch.serialization.get_unsafe_globals_in_checkpoint; the typed value nodes are added
#   for configs that hold them.
# - fairseq's Dictionary, mapped to the inert FairseqDictionaryState: Hydra-era fine-tuned
#   checkpoints pickle it in task_state. No other fairseq class is allowed. In particular no
#   fairseq enum: fairseq writes its config with enum_to_str (and 2020 files hold plain
#   strings), and its ChoiceEnum classes are made at run time under a name pickle cannot
#   find, so a file cannot contain one.
# - NumPy scalars, which training state may hold (a float64 loss in extra_state), under the
#   names numpy 1 and numpy 2 give them.
FAIRSEQ_SAFE_TYPES: list[Any] = [
    argparse.Namespace,
    DictConfig, ListConfig, ContainerMetadata, Metadata,
    AnyNode, StringNode, IntegerNode, FloatNode, BooleanNode,
    (typing.Any, "typing.Any"), collections.defaultdict, dict, list, int, float, str, bool,
    (FairseqDictionaryState, "fairseq.data.dictionary.Dictionary"),
    (_NP_SCALAR, "numpy.core.multiarray.scalar"), (_NP_SCALAR, "numpy._core.multiarray.scalar"),
    *{type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)},
]



# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def is_fairseq_checkpoint(state: Any) -> bool:
    """A fairseq checkpoint: a "model" state dict with a 2020 Namespace "args" (an `arch`) or a
    Hydra "cfg" (with a "model" section), and not this project's layout ("config")."""
    if not isinstance(state, Mapping) or "config" in state or not isinstance(state.get("model"), Mapping):
        return False
    args, cfg = state.get("args"), state.get("cfg")
    if isinstance(args, argparse.Namespace):
        return hasattr(args, "arch")
    return isinstance(cfg, Mapping) and "model" in cfg


def parse(state: Mapping[str, Any]) -> tuple[str, dict, dict, dict | None]:
    """(model name, model, task, criterion) of a fairseq checkpoint, as plain dicts."""
    args = state.get("args")
    model, task, criterion = sections(plain(args if args is not None else state["cfg"]))
    name = model.get("_name") or model.get("arch")
    if name not in ("wav2vec2", "wav2vec_ctc"):
        raise ValueError(f"the fairseq model is {name!r}; only wav2vec 2.0 ('wav2vec2', 'wav2vec_ctc') is supported")
    return name, model, task, criterion


def _check_keys(sd: Mapping[str, Tensor], model: nn.Module) -> None:
    """ValueError naming what differs from `model`'s state dict (keys and shapes)."""
    ref = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    problems = [f"missing {sorted(ref.keys() - got.keys())}" if ref.keys() - got.keys() else "",
                f"unexpected {sorted(got.keys() - ref.keys())}" if got.keys() - ref.keys() else "",
                *(f"{k}: {got[k]} in the file, {ref[k]} in the model"
                  for k in sorted(ref.keys() & got.keys()) if got[k] != ref[k])]
    problems = [p for p in problems if p]
    if problems:
        raise ValueError("the weights do not fit the architecture in the config: " + "; ".join(problems[:6]))


def read_fairseq(path: str | Path, *, state: dict[str, Any] | None = None,
                 dictionary: str | Path | None = None) -> LoadedModel:
    """The fairseq checkpoint at `path` (`state`: its contents, if already read).

    A `wav2vec2` model is kind "pretraining" when it has its quantizer and projections (and
    fairseq fields we can build them from), else "encoder" (a model whose heads use, say,
    `target_glu` keeps its encoder, with a warning). A `wav2vec_ctc` model is kind "ctc"; its
    letters come from `dictionary` (its dict.ltr.txt) or else from the copy a Hydra-era file
    keeps in task_state. fairseq's dictionary has our 4 specials at our indices (its `<s>` at
    0 is the CTC blank), so the output rows map one to one; their number must be the
    dictionary's length, and a given dictionary must agree with a stored one.
    """
    if state is None:
        state = load_checkpoint(Path(path), allow=FAIRSEQ_SAFE_TYPES)
    if not is_fairseq_checkpoint(state):
        raise ValueError(f"{path} is not a fairseq checkpoint (a dict with 'model' and 'args' or 'cfg')")
    layout = "2020 layout" if state.get("args") is not None else "Hydra layout"
    history = state.get("optimizer_history") or [{}]
    num_updates = history[-1].get("num_updates") if isinstance(history[-1], Mapping) else None
    try:
        name, model, task, criterion = parse(state)
        common = dict(normalize=task_normalize(task), sample_rate=task_sample_rate(task),
                      format="fairseq", origin=f"fairseq checkpoint ({layout})", path=str(path),
                      num_updates=int(num_updates) if isinstance(num_updates, int) else None)
        if name == "wav2vec_ctc":
            return _read_ctc(state, model, dictionary, common)
        sd = state["model"]
        heads = any(k.startswith(HEADS) for k in sd)
        problem = head_problems(model) if heads else None
        if problem:
            log.warning("%s: its pretraining heads are left out (%s); the encoder is read", path, problem)
            heads, sd = False, {k: v for k, v in sd.items() if not k.startswith(HEADS)}
        cfg = config_from_fairseq(model, criterion=criterion, heads=heads)
        weights = state_dict_from_fairseq(sd, cfg)
        with torch.device("meta"):
            ref = Wav2Vec2Model(cfg)
        if not heads:
            ref.remove_pretraining_modules()
        _check_keys(weights, ref)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    moments = _moments(state, cfg, heads=heads)
    return LoadedModel(PRETRAINING if heads else ENCODER, cfg, weights, optimizer_state=moments, **common)


def _moments(state: Mapping[str, Any], cfg: ModelConfig, *, heads: bool) -> dict[str, dict] | None:
    """The Adam moments of a pretraining checkpoint (`last_optimizer_state`) by our parameter
    names. fairseq's optimizer holds the model's parameters in `parameters()` order, which is
    the order of the saved state dict's keys (wav2vec 2.0 has no buffers); with --fp16 its
    FP16Optimizer keeps one flat state for all of them concatenated in that order."""
    optimizer = state.get("last_optimizer_state")
    if not isinstance(optimizer, Mapping) or not isinstance(optimizer.get("state"), Mapping):
        return None
    sd = state["model"]
    by_fairseq = moments_by_name(list(sd), [tuple(v.shape) for v in sd.values()], dict(optimizer["state"]))
    if by_fairseq is None:
        log.warning("its optimizer state is not Adam's over the model's parameters: moments not read")
        return None
    if not heads:
        by_fairseq = {k: v for k, v in by_fairseq.items() if not k.startswith(HEADS)}
    return state_dict_from_fairseq(by_fairseq, cfg)  # renames the keys only


def _read_ctc(state: Mapping[str, Any], model: dict, dictionary: str | Path | None, common: dict) -> LoadedModel:
    cfg = ctc_config_from_fairseq(model)
    weights = ctc_state_dict_from_fairseq(state["model"], cfg)
    blank_weight, blank_mode = ctc_head_settings(model)
    if blank_weight != 0:
        if blank_mode != "add":
            raise ValueError(f"fairseq field blank_mode={blank_mode!r} is not supported "
                             "(only 'add', which is a bias on the blank)")
        weights["proj.bias"] = weights["proj.bias"].clone()
        weights["proj.bias"][0] += blank_weight
    if "proj.weight" not in weights:
        raise ValueError("the fine-tuned model has no output layer (w2v_encoder.proj)")
    num_outputs = weights["proj.weight"].shape[0]
    stored = (state.get("task_state") or {}).get("target_dictionary")
    stored_symbols = list(stored.symbols[len(SPECIALS):]) if isinstance(stored, FairseqDictionaryState) else None
    letters = None
    if dictionary is not None:
        letters = Dictionary.load(dictionary)
        if num_outputs != len(letters):
            raise ValueError(f"the model has {num_outputs} outputs but {dictionary} gives {len(letters)} "
                             "symbols (4 specials + its lines): not the dictionary it was fine-tuned with")
        if stored_symbols is not None and stored_symbols != letters.symbols[len(SPECIALS):]:
            raise ValueError(f"{dictionary} differs from the dictionary stored in the checkpoint")
    elif stored_symbols is not None and len(stored_symbols) + len(SPECIALS) == num_outputs:
        letters = Dictionary.from_symbols(stored_symbols)
    with torch.device("meta"):
        _check_keys(weights, Wav2Vec2Ctc(cfg, vocab_size=num_outputs))
    final_dropout = model.get("final_dropout", 0.0)
    return LoadedModel(CTC, cfg, weights, dictionary=letters,
                       final_dropout=float(final_dropout) if isinstance(final_dropout, (int, float)) else 0.0,
                       **common)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def _pretraining_task(data: str, normalize: bool) -> dict[str, Any]:
    return {"_name": "audio_pretraining", "data": data, "labels": None, "sample_rate": 16000,
            "normalize": normalize, "enable_padding": False}


def _wav2vec_criterion(cfg: ModelConfig) -> dict[str, Any]:
    return {"_name": "wav2vec", "infonce": True, "log_keys": ["prob_perplexity", "code_perplexity", "temp"],
            "loss_weights": [cfg.loss.diversity_weight, cfg.loss.feature_penalty_weight]}




def export_fairseq(
    model: LoadedModel | Wav2Vec2Model | Wav2Vec2Ctc, path: str | Path, *, normalize: bool | None = None,
    dictionary: Dictionary | str | Path | None = None,
) -> Path:
    """Write `model` as a fairseq 0.12 checkpoint (Hydra layout) laid out for fairseq's
    `checkpoint_utils.load_model_ensemble_and_task([path])`: what it reads (cfg sections and
    `_name`s, optimizer_history, extra_state, strict state-dict keys) was checked against its
    source, not by running it (fairseq is not a dependency).

    `model` is a `LoadedModel` or a model built here. A pretraining model must still have its
    quantizer and projections (fairseq's pretraining model has them) and is written as
    `wav2vec2` with task `audio_pretraining`. A CTC model is written as `wav2vec_ctc` (its
    pretraining config in `w2v_args`) with task `audio_finetuning`, labels "ltr", and its
    dictionary (`dictionary`, else the model's own) written to dict.ltr.txt beside the file:
    fairseq reads it from the task's `data` directory, set to that folder (after moving the
    files, pass `arg_overrides={"data": new_dir}`). The file holds only plain containers and
    tensors. `normalize` is needed only when the model does not record it. Returns `path`.
    """
    loaded = model if isinstance(model, LoadedModel) else LoadedModel.from_module(model)
    normalize = loaded.normalize if normalize is None else normalize
    if normalize is None:
        raise ValueError(f"{loaded.path or 'the model'} does not record whether it was trained on normalised audio, "
                         "which fairseq's task config needs: say which (--normalize / --no-normalize)")
    path = Path(path)
    data = str(path.resolve().parent)
    cfg = loaded.config
    w2v_model = config_to_fairseq(cfg)
    common = {"common": {"tpu": False}, "distributed_training": {"ddp_backend": "legacy_ddp"}}
    if loaded.kind == CTC:
        letters = dictionary if dictionary is not None else loaded.dictionary
        if letters is None:
            raise ValueError("a CTC model needs its dictionary (it is written to dict.ltr.txt)")
        letters = letters if isinstance(letters, Dictionary) else Dictionary.load(letters)
        num_outputs = loaded.weights["proj.weight"].shape[0]
        if len(letters) != num_outputs:
            raise ValueError(f"the model has {num_outputs} outputs but the dictionary {len(letters)} symbols")
        asr = {name: w2v_model[w2v_name] for name, w2v_name in ASR_OVERRIDES.items()}
        pretraining = {**copy.deepcopy(common), "model": w2v_model, "task": _pretraining_task(data, normalize),
                       "criterion": _wav2vec_criterion(cfg)}
        asr.update({
            "_name": "wav2vec_ctc", "w2v_path": "", "no_pretrained_weights": False,
            "apply_mask": cfg.masking.mask_prob > 0 or cfg.masking.channel_prob > 0,
            "final_dropout": loaded.final_dropout, "freeze_finetune_updates": 0,
            "normalize": normalize, "data": data, "blank_weight": 0.0, "blank_mode": "add",
            "w2v_args": pretraining,
        })
        fairseq_cfg = {**common, "model": asr,
                       "task": {**_pretraining_task(data, normalize), "_name": "audio_finetuning", "labels": "ltr"},
                       "criterion": {"_name": "ctc", "zero_infinity": True, "sentence_avg": True,
                                     "post_process": "letter"}}
        weights = ctc_state_dict_to_fairseq(loaded.weights, cfg)
        criterion_name = "CtcCriterion"
    else:
        loaded.require_pretraining_heads("fairseq's wav2vec2 model has them (export the CTC model, or a model "
                                         "with its heads)")
        fairseq_cfg = {**common, "model": w2v_model, "task": _pretraining_task(data, normalize),
                       "criterion": _wav2vec_criterion(cfg)}
        weights = state_dict_to_fairseq(loaded.weights, cfg)
        criterion_name = "Wav2vecCriterion"
    state = {
        "args": None,
        "cfg": fairseq_cfg,
        "model": {k: v.detach().cpu().clone() for k, v in weights.items()},
        # What fairseq's _upgrade_state_dict expects of any checkpoint.
        "optimizer_history": [{"criterion_name": criterion_name, "optimizer_name": "Adam",
                               "lr_scheduler_state": {}, "num_updates": 0}],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}, "val_loss": None},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    if loaded.kind == CTC:
        letters.save(path.parent / "dict.ltr.txt")
    atomic_write(path, serialize(state))
    return path
