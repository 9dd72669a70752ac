"""fairseq's wav2vec 2.0 config fields for this project's `ModelConfig`: one table
(`FIELDS`), used in both directions, plus the few fields that are not a plain copy.

fairseq files hold their config as a 2020 argparse Namespace or a Hydra dict (sometimes an
omegaconf DictConfig); both are read here as plain dicts (`plain`), never evaluated. A
fine-tuned model's config carries its pretraining config in "w2v_args", and the encoder's
architecture comes from there (`ctc_config_from_fairseq`).

No counterpart here, refused with a ValueError naming the field: `activation_fn` other than
gelu, `layer_type` other than transformer, `quantize_input` (so `same_quantizer` is moot),
`pos_conv_depth` > 1, `conv_pos_batch_norm`; and, only when the pretraining heads are read
(they do not touch the encoder): `quantize_targets` False, `target_glu`,
`negatives_from_everywhere`, `cross_sample_negatives`, `codebook_negatives`. Ignored (no
effect on the model built here): checkpoint/offload activations, max_positions, fp16,
freeze_finetune_updates, final_dropout (inference only), w2v_path.

No fairseq counterpart, on export: `masking.min_masks` (fairseq hard-codes 2) and
`feature_encoder.dropout` (fairseq hard-codes 0) are written as fairseq's values, with a
warning when ours differ. Missing fairseq fields take fairseq 0.12's dataclass defaults.
"""

from __future__ import annotations

import argparse
import ast
import logging
from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf

from wav2vec2.config import ModelConfig
from wav2vec2.interop.keymap import get_field, set_field

log = logging.getLogger(__name__)

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


