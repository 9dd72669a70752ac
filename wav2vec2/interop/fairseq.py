"""fairseq wav2vec 2.0 checkpoints in and out: `Wav2Vec2Model` (pretraining) and `Wav2VecCtc`
(CTC fine-tuned), fairseq 0.12 layout. fairseq is never imported.

A fairseq `.pt` is a pickled dict: "model" (the state dict), "args" (an argparse.Namespace,
files from 2020) or "cfg" (Hydra era: a plain dict, sometimes an omegaconf DictConfig) with
"model", "task" and "criterion" sections, plus optimizer and training state we ignore. A
fine-tuned model's config carries its pretraining config in "w2v_args", and the encoder's
architecture comes from there. Files are read with torch's weights-only unpickler and
`FAIRSEQ_SAFE_TYPES`: no code from a file runs.

What maps (PARAM_MAP below; fairseq's field names -> ours in `config_from_fairseq`):
every parameter of the encoder, the quantizer, project_q, final_proj and the CTC output layer;
every architecture field; dropouts, LayerDrop, masking, feature_grad_mult, the Gumbel
temperature schedule, num_negatives, logit_temp; the criterion's loss_weights; the task's
normalize. A fine-tuned model is rebuilt as fairseq rebuilds it: from its `w2v_args` (which
hold the fine-tuning dropouts, masks and layerdrop), with no masks when `apply_mask` is False;
`blank_weight` (mode "add") is folded into the blank's output bias.

No counterpart here, refused with a ValueError naming the field: `activation_fn` other than
gelu, `layer_type` other than transformer, `quantize_input` (so `same_quantizer` is moot),
`pos_conv_depth` > 1, `conv_pos_batch_norm`, `blank_mode` "set"; and, only when the
pretraining heads are imported (they do not touch the encoder): `quantize_targets` False,
`target_glu`, `negatives_from_everywhere`, `cross_sample_negatives`, `codebook_negatives`.
The quantizer is always fairseq's `combine_groups=False` one; a codebook of another shape
fails the shape check. Ignored (no effect on the model built here): checkpoint/offload
activations, max_positions, fp16, freeze_finetune_updates, final_dropout (inference only),
w2v_path, optimizer state, extra_state.

No fairseq counterpart, on export: `masking.min_masks` (fairseq hard-codes 2) and
`feature_encoder.dropout` (fairseq hard-codes 0) are written as fairseq's values, with a
warning when ours differ. Missing fairseq fields take fairseq 0.12's dataclass defaults.
"""

from __future__ import annotations

import argparse
import ast
import collections
import copy
import logging
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode
from torch import Tensor, nn

