"""transformers' `Wav2Vec2Config` fields for this project's `ModelConfig`: one table (`FIELDS`),
used in both directions, plus the few fields that are not a plain copy.

Config fields with no transformers counterpart (they change training, not the eval forward,
unless noted):

- `feature_encoder.grad_mult` (fairseq `feature_grad_mult`): transformers has only
  `freeze_feature_encoder()` (= grad_mult 0); there is no gradient scaling.
- `feature_encoder.dropout`: transformers' conv layers have no dropout.
- `loss.feature_penalty_weight`: transformers' pretraining loss has no feature penalty.
- `quantizer.max_temp/min_temp/temp_decay`: transformers keeps one temperature on the module
  (`set_gumbel_temperature`); the schedule lives in its example training script.
- `quantizer.depth/hidden_factor`: transformers' `weight_proj` is one Linear, so depth must be 1.
- `masking.selection/other/no_overlap/min_space/require_same_masks/mask_dropout` and every
  `channel_*` option except prob/len: transformers' `_compute_mask_indices` is static,
  overlapping spans only. Its per-row span count also differs slightly from fairseq's.
- `crop_seq_to_multiple`, `transformer.required_seq_len_multiple`: no counterpart; the second
  only pads with masked keys, so it does not change outputs.

and the other way (transformers fields ignored on import): `mask_feature_min_masks` (our
channel masks use 0, as fairseq), `apply_spec_augment`, the CTC/classification/x-vector/
adapter heads and `final_dropout`. Hub pretraining checkpoints usually carry fine-tuning
masking values (`mask_time_prob` 0.05); they are mapped as they are.

Fields that only exist here are taken from a `template` ModelConfig on import (default: the
BASE recipe), so `config_from_hf(config_to_hf(cfg), template=cfg) == cfg`. transformers is
imported only by `config_to_hf` (to build its config object).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from wav2vec2.config import ModelConfig
from wav2vec2.interop.keymap import get_field, set_field

if TYPE_CHECKING:  # transformers is optional
    from transformers import Wav2Vec2Config

# (our field, transformers' field, type on import): every field that is a plain copy, in both
# directions. The rest is handled around it: the extractor's norm names, the final and
# codebook dims (0 means "the default" here), the quantizer's depth, and constants.
FIELDS: tuple[tuple[str, str, type], ...] = (
    ("feature_encoder.conv_dims", "conv_dim", list),
    ("feature_encoder.conv_kernels", "conv_kernel", list),
    ("feature_encoder.conv_strides", "conv_stride", list),
    ("feature_encoder.conv_bias", "conv_bias", bool),
    ("transformer.embed_dim", "hidden_size", int),
    ("transformer.num_layers", "num_hidden_layers", int),
    ("transformer.num_heads", "num_attention_heads", int),
    ("transformer.ffn_dim", "intermediate_size", int),
    ("transformer.layer_norm_first", "do_stable_layer_norm", bool),
    ("transformer.conv_pos", "num_conv_pos_embeddings", int),
    ("transformer.conv_pos_groups", "num_conv_pos_embedding_groups", int),
    ("transformer.dropout", "hidden_dropout", float),
    ("transformer.attention_dropout", "attention_dropout", float),
    ("transformer.activation_dropout", "activation_dropout", float),
    ("transformer.layerdrop", "layerdrop", float),
    ("dropout_input", "feat_proj_dropout", float),
    ("dropout_features", "feat_quantizer_dropout", float),
    ("masking.mask_prob", "mask_time_prob", float),
    ("masking.mask_len", "mask_time_length", int),
    ("masking.min_masks", "mask_time_min_masks", int),
    ("masking.channel_prob", "mask_feature_prob", float),
    ("masking.channel_len", "mask_feature_length", int),
    ("quantizer.num_codebooks", "num_codevector_groups", int),
    ("quantizer.num_entries", "num_codevectors_per_group", int),
    ("num_negatives", "num_negatives", int),
    ("logit_temp", "contrastive_logits_temperature", float),
    ("loss.diversity_weight", "diversity_loss_weight", float),
)
# feature_encoder.mode <-> feat_extract_norm
NORMS = {"default": "group", "layer_norm": "layer"}
# transformers fields with the one value this project builds: written on export, checked on import.
_FIXED = {"hidden_act": "gelu", "feat_extract_activation": "gelu", "layer_norm_eps": 1e-5}
_ABSENT_ON_IMPORT = {"add_adapter": False, "adapter_attn_dim": None}


def config_to_hf(cfg: ModelConfig) -> Wav2Vec2Config:
    """The transformers config of the same architecture and (where it has one) recipe."""
    from transformers import Wav2Vec2Config

    if cfg.quantizer.depth != 1:
        raise ValueError(
            "transformers' quantizer has a single Linear for its logits; quantizer.depth "
            f"must be 1, got {cfg.quantizer.depth}"
        )
    if cfg.masking.mask_prob <= 0 and cfg.masking.channel_prob <= 0:
        # transformers only builds masked_spec_embed when some masking is on.
        raise ValueError(
            "transformers drops the mask embedding when mask_prob and channel_prob are 0"
        )
    final_dim = cfg.final_dim or cfg.transformer.embed_dim
    fields: dict[str, Any] = {theirs: copy.deepcopy(get_field(cfg, ours)) for ours, theirs, _ in FIELDS}
    return Wav2Vec2Config(
        architectures=["Wav2Vec2ForPreTraining"],
        **fields,
        **_FIXED,
        feat_extract_norm=NORMS[cfg.feature_encoder.mode],
        apply_spec_augment=True,
        mask_feature_min_masks=0,
        codevector_dim=cfg.quantizer.codebook_dim or final_dim,
        proj_codevector_dim=final_dim,
    )


def config_from_hf(hf_config: Any, *, template: ModelConfig | None = None) -> ModelConfig:
    """Our config from a transformers one (a `Wav2Vec2Config`). Fields transformers has no
    counterpart for come from `template` (default: the BASE recipe). Raises ValueError for
    architectures we do not have."""
    c = hf_config
    for name, expected in {**_FIXED, **_ABSENT_ON_IMPORT}.items():
        value = getattr(c, name, None)
        if value != expected:
            raise ValueError(f"transformers config has {name}={value!r}; only {expected!r} is supported")
    if c.feat_extract_norm not in NORMS.values():
        raise ValueError(f"unknown feat_extract_norm {c.feat_extract_norm!r}")

    cfg = copy.deepcopy(template) if template is not None else ModelConfig()
    for ours, theirs, kind in FIELDS:
        set_field(cfg, ours, kind(getattr(c, theirs)))
    cfg.feature_encoder.mode = {hf: ours for ours, hf in NORMS.items()}[c.feat_extract_norm]
    cfg.quantizer.depth = 1
    cfg.final_dim = c.proj_codevector_dim
    # 0 means "same as final_dim" here; keep the presets' 0 through a round trip.
    cfg.quantizer.codebook_dim = 0 if c.codevector_dim == c.proj_codevector_dim else c.codevector_dim
    return cfg


def ctc_config_to_hf(
    cfg: ModelConfig,
    *,
    vocab_size: int,
    final_dropout: float = 0.0,
    pad_token_id: int = 0,
    bos_token_id: int | None = None,
    eos_token_id: int | None = 2,
) -> Wav2Vec2Config:
    """The `Wav2Vec2ForCTC` config of our `Wav2Vec2Ctc(cfg, vocab_size=, final_dropout=)`.

    transformers' CTC blank is `pad_token_id`: index 0, our blank (`wav2vec2.data.labels`:
    0 <blank>, 1 <pad>, 2 </s>, 3 <unk>; hence no bos and eos 2). The loss is set to ours
    (fairseq's): summed over utterances, infinite losses zeroed. As `config_to_hf`, it
    raises when masking.mask_prob and channel_prob are both 0 (no mask embedding there).
    """
    hf = config_to_hf(cfg)
    hf.architectures = ["Wav2Vec2ForCTC"]
    hf.vocab_size = vocab_size
    hf.final_dropout = final_dropout
    hf.pad_token_id = pad_token_id
    hf.bos_token_id = bos_token_id
    hf.eos_token_id = eos_token_id
    hf.ctc_loss_reduction = "sum"
    hf.ctc_zero_infinity = True
    return hf