def plain(value: Any) -> Any:
    """A config as plain dicts and lists: Namespaces and omegaconf containers converted
    (interpolations are not resolved: no resolver runs on file data)."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=False)
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
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



# (our field, fairseq's `Wav2Vec2Config` field, type): every field that is a plain copy, in
# both directions. The conv stack (`conv_feature_layers`), the temperature schedule
# (`latent_temp`), fairseq's hard-coded values and the loss weights (criterion section) are
# handled around it.
FIELDS: tuple[tuple[str, str, str], ...] = (
    ("feature_encoder.mode", "extractor_mode", "str"),
    ("feature_encoder.conv_bias", "conv_bias", "bool"),
    ("feature_encoder.grad_mult", "feature_grad_mult", "float"),
    ("transformer.num_layers", "encoder_layers", "int"),
    ("transformer.embed_dim", "encoder_embed_dim", "int"),
    ("transformer.ffn_dim", "encoder_ffn_embed_dim", "int"),
    ("transformer.num_heads", "encoder_attention_heads", "int"),
    ("transformer.layer_norm_first", "layer_norm_first", "bool"),
    ("transformer.dropout", "dropout", "float"),
    ("transformer.attention_dropout", "attention_dropout", "float"),
    ("transformer.activation_dropout", "activation_dropout", "float"),
    ("transformer.layerdrop", "encoder_layerdrop", "float"),
    ("transformer.conv_pos", "conv_pos", "int"),
    ("transformer.conv_pos_groups", "conv_pos_groups", "int"),
    ("transformer.required_seq_len_multiple", "required_seq_len_multiple", "int"),
    ("masking.mask_prob", "mask_prob", "float"),
    ("masking.mask_len", "mask_length", "int"),
    ("masking.selection", "mask_selection", "str"),
    ("masking.other", "mask_other", "float"),
    ("masking.no_overlap", "no_mask_overlap", "bool"),
    ("masking.min_space", "mask_min_space", "int"),
    ("masking.require_same_masks", "require_same_masks", "bool"),
    ("masking.mask_dropout", "mask_dropout", "float"),
    ("masking.channel_prob", "mask_channel_prob", "float"),
    ("masking.channel_len", "mask_channel_length", "int"),
    ("masking.channel_selection", "mask_channel_selection", "str"),
    ("masking.channel_other", "mask_channel_other", "float"),
    ("masking.channel_no_overlap", "no_mask_channel_overlap", "bool"),
    ("masking.channel_min_space", "mask_channel_min_space", "int"),
    ("masking.channel_before", "mask_channel_before", "bool"),
    ("quantizer.num_codebooks", "latent_groups", "int"),
    ("quantizer.num_entries", "latent_vars", "int"),
    ("quantizer.codebook_dim", "latent_dim", "int"),
    ("quantizer.depth", "quantizer_depth", "int"),
    ("quantizer.hidden_factor", "quantizer_factor", "int"),
    ("final_dim", "final_dim", "int"),
    ("dropout_input", "dropout_input", "float"),
    ("dropout_features", "dropout_features", "float"),
    ("num_negatives", "num_negatives", "int"),
    ("logit_temp", "logit_temp", "float"),
    ("crop_seq_to_multiple", "crop_seq_to_multiple", "int"),
)
# fairseq fields with one value here: written on export, checked on import (the limits above).
_FIXED = {"activation_fn": "gelu", "layer_type": "transformer", "quantize_targets": True, "quantize_input": False,
          "same_quantizer": False, "target_glu": False, "negatives_from_everywhere": False,
          "cross_sample_negatives": 0, "codebook_negatives": 0, "pos_conv_depth": 1, "checkpoint_activations": False}
# Ours that fairseq hard-codes in its model: (our field, fairseq's value).
_HARD_CODED = (("masking.min_masks", 2), ("feature_encoder.dropout", 0.0))


def head_problems(model_cfg: Mapping[str, Any] | argparse.Namespace) -> str | None:
    """Why the pretraining heads of this fairseq model cannot be built here, or None."""
    f = _Fields(plain(model_cfg), W2V_DEFAULTS)
    for name, (supported, why) in _HEAD_LIMITS.items():
        if f.get(name) != supported:
            return f"fairseq field {name}={f.get(name)!r}: {why}"
    return None


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
    f = _Fields(plain(model_cfg), W2V_DEFAULTS)
    for limits in (_ENCODER_LIMITS, _HEAD_LIMITS) if heads else (_ENCODER_LIMITS,):
        for name, (supported, why) in limits.items():
            if f.get(name) != supported:
                raise ValueError(f"fairseq field {name}={f.get(name)!r} is not supported (only "
                                 f"{supported!r}): {why}")
    cfg = ModelConfig()
    for ours, theirs, kind in FIELDS:
        set_field(cfg, ours, getattr(f, kind)(theirs))
    fe, q = cfg.feature_encoder, cfg.quantizer
    conv = parse_conv_layers(f.str("conv_feature_layers"))
    fe.conv_dims, fe.conv_kernels, fe.conv_strides = ([c[i] for c in conv] for i in range(3))
    q.max_temp, q.min_temp, q.temp_decay = f.numbers("latent_temp", 3)
    for ours, value in _HARD_CODED:
        set_field(cfg, ours, value)
    if criterion is not None:
        crit = plain(criterion)
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
    dropped = [f"{ours}={get_field(cfg, ours)}" for ours, theirs in _HARD_CODED if get_field(cfg, ours) != theirs]
    if dropped:
        log.warning("fairseq has no counterpart for %s: it uses %s", ", ".join(dropped),
                    "min_masks=2, feature-encoder dropout 0")
    q = cfg.quantizer
    return {
        "_name": "wav2vec2",
        **{theirs: get_field(cfg, ours) for ours, theirs, _ in FIELDS},
        "conv_feature_layers": format_conv_layers(cfg),
        "latent_temp": [q.max_temp, q.min_temp, q.temp_decay],
        **_FIXED,
    }


def ctc_config_from_fairseq(model_cfg: Mapping[str, Any] | argparse.Namespace) -> ModelConfig:
    """Our encoder config from a fairseq `Wav2Vec2CtcConfig` ("model" section or Namespace), as
    fairseq rebuilds a fine-tuned model: everything from its `w2v_args` (which fairseq wrote
    with the fine-tuning dropouts, masks, layerdrop and feature_grad_mult already copied in,
    ASR_OVERRIDES), and no masking at all when `apply_mask` is False. fairseq drops
    w2v_args' criterion, so the loss weights keep our defaults unless it has one (our
    exports keep it)."""
    asr = plain(model_cfg)
    w2v_model, _, w2v_criterion = w2v_sections(asr)
    w2v_model = dict(w2v_model)
    if not _Fields(asr, {"apply_mask": False}).bool("apply_mask"):
        w2v_model["mask_prob"] = w2v_model["mask_channel_prob"] = 0.0
    return config_from_fairseq(w2v_model, criterion=w2v_criterion, heads=False)


def w2v_sections(asr: Mapping[str, Any]) -> tuple[dict, dict, dict | None]:
    """(model, task, criterion) of a fine-tuned config's pretraining config `w2v_args`."""
    w2v = asr.get("w2v_args")
    if not isinstance(w2v, Mapping):
        raise ValueError("the fine-tuned model's config has no w2v_args (fairseq would read the "
                         "architecture from w2v_path, which is not part of this file)")
    return sections(w2v)


def sections(cfg: Mapping[str, Any]) -> tuple[dict, dict, dict | None]:
    """(model, task, criterion) sections of a plain config: a Hydra one has them as keys, a
    2020 Namespace holds every field in one flat namespace."""
    if isinstance(cfg.get("model"), Mapping):
        return cfg["model"], cfg.get("task") or {}, cfg.get("criterion")
    return cfg, cfg, cfg




def task_normalize(task: Mapping[str, Any]) -> bool | None:
    """The task section's `normalize`, None when the file has no task config."""
    return _Fields(task, {"normalize": False}).bool("normalize") if task else None


def task_sample_rate(task: Mapping[str, Any]) -> int:
    return _Fields(task, {"sample_rate": 16000}).int("sample_rate")


def ctc_head_settings(asr: Mapping[str, Any]) -> tuple[float, str]:
    """(blank_weight, blank_mode) of a fine-tuned model's config section."""
    fields = _Fields(asr, {"blank_weight": 0.0, "blank_mode": "add"})
    return fields.float("blank_weight"), fields.str("blank_mode")