from wav2vec2.files import atomic_write, load_checkpoint, serialize
from wav2vec2.config import ModelConfig
from wav2vec2.data.labels import Dictionary
from wav2vec2.infer.recognizer import Recognizer, build_recognizer
from wav2vec2.interop.keymap import Table, compile_table, rename
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
# The one parameter mapping: (our key prefix, fairseq key prefix) for `Wav2Vec2Model`. "#" is a
# block or layer index, the same number on both sides. A key is renamed by the first row whose
# prefix it starts with; a key no row matches is an error in either direction.
#
# Not a plain rename (handled around the table):
# - the feature encoder's norm: mode "default" has a GroupNorm in block 0 only, at
#   `conv_layers.0.2` (Sequential(conv, dropout, GroupNorm, GELU)); mode "layer_norm" has
#   Sequential(conv, dropout, Sequential(TransposeLast, LayerNorm, TransposeLast), GELU) in
#   every block, so its LayerNorm is `conv_layers.#.2.1` (LAYER_NORM_ROW).
# - the positional conv's weight norm (dim=2): fairseq 0.12's torch.nn.utils.weight_norm
#   stores weight_g (1, 1, k) / weight_v (D, D/groups, k), which are our parametrization's
#   original0 / original1. Newer fairseq names them `parametrizations.weight.original0/1`:
#   accepted on import; export writes weight_g/weight_v, which torch's parametrized
#   weight_norm also loads (its load hook renames them).
# - quantizer.weight_proj with quantizer_depth > 1: fairseq's Sequential(Sequential(Linear,
#   GELU) x (depth-1), Linear) has the Linears at `i.0` and `depth-1`, ours (Linear, GELU, ...,
#   Linear) at `2i`.
# - fairseq, as we, drops post_extract_proj when conv dim == model dim; `quantizer.vars` has
#   our codebook's (1, G*V, E) layout.
# ---------------------------------------------------------------------------------------------
PARAM_MAP: tuple[tuple[str, str], ...] = (
    ("mask_emb", "mask_emb"),
    ("feature_encoder.blocks.#.conv.", "feature_extractor.conv_layers.#.0."),
    ("feature_encoder.blocks.#.norm.", "feature_extractor.conv_layers.#.2."),
    ("layer_norm.", "layer_norm."),
    ("post_extract_proj.", "post_extract_proj."),
    ("encoder.pos_conv.conv.parametrizations.weight.original0", "encoder.pos_conv.0.weight_g"),
    ("encoder.pos_conv.conv.parametrizations.weight.original1", "encoder.pos_conv.0.weight_v"),
    ("encoder.pos_conv.conv.bias", "encoder.pos_conv.0.bias"),
    ("encoder.layer_norm.", "encoder.layer_norm."),
    ("encoder.layers.#.self_attn.q_proj.", "encoder.layers.#.self_attn.q_proj."),
    ("encoder.layers.#.self_attn.k_proj.", "encoder.layers.#.self_attn.k_proj."),
    ("encoder.layers.#.self_attn.v_proj.", "encoder.layers.#.self_attn.v_proj."),
    ("encoder.layers.#.self_attn.out_proj.", "encoder.layers.#.self_attn.out_proj."),
    ("encoder.layers.#.self_attn_layer_norm.", "encoder.layers.#.self_attn_layer_norm."),
    ("encoder.layers.#.fc1.", "encoder.layers.#.fc1."),
    ("encoder.layers.#.fc2.", "encoder.layers.#.fc2."),
    ("encoder.layers.#.final_layer_norm.", "encoder.layers.#.final_layer_norm."),
    ("quantizer.codebook", "quantizer.vars"),
    ("quantizer.weight_proj.", "quantizer.weight_proj."),
    ("project_q.", "project_q."),
    ("final_proj.", "final_proj."),
)
LAYER_NORM_ROW = ("feature_encoder.blocks.#.norm.", "feature_extractor.conv_layers.#.2.1.")
# Our Wav2Vec2Ctc <-> fairseq's Wav2VecCtc: the encoder (renamed by PARAM_MAP inside) and the head.
CTC_ENCODER = ("wav2vec2.", "w2v_encoder.w2v_model.")
CTC_HEAD = ("proj.", "w2v_encoder.proj.")

HEADS = ("quantizer.", "project_q.", "final_proj.")  # fairseq's remove_pretraining_modules()
_NEW_WEIGHT_NORM = {
    "encoder.pos_conv.0.parametrizations.weight.original0": "encoder.pos_conv.0.weight_g",
    "encoder.pos_conv.0.parametrizations.weight.original1": "encoder.pos_conv.0.weight_v",
}


def _table(cfg: ModelConfig, *, to_fairseq: bool) -> Table:
    rows = [LAYER_NORM_ROW if ours == LAYER_NORM_ROW[0] and cfg.feature_encoder.mode == "layer_norm"
            else (ours, fs) for ours, fs in PARAM_MAP]
    return compile_table([(a, b) if to_fairseq else (b, a) for a, b in rows])


def _rename(key: str, table: Table) -> str:
    return rename(key, table, where="PARAM_MAP in wav2vec2/interop/fairseq.py")


def _quantizer_layers(key: str, depth: int, *, to_fairseq: bool) -> str:
    """Renumber quantizer.weight_proj's Linears when depth > 1 (see PARAM_MAP's notes)."""
    if depth == 1 or not key.startswith("quantizer.weight_proj."):
        return key
    if to_fairseq:
        m = re.match(r"quantizer\.weight_proj\.(\d+)\.(.*)", key)
        i = int(m.group(1)) // 2
        return f"quantizer.weight_proj.{i}.{'0.' if i < depth - 1 else ''}{m.group(2)}"
    m = re.match(r"quantizer\.weight_proj\.(\d+)\.(?:0\.)?(weight|bias)$", key)
    return f"quantizer.weight_proj.{2 * int(m.group(1))}.{m.group(2)}" if m else key


# ---------------------------------------------------------------------------------------------
# State dicts
# ---------------------------------------------------------------------------------------------
def state_dict_from_fairseq(sd: Mapping[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """fairseq `Wav2Vec2Model` state dict (with or without the pretraining heads; old or new
    weight-norm names) -> ours, the same tensors renamed."""
    table = _table(cfg, to_fairseq=False)
    out = {}
    for key, value in sd.items():
        key = _quantizer_layers(_NEW_WEIGHT_NORM.get(key, key), cfg.quantizer.depth, to_fairseq=False)
        out[_rename(key, table)] = value
    return out


def state_dict_to_fairseq(sd: Mapping[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Our `Wav2Vec2Model` state dict -> fairseq's (weight_g/weight_v names, as fairseq 0.12)."""
    table = _table(cfg, to_fairseq=True)
    return {_quantizer_layers(_rename(key, table), cfg.quantizer.depth, to_fairseq=True): value
            for key, value in sd.items()}


def ctc_state_dict_from_fairseq(sd: Mapping[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """fairseq `Wav2VecCtc` state dict -> our `Wav2Vec2Ctc`'s."""
    encoder, out = {}, {}
    for key, value in sd.items():
        if key.startswith(CTC_ENCODER[1]):
            encoder[key[len(CTC_ENCODER[1]):]] = value
        elif key.startswith(CTC_HEAD[1]):
            out[CTC_HEAD[0] + key[len(CTC_HEAD[1]):]] = value
        else:
            raise ValueError(f"unexpected key {key!r} in a fairseq Wav2VecCtc state dict")
    heads = sorted(k for k in encoder if k.startswith(HEADS))
    if heads:
        raise ValueError(f"the fine-tuned model still holds pretraining modules ({', '.join(heads)})")
    out.update({CTC_ENCODER[0] + k: v for k, v in state_dict_from_fairseq(encoder, cfg).items()})
    return out


def ctc_state_dict_to_fairseq(sd: Mapping[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Our `Wav2Vec2Ctc` state dict -> fairseq `Wav2VecCtc`'s."""
    encoder = {k[len(CTC_ENCODER[0]):]: v for k, v in sd.items() if k.startswith(CTC_ENCODER[0])}
    out = {CTC_ENCODER[1] + k: v for k, v in state_dict_to_fairseq(encoder, cfg).items()}
    for key, value in sd.items():
        if not key.startswith(CTC_ENCODER[0]):
            if not key.startswith(CTC_HEAD[0]):
                raise ValueError(f"unexpected key {key!r} in a Wav2Vec2Ctc state dict")
            out[CTC_HEAD[1] + key[len(CTC_HEAD[0]):]] = value
    return out


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------
# fairseq 0.12 `Wav2Vec2Config` defaults of the fields read here (spec §1.4).
W2V_DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default", "encoder_layers": 12, "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12, "activation_fn": "gelu",
    "layer_type": "transformer", "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0, "dropout_input": 0.0, "dropout_features": 0.0, "final_dim": 0,
    "layer_norm_first": False,
    "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
    "conv_bias": False, "logit_temp": 0.1, "quantize_targets": False, "quantize_input": False,
    "same_quantizer": False, "target_glu": False, "feature_grad_mult": 1.0, "quantizer_depth": 1,
    "quantizer_factor": 3, "latent_vars": 320, "latent_groups": 2, "latent_dim": 0,
    "mask_length": 10, "mask_prob": 0.65, "mask_selection": "static", "mask_other": 0.0,
    "no_mask_overlap": False, "mask_min_space": 1, "require_same_masks": True, "mask_dropout": 0.0,
    "mask_channel_length": 10, "mask_channel_prob": 0.0, "mask_channel_before": False,
    "mask_channel_selection": "static", "mask_channel_other": 0.0, "no_mask_channel_overlap": False,
    "mask_channel_min_space": 1, "num_negatives": 100, "negatives_from_everywhere": False,
    "cross_sample_negatives": 0, "codebook_negatives": 0, "conv_pos": 128, "conv_pos_groups": 16,
    "pos_conv_depth": 1, "conv_pos_batch_norm": False, "latent_temp": (2.0, 0.5, 0.999995),
    "required_seq_len_multiple": 2, "crop_seq_to_multiple": 1,
}
# The fine-tuning (`Wav2Vec2AsrConfig`) fields fairseq 0.12's `Wav2VecEncoder` copies onto the
# pretraining config (`arg_overrides`) when fine-tuning starts: fine-tuning field -> pretraining field.
ASR_OVERRIDES: dict[str, str] = {
    "dropout": "dropout", "activation_dropout": "activation_dropout", "dropout_input": "dropout_input",
    "attention_dropout": "attention_dropout", "mask_length": "mask_length", "mask_prob": "mask_prob",
    "require_same_masks": "require_same_masks", "mask_selection": "mask_selection",
    "mask_other": "mask_other", "no_mask_overlap": "no_mask_overlap",
    "mask_channel_length": "mask_channel_length", "mask_channel_prob": "mask_channel_prob",
    "mask_channel_before": "mask_channel_before", "mask_channel_selection": "mask_channel_selection",
    "mask_channel_other": "mask_channel_other", "no_mask_channel_overlap": "no_mask_channel_overlap",
    "layerdrop": "encoder_layerdrop", "feature_grad_mult": "feature_grad_mult",
}
# field -> (the only value we can build, why). The second group only shapes the pretraining
# heads or loss, and is only checked when those are imported.
_ENCODER_LIMITS = {
    "activation_fn": ("gelu", "our Transformer uses GELU"),
    "layer_type": ("transformer", "conformer and adapter layers are not implemented"),
    "quantize_input": (False, "the context network would read quantized features"),
    "pos_conv_depth": (1, "the positional embedding is a single conv"),
    "conv_pos_batch_norm": (False, "the positional conv has no batch norm"),
}
_HEAD_LIMITS = {
    "quantize_targets": (True, "the targets are always quantized here"),
    "target_glu": (False, "there is no GLU on the targets"),
    "negatives_from_everywhere": (False, "negatives come from masked frames only"),
    "cross_sample_negatives": (0, "negatives come from the same utterance only"),
    "codebook_negatives": (0, "there are no codebook negatives"),
}
_MAX_CONV_LAYERS = 64


def parse_conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """fairseq's `conv_feature_layers`, e.g. "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2",
    as [(dim, kernel, stride), ...]. fairseq eval()s the string; here only that grammar is
    read (lists of 3-int tuples, joined by `+`, repeated by `* int`), from Python's parse
    tree, so nothing is evaluated. Anything else is a ValueError."""
    def fail(why: str) -> ValueError:
        return ValueError(f"conv_feature_layers {spec!r}: {why}")

    def integer(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int and node.value >= 0:
            return node.value
        raise fail(f"expected a non-negative integer, got {ast.dump(node)[:60]}")

    def layer(node: ast.AST) -> tuple[int, int, int]:
        if isinstance(node, (ast.Tuple, ast.List)) and len(node.elts) == 3:
            dim, kernel, stride = (integer(e) for e in node.elts)
            return dim, kernel, stride
        raise fail("each layer must be a (dim, kernel, stride) tuple")

    def layers(node: ast.AST) -> list[tuple[int, int, int]]:
        if isinstance(node, ast.List):
            out = [layer(e) for e in node.elts]
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            out = layers(node.left) + layers(node.right)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            seq, times = (node.right, node.left) if isinstance(node.left, ast.Constant) else (node.left, node.right)
            out = layers(seq) * min(integer(times), _MAX_CONV_LAYERS + 1)
        else:
            raise fail("only lists of (dim, kernel, stride) tuples, + and * are allowed")
        if len(out) > _MAX_CONV_LAYERS:
            raise fail(f"more than {_MAX_CONV_LAYERS} layers")
        return out

    if not isinstance(spec, str) or len(spec) > 2000:
        raise fail("expected a string of at most 2000 characters")
    try:
        tree = ast.parse(spec.strip(), mode="eval")
    except SyntaxError:
        raise fail("not a list expression") from None
    result = layers(tree.body)
    if not result:
        raise fail("no layers")
    return result


def format_conv_layers(cfg: ModelConfig) -> str:
    fe = cfg.feature_encoder
    return "[" + ", ".join(f"({d}, {k}, {s})" for d, k, s in zip(fe.conv_dims, fe.conv_kernels, fe.conv_strides)) + "]"


def _plain(value: Any) -> Any:
    """A config as plain dicts and lists: Namespaces and omegaconf containers converted
    (interpolations are not resolved: no resolver runs on file data)."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=False)
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class _Fields:
    """Typed reads of one fairseq config section; a missing field takes `defaults`."""

    def __init__(self, section: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
        self.section, self.defaults = section, defaults

    def get(self, name: str) -> Any:
        return self.section[name] if name in self.section else self.defaults[name]

    def _typed(self, name: str, ok: bool, kind: str) -> Any:
        if not ok:
            raise ValueError(f"fairseq field {name}={self.get(name)!r} must be {kind}")
        return self.get(name)

    def int(self, name: str) -> int:
        v = self.get(name)
        return self._typed(name, isinstance(v, int) and not isinstance(v, bool), "an integer")

    def float(self, name: str) -> float:
        v = self.get(name)
        return float(self._typed(name, isinstance(v, (int, float)) and not isinstance(v, bool), "a number"))

    def bool(self, name: str) -> bool:
        return self._typed(name, isinstance(self.get(name), bool), "a boolean")

    def str(self, name: str) -> str:
        return self._typed(name, isinstance(self.get(name), str), "a string")

    def numbers(self, name: str, count: int | None = None) -> list[float]:
        """A tuple/list of numbers, or its literal as a string ("(2,0.5,0.999995)", 2020 files)."""
        v = self.get(name)
        if isinstance(v, str):
            try:
                v = ast.literal_eval(v)
            except (ValueError, SyntaxError):
                pass
        ok = (isinstance(v, (list, tuple)) and (count is None or len(v) == count)
              and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v))
        self._typed(name, ok, f"{count or 'some'} numbers")
        return [float(x) for x in v]


def config_from_fairseq(
    model_cfg: Mapping[str, Any] | argparse.Namespace,
    *,
    criterion: Mapping[str, Any] | argparse.Namespace | None = None,
    heads: bool = True,
) -> ModelConfig:
    """Our config from a fairseq `Wav2Vec2Config` (a dict, DictConfig or the 2020 Namespace).

    Missing fields take fairseq's defaults. `criterion` (the "criterion" section, or the
    Namespace) supplies the loss weights; without it ours keep their defaults. With `heads`
    False the fields that only shape the pretraining heads are not checked. Raises
    ValueError naming the field for what we cannot build.
    """
    f = _Fields(_plain(model_cfg), W2V_DEFAULTS)
    for limits in (_ENCODER_LIMITS, _HEAD_LIMITS) if heads else (_ENCODER_LIMITS,):
        for name, (supported, why) in limits.items():
            if f.get(name) != supported:
                raise ValueError(f"fairseq field {name}={f.get(name)!r} is not supported (only "
                                 f"{supported!r}): {why}")
    cfg = ModelConfig()
    fe, t, m, q = cfg.feature_encoder, cfg.transformer, cfg.masking, cfg.quantizer
    conv = parse_conv_layers(f.str("conv_feature_layers"))
    fe.conv_dims, fe.conv_kernels, fe.conv_strides = ([c[i] for c in conv] for i in range(3))
    fe.mode = f.str("extractor_mode")
    fe.conv_bias = f.bool("conv_bias")
    fe.dropout = 0.0  # fairseq builds the feature extractor with dropout 0
    fe.grad_mult = f.float("feature_grad_mult")

    t.num_layers, t.embed_dim = f.int("encoder_layers"), f.int("encoder_embed_dim")
    t.ffn_dim, t.num_heads = f.int("encoder_ffn_embed_dim"), f.int("encoder_attention_heads")
    t.layer_norm_first = f.bool("layer_norm_first")
    t.dropout, t.attention_dropout = f.float("dropout"), f.float("attention_dropout")
    t.activation_dropout, t.layerdrop = f.float("activation_dropout"), f.float("encoder_layerdrop")
    t.conv_pos, t.conv_pos_groups = f.int("conv_pos"), f.int("conv_pos_groups")
    t.required_seq_len_multiple = f.int("required_seq_len_multiple")

    m.mask_prob, m.mask_len = f.float("mask_prob"), f.int("mask_length")
    m.selection, m.other = f.str("mask_selection"), f.float("mask_other")
    m.min_masks = 2  # hard-coded in fairseq's model
    m.no_overlap, m.min_space = f.bool("no_mask_overlap"), f.int("mask_min_space")
    m.require_same_masks, m.mask_dropout = f.bool("require_same_masks"), f.float("mask_dropout")
    m.channel_prob, m.channel_len = f.float("mask_channel_prob"), f.int("mask_channel_length")
    m.channel_selection, m.channel_other = f.str("mask_channel_selection"), f.float("mask_channel_other")
    m.channel_no_overlap = f.bool("no_mask_channel_overlap")
    m.channel_min_space = f.int("mask_channel_min_space")
    m.channel_before = f.bool("mask_channel_before")

    q.num_codebooks, q.num_entries = f.int("latent_groups"), f.int("latent_vars")
    q.codebook_dim = f.int("latent_dim")
    q.max_temp, q.min_temp, q.temp_decay = f.numbers("latent_temp", 3)
    q.depth, q.hidden_factor = f.int("quantizer_depth"), f.int("quantizer_factor")

    cfg.final_dim = f.int("final_dim")
    cfg.dropout_input, cfg.dropout_features = f.float("dropout_input"), f.float("dropout_features")
    cfg.num_negatives, cfg.logit_temp = f.int("num_negatives"), f.float("logit_temp")
    cfg.crop_seq_to_multiple = f.int("crop_seq_to_multiple")
    if criterion is not None:
        crit = _plain(criterion)
        weights = None if crit.get("loss_weights") is None else _Fields(crit, {}).numbers("loss_weights")
        if weights is None:  # fairseq adds no extra losses
            weights = [0.0, 0.0]
        if len(weights) == 1:  # fairseq repeats a single weight
            weights = weights * 2
        if len(weights) != 2:
            raise ValueError(f"fairseq field loss_weights={weights} must have 2 entries (diversity, "
                             "feature penalty)")
        cfg.loss.diversity_weight, cfg.loss.feature_penalty_weight = weights
    return cfg


def config_to_fairseq(cfg: ModelConfig) -> dict[str, Any]:
    """fairseq's `Wav2Vec2Config` fields (the "model" section, `_name` wav2vec2) for our config."""
    fe, t, m, q = cfg.feature_encoder, cfg.transformer, cfg.masking, cfg.quantizer
    dropped = [f"{name}={ours}" for name, ours, theirs in (
        ("masking.min_masks", m.min_masks, 2), ("feature_encoder.dropout", fe.dropout, 0.0)) if ours != theirs]
    if dropped:
        log.warning("fairseq has no counterpart for %s: it uses %s", ", ".join(dropped),
                    "min_masks=2, feature-encoder dropout 0")
    return {
        "_name": "wav2vec2", "extractor_mode": fe.mode, "encoder_layers": t.num_layers,
        "encoder_embed_dim": t.embed_dim, "encoder_ffn_embed_dim": t.ffn_dim,
        "encoder_attention_heads": t.num_heads, "activation_fn": "gelu", "layer_type": "transformer",
        "dropout": t.dropout, "attention_dropout": t.attention_dropout,
        "activation_dropout": t.activation_dropout, "encoder_layerdrop": t.layerdrop,
        "dropout_input": cfg.dropout_input, "dropout_features": cfg.dropout_features,
        "final_dim": cfg.final_dim, "layer_norm_first": t.layer_norm_first,
        "conv_feature_layers": format_conv_layers(cfg), "conv_bias": fe.conv_bias,
        "logit_temp": cfg.logit_temp, "quantize_targets": True, "quantize_input": False,
        "same_quantizer": False, "target_glu": False, "feature_grad_mult": fe.grad_mult,
        "quantizer_depth": q.depth, "quantizer_factor": q.hidden_factor, "latent_vars": q.num_entries,
        "latent_groups": q.num_codebooks, "latent_dim": q.codebook_dim,
        "mask_length": m.mask_len, "mask_prob": m.mask_prob, "mask_selection": m.selection,
        "mask_other": m.other, "no_mask_overlap": m.no_overlap, "mask_min_space": m.min_space,
        "require_same_masks": m.require_same_masks, "mask_dropout": m.mask_dropout,
        "mask_channel_length": m.channel_len, "mask_channel_prob": m.channel_prob,
        "mask_channel_before": m.channel_before, "mask_channel_selection": m.channel_selection,
        "mask_channel_other": m.channel_other, "no_mask_channel_overlap": m.channel_no_overlap,
        "mask_channel_min_space": m.channel_min_space, "num_negatives": cfg.num_negatives,
        "negatives_from_everywhere": False, "cross_sample_negatives": 0, "codebook_negatives": 0,
        "conv_pos": t.conv_pos, "conv_pos_groups": t.conv_pos_groups, "pos_conv_depth": 1,
        "latent_temp": [q.max_temp, q.min_temp, q.temp_decay],
        "required_seq_len_multiple": t.required_seq_len_multiple,
        "crop_seq_to_multiple": cfg.crop_seq_to_multiple, "checkpoint_activations": False,
    }


def ctc_config_from_fairseq(model_cfg: Mapping[str, Any] | argparse.Namespace) -> ModelConfig:
    """Our encoder config from a fairseq `Wav2Vec2CtcConfig` ("model" section or Namespace), as
    fairseq rebuilds a fine-tuned model: everything from its `w2v_args` (which fairseq wrote
    with the fine-tuning dropouts, masks, layerdrop and feature_grad_mult already copied in,
    ASR_OVERRIDES), and no masking at all when `apply_mask` is False. fairseq drops
    w2v_args' criterion, so the loss weights keep our defaults unless it has one (our
    exports keep it)."""
    asr = _plain(model_cfg)
    w2v_model, _, w2v_criterion = _w2v_sections(asr)
    w2v_model = dict(w2v_model)
    if not _Fields(asr, {"apply_mask": False}).bool("apply_mask"):
        w2v_model["mask_prob"] = w2v_model["mask_channel_prob"] = 0.0
    return config_from_fairseq(w2v_model, criterion=w2v_criterion, heads=False)


def _w2v_sections(asr: Mapping[str, Any]) -> tuple[dict, dict, dict | None]:
    """(model, task, criterion) of a fine-tuned config's pretraining config `w2v_args`."""
    w2v = asr.get("w2v_args")
    if not isinstance(w2v, Mapping):
        raise ValueError("the fine-tuned model's config has no w2v_args (fairseq would read the "
                         "architecture from w2v_path, which is not part of this file)")
    return _sections(w2v)


def _sections(cfg: Mapping[str, Any]) -> tuple[dict, dict, dict | None]:
    """(model, task, criterion) sections of a plain config: a Hydra one has them as keys, a
    2020 Namespace holds every field in one flat namespace."""
    if isinstance(cfg.get("model"), Mapping):
        return cfg["model"], cfg.get("task") or {}, cfg.get("criterion")
    return cfg, cfg, cfg


# ---------------------------------------------------------------------------------------------
# Checkpoint files
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


def _read(path: str | Path, state: dict[str, Any] | None) -> dict[str, Any]:
    if state is None:
        state = load_checkpoint(Path(path), allow=FAIRSEQ_SAFE_TYPES)
    if not is_fairseq_checkpoint(state):
        raise ValueError(f"{path} is not a fairseq checkpoint (a dict with 'model' and 'args' or 'cfg')")
    return state


def _parse(state: Mapping[str, Any]) -> tuple[str, dict, dict, dict | None]:
    """(model name, model, task, criterion) of a fairseq checkpoint, as plain dicts."""
    args = state.get("args")
    model, task, criterion = _sections(_plain(args if args is not None else state["cfg"]))
    name = model.get("_name") or model.get("arch")
    if name not in ("wav2vec2", "wav2vec_ctc"):
        raise ValueError(f"the fairseq model is {name!r}; only wav2vec 2.0 ('wav2vec2', 'wav2vec_ctc') is supported")
    return name, model, task, criterion


def _normalize(task: Mapping[str, Any]) -> bool | None:
    return _Fields(task, {"normalize": False}).bool("normalize") if task else None


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


def load_fairseq_pretraining(
    path: str | Path, state: dict[str, Any] | None = None, *, heads: bool = True
) -> tuple[ModelConfig, dict[str, Tensor], bool | None]:
    """A fairseq wav2vec 2.0 checkpoint as (our config, `Wav2Vec2Model` state dict, the task's
    normalize or None if the file has no task config).

    A pretraining checkpoint keeps its quantizer, project_q and final_proj when it has them and
    `heads` is True; otherwise (or for a fine-tuned `Wav2VecCtc` checkpoint, whose encoder is
    returned) the state dict loads into `Wav2Vec2Model(cfg)` after `remove_pretraining_modules()`.
    `state` is the file's contents if already read.
    """
    state = _read(path, state)
    try:
        name, model, task, criterion = _parse(state)
        sd = state["model"]
        if name == "wav2vec_ctc":
            cfg = ctc_config_from_fairseq(model)
            encoder = {k[len(CTC_ENCODER[1]):]: v for k, v in sd.items() if k.startswith(CTC_ENCODER[1])}
            heads = False
        else:
            heads = heads and any(k.startswith(HEADS) for k in sd)
            cfg = config_from_fairseq(model, criterion=criterion, heads=heads)
            encoder = {k: v for k, v in sd.items() if heads or not k.startswith(HEADS)}
        weights = state_dict_from_fairseq(encoder, cfg)
        with torch.device("meta"):
            ref = Wav2Vec2Model(cfg)
        if not heads:
            ref.remove_pretraining_modules()
        _check_keys(weights, ref)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return cfg, weights, _normalize(task)


def load_fairseq_ctc(
    path: str | Path, *, dictionary: str | Path, state: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> Recognizer:
    """A `Recognizer` from a fairseq `Wav2VecCtc` checkpoint and its `dict.ltr.txt`.

    fairseq's dictionary has our 4 specials at our indices (its `<s>` at 0 is the CTC blank), so
    the output rows map one to one; their number must be the dictionary's length. When the file
    carries its own copy of the dictionary (Hydra-era task_state), the symbols must agree.
    """
    state = _read(path, state)
    letters = Dictionary.load(dictionary)
    try:
        name, model, task, _ = _parse(state)
        if name != "wav2vec_ctc":
            raise ValueError(f"a fairseq {name!r} model has no CTC head: fine-tune it first")
        cfg = ctc_config_from_fairseq(model)
        weights = ctc_state_dict_from_fairseq(state["model"], cfg)
        fields = _Fields(model, {"blank_weight": 0.0, "blank_mode": "add"})
        if fields.float("blank_weight") != 0:
            if fields.str("blank_mode") != "add":
                raise ValueError(f"fairseq field blank_mode={fields.str('blank_mode')!r} is not supported "
                                 "(only 'add', which is a bias on the blank)")
            weights["proj.bias"] = weights["proj.bias"].clone()
            weights["proj.bias"][0] += fields.float("blank_weight")
        if "proj.weight" not in weights:
            raise ValueError("the fine-tuned model has no output layer (w2v_encoder.proj)")
        num_outputs = weights["proj.weight"].shape[0]
        if num_outputs != len(letters):
            raise ValueError(f"the model has {num_outputs} outputs but {dictionary} gives {len(letters)} "
                             "symbols (4 specials + its lines): not the dictionary it was fine-tuned with")
        stored = (state.get("task_state") or {}).get("target_dictionary")
        if isinstance(stored, FairseqDictionaryState) and list(stored.symbols[4:]) != letters.symbols[4:]:
            raise ValueError(f"{dictionary} differs from the dictionary stored in the checkpoint")
        with torch.device("meta"):
            _check_keys(weights, Wav2Vec2Ctc(cfg, vocab_size=num_outputs))
        normalize = _normalize(task)
        sample_rate = _Fields(task, {"sample_rate": 16000}).int("sample_rate")
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if normalize is None:
        log.warning("%s has no task config: assuming normalize=False (fairseq's default)", path)
    return build_recognizer(cfg, weights, letters, normalize=bool(normalize), sample_rate=sample_rate,
                            source=str(path), device=device)


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------
def _pretraining_task(data: str, normalize: bool) -> dict[str, Any]:
    return {"_name": "audio_pretraining", "data": data, "labels": None, "sample_rate": 16000,
            "normalize": normalize, "enable_padding": False}


def _wav2vec_criterion(cfg: ModelConfig) -> dict[str, Any]:
    return {"_name": "wav2vec", "infonce": True, "log_keys": ["prob_perplexity", "code_perplexity", "temp"],
            "loss_weights": [cfg.loss.diversity_weight, cfg.loss.feature_penalty_weight]}


def export_fairseq(
    model: Wav2Vec2Model | Wav2Vec2Ctc, path: str | Path, *, normalize: bool,
    dictionary: Dictionary | str | Path | None = None,
) -> Path:
    """Write `model` as a fairseq 0.12 checkpoint (Hydra layout) laid out for fairseq's
    `checkpoint_utils.load_model_ensemble_and_task([path])`: what it reads (cfg sections and
    `_name`s, optimizer_history, extra_state, strict state-dict keys) was checked against its
    source, not by running it (fairseq is not a dependency).

    A `Wav2Vec2Model` must still have its pretraining modules (fairseq's pretraining model has
    them) and is written as `wav2vec2` with task `audio_pretraining`. A `Wav2Vec2Ctc` is
    written as `wav2vec_ctc` (its pretraining config in `w2v_args`) with task
    `audio_finetuning`, labels "ltr", and `dictionary` written to dict.ltr.txt beside the file:
    fairseq reads it from the task's `data` directory, set to that folder (after moving the
    files, pass `arg_overrides={"data": new_dir}`). The file holds only plain containers and
    tensors. Returns `path`.
    """
    path = Path(path)
    data = str(path.resolve().parent)
    cfg = model.cfg
    w2v_model = config_to_fairseq(cfg)
    common = {"common": {"tpu": False}, "distributed_training": {"ddp_backend": "legacy_ddp"}}
    if isinstance(model, Wav2Vec2Ctc):
        if dictionary is None:
            raise ValueError("a CTC model needs its dictionary (it is written to dict.ltr.txt)")
        letters = dictionary if isinstance(dictionary, Dictionary) else Dictionary.load(dictionary)
        if len(letters) != model.proj.out_features:
            raise ValueError(f"the model has {model.proj.out_features} outputs but the dictionary "
                             f"{len(letters)} symbols")
        asr = {name: w2v_model[w2v_name] for name, w2v_name in ASR_OVERRIDES.items()}
        pretraining = {**copy.deepcopy(common), "model": w2v_model, "task": _pretraining_task(data, normalize),
                       "criterion": _wav2vec_criterion(cfg)}
        asr.update({
            "_name": "wav2vec_ctc", "w2v_path": "", "no_pretrained_weights": False,
            "apply_mask": cfg.masking.mask_prob > 0 or cfg.masking.channel_prob > 0,
            "final_dropout": model.final_dropout.p, "freeze_finetune_updates": 0,
            "normalize": normalize, "data": data, "blank_weight": 0.0, "blank_mode": "add",
            "w2v_args": pretraining,
        })
        fairseq_cfg = {**common, "model": asr,
                       "task": {**_pretraining_task(data, normalize), "_name": "audio_finetuning", "labels": "ltr"},
                       "criterion": {"_name": "ctc", "zero_infinity": True, "sentence_avg": True,
                                     "post_process": "letter"}}
        weights = ctc_state_dict_to_fairseq(model.state_dict(), cfg)
        criterion_name = "CtcCriterion"
    else:
        if model.quantizer is None:
            raise ValueError("fairseq's wav2vec2 model has a quantizer, project_q and final_proj; this "
                             "model's were removed (export the Wav2Vec2Ctc, or a model with its heads)")
        fairseq_cfg = {**common, "model": w2v_model, "task": _pretraining_task(data, normalize),
                       "criterion": _wav2vec_criterion(cfg)}
        weights = state_dict_to_fairseq(model.state_dict(), cfg)
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
    if isinstance(model, Wav2Vec2Ctc):
        letters.save(path.parent / "dict.ltr.txt")
    atomic_write(path, serialize(state))
    return path
