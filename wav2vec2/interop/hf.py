"""Interop with transformers' `Wav2Vec2ForPreTraining` (verified equal to fairseq 0.12.2),
`Wav2Vec2Model` and `Wav2Vec2ForCTC`.

Configs, state dicts and whole models in both directions, so a checkpoint trained here can
be fine-tuned with transformers and a transformers checkpoint can be trained further here:
`load_hf_encoder` takes the encoder of any of the three from a local directory (what CTC
fine-tuning starts from), `ctc_*` convert our `Wav2Vec2Ctc` to and from `Wav2Vec2ForCTC`,
and `load_hf_ctc` / `export_hf_ctc` read and write whole `Wav2Vec2ForCTC` directories
(weights, tokenizer vocabulary, feature extractor) as a `Recognizer`; how the two
vocabularies map is written above `_NEVER_EMITTED_BIAS`.
transformers is an optional dependency (extras `dev`/`bench`): it is imported inside the
functions that need it, never at module level.

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
BASE recipe), so `config_from_hf(config_to_hf(cfg), template=cfg) == cfg`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from wav2vec2.config import ModelConfig
from wav2vec2.data.labels import BLANK, SPECIALS, WORD_BOUNDARY, Dictionary
from wav2vec2.interop.keymap import Table, compile_table, rename
from wav2vec2.model.wav2vec2 import Wav2Vec2Model

if TYPE_CHECKING:  # transformers is optional
    from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

    from wav2vec2.infer.recognizer import Recognizer
    from wav2vec2.model.ctc import Wav2Vec2Ctc

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# The one parameter mapping: (our key prefix, transformers key prefix). "#" stands for a block
# or layer index and must match the same number on both sides. A key is renamed by the first
# row whose prefix it starts with; a key no row matches is an error in either direction.
#
# Not a plain rename (handled in state_dict_to_hf / state_dict_from_hf):
# - post_extract_proj: fairseq (and we) drop the projection when conv dim C == model dim D;
#   transformers always has one. Export writes an identity, import requires an identity.
# - the positional conv's weight norm: both sides use torch.nn.utils.parametrizations
#   (original0 = gain g, (1, 1, k); original1 = direction v, (D, D/groups, k); dim=2). Old
#   transformers checkpoints store the same tensors as weight_g / weight_v: accepted on import.
# - quantizer codebook: the same (1, G*V, E) layout on both sides (group-major entries, so
#   view(G, V, E) gives codebook g, entry v), and weight_proj outputs G*V logits in that order.
# ---------------------------------------------------------------------------------------------
PARAM_MAP: tuple[tuple[str, str], ...] = (
    ("mask_emb", "wav2vec2.masked_spec_embed"),
    ("feature_encoder.blocks.#.conv.", "wav2vec2.feature_extractor.conv_layers.#.conv."),
    ("feature_encoder.blocks.#.norm.", "wav2vec2.feature_extractor.conv_layers.#.layer_norm."),
    ("layer_norm.", "wav2vec2.feature_projection.layer_norm."),
    ("post_extract_proj.", "wav2vec2.feature_projection.projection."),
    ("encoder.pos_conv.conv.", "wav2vec2.encoder.pos_conv_embed.conv."),
    ("encoder.layer_norm.", "wav2vec2.encoder.layer_norm."),
    ("encoder.layers.#.self_attn.", "wav2vec2.encoder.layers.#.attention."),
    ("encoder.layers.#.self_attn_layer_norm.", "wav2vec2.encoder.layers.#.layer_norm."),
    ("encoder.layers.#.fc1.", "wav2vec2.encoder.layers.#.feed_forward.intermediate_dense."),
    ("encoder.layers.#.fc2.", "wav2vec2.encoder.layers.#.feed_forward.output_dense."),
    ("encoder.layers.#.final_layer_norm.", "wav2vec2.encoder.layers.#.final_layer_norm."),
    ("quantizer.codebook", "quantizer.codevectors"),
    ("quantizer.weight_proj.", "quantizer.weight_proj."),
    ("project_q.", "project_q."),
    ("final_proj.", "project_hid."),
)

# Pre-parametrization weight-norm names in older transformers checkpoints.
_LEGACY_HF_SUFFIXES = {
    ".conv.weight_g": ".conv.parametrizations.weight.original0",
    ".conv.weight_v": ".conv.parametrizations.weight.original1",
}

_PROJ_HF = "wav2vec2.feature_projection.projection."
_MASK_EMB_HF = "wav2vec2.masked_spec_embed"

# Wav2Vec2Ctc's output layer <-> Wav2Vec2ForCTC's. The encoder under both models' `wav2vec2.`
# is renamed by PARAM_MAP; this row is only the head, kept apart so that PARAM_MAP (the
# pretraining model's keys) still rejects an `lm_head`.
CTC_HEAD_MAP: tuple[tuple[str, str], ...] = (("proj.", "lm_head."),)
_CTC_ENCODER = "wav2vec2."  # the encoder's prefix on both sides


_TO_HF = compile_table(PARAM_MAP)
_FROM_HF = compile_table([(hf, ours) for ours, hf in PARAM_MAP])
_CTC_HEAD_TO_HF = compile_table(CTC_HEAD_MAP)
_CTC_HEAD_FROM_HF = compile_table([(hf, ours) for ours, hf in CTC_HEAD_MAP])


def _rename(key: str, table: Table) -> str:
    return rename(key, table, where="PARAM_MAP in wav2vec2/interop/hf.py")


def _conv_and_model_dims(cfg: ModelConfig) -> tuple[int, int]:
    return cfg.feature_encoder.conv_dims[-1], cfg.transformer.embed_dim


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------
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
    t, q = cfg.transformer, cfg.quantizer
    final_dim = cfg.final_dim or t.embed_dim
    return Wav2Vec2Config(
        architectures=["Wav2Vec2ForPreTraining"],
        # feature encoder
        conv_dim=list(cfg.feature_encoder.conv_dims),
        conv_kernel=list(cfg.feature_encoder.conv_kernels),
        conv_stride=list(cfg.feature_encoder.conv_strides),
        conv_bias=cfg.feature_encoder.conv_bias,
        feat_extract_norm={"default": "group", "layer_norm": "layer"}[cfg.feature_encoder.mode],
        feat_extract_activation="gelu",
        # transformer
        hidden_size=t.embed_dim,
        num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads,
        intermediate_size=t.ffn_dim,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        do_stable_layer_norm=t.layer_norm_first,
        num_conv_pos_embeddings=t.conv_pos,
        num_conv_pos_embedding_groups=t.conv_pos_groups,
        hidden_dropout=t.dropout,
        attention_dropout=t.attention_dropout,
        activation_dropout=t.activation_dropout,
        layerdrop=t.layerdrop,
        feat_proj_dropout=cfg.dropout_input,
        feat_quantizer_dropout=cfg.dropout_features,
        # masking
        apply_spec_augment=True,
        mask_time_prob=cfg.masking.mask_prob,
        mask_time_length=cfg.masking.mask_len,
        mask_time_min_masks=cfg.masking.min_masks,
        mask_feature_prob=cfg.masking.channel_prob,
        mask_feature_length=cfg.masking.channel_len,
        mask_feature_min_masks=0,
        # quantizer, contrastive task, loss
        num_codevector_groups=q.num_codebooks,
        num_codevectors_per_group=q.num_entries,
        codevector_dim=q.codebook_dim or final_dim,
        proj_codevector_dim=final_dim,
        num_negatives=cfg.num_negatives,
        contrastive_logits_temperature=cfg.logit_temp,
        diversity_loss_weight=cfg.loss.diversity_weight,
    )


def config_from_hf(
    hf_config: Wav2Vec2Config, *, template: ModelConfig | None = None
) -> ModelConfig:
    """Our config from a transformers one. Fields transformers has no counterpart for come from
    `template` (default: the BASE recipe). Raises ValueError for architectures we do not have."""
    c = hf_config
    unsupported = {
        "hidden_act": (c.hidden_act, "gelu"),
        "feat_extract_activation": (c.feat_extract_activation, "gelu"),
        "layer_norm_eps": (c.layer_norm_eps, 1e-5),
        "add_adapter": (c.add_adapter, False),
        "adapter_attn_dim": (getattr(c, "adapter_attn_dim", None), None),
    }
    for name, (value, expected) in unsupported.items():
        if value != expected:
            raise ValueError(
                f"transformers config has {name}={value!r}; only {expected!r} is supported"
            )
    if c.feat_extract_norm not in ("group", "layer"):
        raise ValueError(f"unknown feat_extract_norm {c.feat_extract_norm!r}")

    cfg = copy.deepcopy(template) if template is not None else ModelConfig()
    fe, t, m, q = cfg.feature_encoder, cfg.transformer, cfg.masking, cfg.quantizer
    fe.conv_dims = list(c.conv_dim)
    fe.conv_kernels = list(c.conv_kernel)
    fe.conv_strides = list(c.conv_stride)
    fe.conv_bias = bool(c.conv_bias)
    fe.mode = {"group": "default", "layer": "layer_norm"}[c.feat_extract_norm]

    t.embed_dim = c.hidden_size
    t.num_layers = c.num_hidden_layers
    t.num_heads = c.num_attention_heads
    t.ffn_dim = c.intermediate_size
    t.layer_norm_first = bool(c.do_stable_layer_norm)
    t.conv_pos = c.num_conv_pos_embeddings
    t.conv_pos_groups = c.num_conv_pos_embedding_groups
    t.dropout = float(c.hidden_dropout)
    t.attention_dropout = float(c.attention_dropout)
    t.activation_dropout = float(c.activation_dropout)
    t.layerdrop = float(c.layerdrop)
    cfg.dropout_input = float(c.feat_proj_dropout)
    cfg.dropout_features = float(c.feat_quantizer_dropout)

    m.mask_prob = float(c.mask_time_prob)
    m.mask_len = c.mask_time_length
    m.min_masks = c.mask_time_min_masks
    m.channel_prob = float(c.mask_feature_prob)
    m.channel_len = c.mask_feature_length

    q.num_codebooks = c.num_codevector_groups
    q.num_entries = c.num_codevectors_per_group
    q.depth = 1
    cfg.final_dim = c.proj_codevector_dim
    # 0 means "same as final_dim" here; keep the presets' 0 through a round trip.
    q.codebook_dim = 0 if c.codevector_dim == c.proj_codevector_dim else c.codevector_dim
    cfg.num_negatives = c.num_negatives
    cfg.logit_temp = float(c.contrastive_logits_temperature)
    cfg.loss.diversity_weight = float(c.diversity_loss_weight)
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


# ---------------------------------------------------------------------------------------------
# State dicts
# ---------------------------------------------------------------------------------------------
def state_dict_to_hf(state_dict: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Our state dict -> `Wav2Vec2ForPreTraining`'s (same tensors, renamed per PARAM_MAP)."""
    out = {_rename(key, _TO_HF): value for key, value in state_dict.items()}
    C, D = _conv_and_model_dims(cfg)
    if C == D:
        # No post_extract_proj here; transformers always projects. The identity is exact.
        ref = state_dict["layer_norm.weight"]
        out[_PROJ_HF + "weight"] = torch.eye(D, dtype=ref.dtype, device=ref.device)
        out[_PROJ_HF + "bias"] = torch.zeros(D, dtype=ref.dtype, device=ref.device)
    return out


def state_dict_from_hf(hf_state_dict: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """`Wav2Vec2ForPreTraining`'s state dict (new or legacy weight-norm names) -> ours."""
    hf = {}
    for key, value in hf_state_dict.items():
        for old, new in _LEGACY_HF_SUFFIXES.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
        hf[key] = value
    if "wav2vec2.masked_spec_embed" not in hf:
        raise ValueError(
            "the transformers state dict has no masked_spec_embed (it is only built when "
            "mask_time_prob or mask_feature_prob > 0); a pretraining model needs it"
        )
    C, D = _conv_and_model_dims(cfg)
    if C == D:
        weight, bias = hf.pop(_PROJ_HF + "weight"), hf.pop(_PROJ_HF + "bias")
        if not (torch.equal(weight, torch.eye(D, dtype=weight.dtype, device=weight.device))
                and not bias.any()):
            raise ValueError(
                f"conv dim == model dim ({D}), so our model has no post_extract_proj, but the "
                "transformers feature projection is not the identity; it cannot be dropped"
            )
    return {_rename(key, _FROM_HF): value for key, value in hf.items()}


def _with_mask_emb(hf_state_dict: dict[str, Tensor], cfg: ModelConfig, *, source: str) -> dict[str, Tensor]:
    """`hf_state_dict` (transformers names), with a fresh mask embedding if it has none.

    transformers only builds `masked_spec_embed` when mask_time_prob or mask_feature_prob is
    > 0, so an encoder saved with masking off has none, while ours always has `mask_emb`
    (fine-tuning masks). Rather than refusing such a checkpoint, draw the embedding as
    fairseq, transformers and our `init_weights` initialise it, U[0, 1), from a fixed seed
    (loading stays deterministic), and warn: it is untrained, which matters only if the
    model is then run with masking (fine-tuning learns it from there).
    """
    if _MASK_EMB_HF in hf_state_dict:
        return hf_state_dict
    log.warning(
        "%s has no masked_spec_embed (transformers only builds it when mask_time_prob or "
        "mask_feature_prob > 0): mask_emb is initialised U[0, 1), untrained; it only matters "
        "when masking is on, and fine-tuning with masking learns it from scratch", source,
    )
    ref = next(iter(hf_state_dict.values()))
    mask_emb = torch.rand(cfg.transformer.embed_dim, generator=torch.Generator().manual_seed(0))
    return {**hf_state_dict, _MASK_EMB_HF: mask_emb.to(dtype=ref.dtype, device=ref.device)}


def _rename_ctc_head(key: str, table: Table, what: str) -> str:
    try:
        return _rename(key, table)
    except ValueError:
        raise ValueError(
            f"unexpected key {key!r} in a {what} state dict: only the encoder (wav2vec2.*) and "
            "the output layer (see CTC_HEAD_MAP in wav2vec2/interop/hf.py) are mapped"
        ) from None


def ctc_state_dict_to_hf(state_dict: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Our `Wav2Vec2Ctc` state dict -> `Wav2Vec2ForCTC`'s: the encoder through PARAM_MAP
    (`state_dict_to_hf`, identity projection when C == D included), `proj` -> `lm_head`."""
    encoder, head = {}, {}
    for key, value in state_dict.items():
        if key.startswith(_CTC_ENCODER):
            encoder[key[len(_CTC_ENCODER):]] = value
        else:
            head[_rename_ctc_head(key, _CTC_HEAD_TO_HF, "Wav2Vec2Ctc")] = value
    out = state_dict_to_hf(encoder, cfg)
    stray = sorted(key for key in out if not key.startswith(_CTC_ENCODER))
    if stray:  # quantizer, project_q, final_proj: Wav2Vec2ForCTC has none
        raise ValueError(
            f"the Wav2Vec2Ctc state dict holds pretraining modules ({', '.join(stray)}); "
            "remove_pretraining_modules() first"
        )
    out.update(head)
    return out


def ctc_state_dict_from_hf(hf_state_dict: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """`Wav2Vec2ForCTC`'s state dict -> our `Wav2Vec2Ctc`'s (inverse of `ctc_state_dict_to_hf`).
    A missing `masked_spec_embed` is drawn fresh, with a warning (see `_with_mask_emb`)."""
    encoder, head = {}, {}
    for key, value in hf_state_dict.items():
        if key.startswith(_CTC_ENCODER):
            encoder[key] = value
        else:
            head[_rename_ctc_head(key, _CTC_HEAD_FROM_HF, "Wav2Vec2ForCTC")] = value
    encoder = _with_mask_emb(encoder, cfg, source="the Wav2Vec2ForCTC state dict")
    out = {_CTC_ENCODER + key: value for key, value in state_dict_from_hf(encoder, cfg).items()}
    out.update(head)
    return out


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
def _from_pretrained(model_class, path: Path, hf_config):
    """`model_class.from_pretrained(path)`, offline, a .bin read with torch.load(weights_only=True);
    a .bin that would run code is refused with `UnsafeCheckpointError`, as every loader here does."""
    import pickle

    from wav2vec2.files import UnsafeCheckpointError

    try:
        return model_class.from_pretrained(path, config=hf_config, local_files_only=True, weights_only=True,
                                           output_loading_info=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refused to load {path}: its PyTorch weights file asks to build or call something other than "
            f"tensors, which a checkpoint holds only if someone put code in it ({str(err).splitlines()[-1][:200]}). "
            "If you trust where it came from, load it once with transformers and save_pretrained it as safetensors."
        ) from None


def _checkpoint_tensors(model_class, path: Path, hf_config, *, may_lack: str, hint: str = "") -> dict[str, Tensor]:
    """The tensors a local directory holds, read as `model_class` (offline, weights-only).
    transformers initialises what a checkpoint lacks; here the one weight it `may_lack` (the
    mask embedding, absent when saved with masking off) is left out, anything else missing
    is an error naming it."""
    hf_model, info = _from_pretrained(model_class, path, hf_config)
    missing = set(info["missing_keys"])
    if missing - {may_lack}:
        raise ValueError(f"{path}: the checkpoint lacks {sorted(missing - {may_lack})}{hint}")
    return {key: value.detach() for key, value in hf_model.state_dict().items() if key not in missing}


def load_hf_pretraining(
    path_or_model: str | Path | Wav2Vec2ForPreTraining, *, template: ModelConfig | None = None
) -> Wav2Vec2Model:
    """Our model from a `Wav2Vec2ForPreTraining` instance or a local save_pretrained directory.

    Local paths only: nothing is downloaded (`local_files_only=True`), and a .bin is read
    with torch's weights-only unpickler. `template` supplies the
    fields transformers has no counterpart for (see the module docstring).
    """
    if isinstance(path_or_model, (str, Path)):
        path = Path(path_or_model)
        if not path.is_dir():
            raise FileNotFoundError(
                f"{path} is not a local directory (hub downloads are not supported)"
            )
        from transformers import Wav2Vec2Config as HfConfig
        from transformers import Wav2Vec2ForPreTraining

        hf_model, _ = _from_pretrained(Wav2Vec2ForPreTraining, path,
                                       HfConfig.from_pretrained(path, local_files_only=True))
    else:
        hf_model = path_or_model
    cfg = config_from_hf(hf_model.config, template=template)
    model = Wav2Vec2Model(cfg)
    model.load_state_dict(state_dict_from_hf(hf_model.state_dict(), cfg), strict=True)
    return model


def load_hf_encoder(
    path: str | Path, *, template: ModelConfig | None = None
) -> tuple[ModelConfig, dict[str, Tensor], bool | None]:
    """The encoder of a local transformers wav2vec 2.0 directory, for fine-tuning.

    `path` is a `save_pretrained` directory of a `Wav2Vec2ForPreTraining`, `Wav2Vec2Model`
    or `Wav2Vec2ForCTC` (heads are dropped). Returns (our config of that architecture, with
    the fields transformers lacks from `template` as in `config_from_hf`; a state dict that
    `Wav2Vec2Model(cfg)` loads with strict=True after `remove_pretraining_modules()`; the
    `do_normalize` of the directory's feature extractor (preprocessor_config.json, or
    processor_config.json as transformers 5 writes it), or None without one).

    Weights are read by transformers' `from_pretrained(local_files_only=True,
    weights_only=True)`: nothing is downloaded, no pickled code runs. A checkpoint saved with masking off has no mask embedding: a fresh U[0, 1)
    one is returned, with a warning (`_with_mask_emb`). Any other weight the checkpoint lacks
    is an error (transformers would silently initialise it).
    """
    path = Path(path)
    _check_hf_dir(path)
    try:
        from transformers import Wav2Vec2Config as HfConfig
        from transformers import Wav2Vec2Model as HfModel
    except ImportError as e:
        raise ImportError(
            f"loading the transformers checkpoint {path} needs transformers: pip install transformers"
        ) from e

    hf_config = HfConfig.from_pretrained(path, local_files_only=True)
    try:
        cfg = config_from_hf(hf_config, template=template)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    own = _checkpoint_tensors(HfModel, path, hf_config, may_lack="masked_spec_embed")
    hf_state = {_CTC_ENCODER + key: value for key, value in own.items()}
    hf_state = _with_mask_emb(hf_state, cfg, source=str(path))
    try:
        state = state_dict_from_hf(hf_state, cfg)
    except ValueError as e:  # a non-identity projection where C == D
        raise ValueError(f"{path}: {e}") from e

    do_normalize = None
    settings = _read_feature_extractor(path)
    if settings is not None:
        # Absent from the file means Wav2Vec2FeatureExtractor's default, True.
        do_normalize = bool(settings[0].get("do_normalize", True))
    return cfg, state, do_normalize


def export_hf(model: Wav2Vec2Model, out_dir: str | Path, *, normalize: bool | None = None,
              sample_rate: int = 16000) -> Path:
    """Write `config.json` and `model.safetensors` that `Wav2Vec2ForPreTraining.from_pretrained`
    loads with no missing or unexpected keys, and, given `normalize`, the feature extractor's
    preprocessor_config.json (as `export_hf_ctc` writes it). Returns the directory."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_config = config_to_hf(model.cfg)
    hf_config.save_pretrained(out)
    tensors = {
        key: value.detach().cpu().contiguous()
        for key, value in state_dict_to_hf(model.state_dict(), model.cfg).items()
    }
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    if normalize is not None:
        from transformers import Wav2Vec2FeatureExtractor

        Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=sample_rate, padding_value=0.0, do_normalize=bool(normalize),
            return_attention_mask=model.cfg.feature_encoder.mode == "layer_norm",
        ).save_pretrained(out)
    return out


def negatives_to_hf(time_mask: Tensor, negative_indices: Tensor) -> Tensor:
    """Our negatives -> transformers' `sampled_negative_indices`.

    Ours index each utterance's M masked frames in time order; transformers' index the
    flattened (B*T) frames of the batch and are read at every frame (unmasked rows are
    ignored by its loss; they are set to the frame itself here).

    Shape: time_mask (B, T) bool, negative_indices (B, M, K) -> (B, T, K) long.
    """
    B, T = time_mask.shape
    M, K = negative_indices.shape[1:]
    # Masked frames in time order, as the model orders them: a stable sort puts True first.
    positions = time_mask.to(torch.int8).sort(dim=1, descending=True, stable=True).indices
    positions = positions[:, :M]  # (B, M)
    frames = torch.gather(positions, 1, negative_indices.reshape(B, M * K)).view(B, M, K)
    flat = frames + (torch.arange(B, device=time_mask.device) * T).view(B, 1, 1)  # into (B*T)
    out = (torch.arange(B * T, device=time_mask.device).view(B, T, 1)).expand(B, T, K).clone()
    out[time_mask] = flat.reshape(B * M, K)
    return out


# ---------------------------------------------------------------------------------------------
# Wav2Vec2ForCTC directories: a whole recogniser (weights, vocabulary, audio settings)
# ---------------------------------------------------------------------------------------------
# Mapping transformers' vocabulary onto ours (`load_hf_ctc`). Ours is fixed: 0 <blank>,
# 1 <pad>, 2 </s>, 3 <unk>, then the letters (`wav2vec2.data.labels`). Theirs is whatever
# vocab.json says (plus the tokenizer's added tokens), with the CTC blank at
# config.pad_token_id. Each of our indices takes one of their lm_head rows:
#
#   our 0 <blank> <- their blank (config.pad_token_id, which must be the tokenizer's pad_token:
#                    transformers' decoding drops that token, its CTC loss that row)
#   our 1 <pad>   <- their bos_token (default "<s>"): never a CTC target on either side.
#                    fairseq's index 1 is its <pad>, which transformers' conversion renamed <s>
#   our 2 </s>    <- their eos_token (default "</s>")
#   our 3 <unk>   <- their unk_token (default "<unk>")
#   our 4...      <- every other row, in their index order; their word_delimiter_token
#                    (tokenizer_config.json, default "|") becomes our "|"
#
# An index of ours that they lack (say they have no "<s>") gets weight 0 and bias -1e4: it
# is never emitted. So a fairseq-converted vocabulary ({"<pad>": 0, "<s>": 1, "</s>": 2,
# "<unk>": 3, "|": 4, "E": 5, ...}, pad_token_id 0), which is also what `export_hf_ctc` writes,
# maps row for row and the logits are transformers' exactly; any other order is permuted.
_NEVER_EMITTED_BIAS = -1e4
_HF_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")  # what export writes for our indices 0..3


def _map_vocab(
    id_to_token: dict[int, str],
    num_rows: int,
    *,
    blank: int,
    bos: str | None,
    eos: str | None,
    unk: str | None,
    delimiter: str | None,
    where: str,
) -> tuple[Dictionary, list[int | None]]:
    """Our Dictionary for transformers' rows 0..num_rows-1 (`id_to_token`), and for each of our
    indices the row it takes (None: a special they lack). The rule is above `_NEVER_EMITTED_BIAS`.
    Errors name `where` (the vocabulary's file)."""
    missing = [i for i in range(num_rows) if i not in id_to_token]
    if missing:
        raise ValueError(
            f"{where}: no token for lm_head row(s) {missing[:10]} of {num_rows}: the vocabulary does "
            "not match the model's output layer"
        )
    if not 0 <= blank < num_rows:
        raise ValueError(f"{where}: the CTC blank (pad_token_id) {blank} is not one of the {num_rows} rows")
    token_to_row = {id_to_token[i]: i for i in range(num_rows)}
    rows: list[int | None] = [blank]
    for role in (bos, eos, unk):  # our 1 <pad>, 2 </s>, 3 <unk>
        row = token_to_row.get(role) if role is not None else None
        rows.append(None if row in rows else row)  # a token plays one role (the blank first)
    symbols = []
    for i in range(num_rows):
        if i in rows:
            continue
        token = id_to_token[i]
        if token == delimiter:
            token = WORD_BOUNDARY
        elif token == WORD_BOUNDARY and delimiter is not None:
            raise ValueError(
                f"{where}: the word delimiter is {delimiter!r} but '|' is also a token; '|' is our "
                "word boundary, so the two cannot be told apart"
            )
        symbols.append(token)
        rows.append(i)
    dictionary = Dictionary(symbols, [1] * len(symbols), where=where)
    return dictionary, rows


def _remap_head(weight: Tensor, bias: Tensor, rows: list[int | None]) -> tuple[Tensor, Tensor]:
    """Our output layer from transformers' lm_head: our row j is their row rows[j], or, where
    None, weight 0 and bias -1e4 (never emitted). Shape: weight (R, D), bias (R,) -> (V, D), (V,)."""
    new_weight = weight.new_zeros(len(rows), weight.shape[1])
    new_bias = bias.new_full((len(rows),), _NEVER_EMITTED_BIAS)
    for j, i in enumerate(rows):
        if i is not None:
            new_weight[j] = weight[i]
            new_bias[j] = bias[i]
    return new_weight, new_bias


def _read_feature_extractor(path: Path) -> tuple[dict, Path] | None:
    """The Wav2Vec2FeatureExtractor settings of a directory, and the file they are in:
    preprocessor_config.json, or processor_config.json's "feature_extractor" (transformers 5's
    `Wav2Vec2Processor.save_pretrained` writes only that). None without either."""
    preprocessor = path / "preprocessor_config.json"
    if preprocessor.is_file():
        return json.loads(preprocessor.read_text()), preprocessor
    processor = path / "processor_config.json"
    if processor.is_file():
        settings = json.loads(processor.read_text()).get("feature_extractor")
        if isinstance(settings, dict):
            return settings, processor
    return None


def _word_delimiter(path: Path) -> str | None:
    """The tokenizer's word_delimiter_token as its files say (tokenizer_config.json, else
    special_tokens_map.json; default "|"). Read here because transformers 5's
    `Wav2Vec2CTCTokenizer.from_pretrained` drops a saved one (it files every unknown `*_token`
    key under model_specific_special_tokens) and falls back to "|"."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        file = path / name
        if file.is_file():
            settings = json.loads(file.read_text(encoding="utf-8"))
            if "word_delimiter_token" in settings:
                token = settings["word_delimiter_token"]
                return token.get("content") if isinstance(token, dict) else token  # an AddedToken's dict
    return WORD_BOUNDARY


def _check_hf_dir(path: Path) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a local directory (hub downloads are not supported)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a transformers save_pretrained directory")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "wav2vec2":
        raise ValueError(f"{config_file}: a {model_type!r} model; only 'wav2vec2' can be loaded")


def load_hf_ctc(path: str | Path, *, device: str | torch.device = "cpu",
                template: ModelConfig | None = None) -> Recognizer:
    """A Recognizer from a local transformers `Wav2Vec2ForCTC` directory.

    Reads config.json, the weights (model.safetensors, or pytorch_model.bin through
    `torch.load(weights_only=True)`; sharded too), the `Wav2Vec2CTCTokenizer` files (vocab.json,
    tokenizer_config.json and its added tokens) and the feature extractor's do_normalize and
    sampling_rate (preprocessor_config.json or processor_config.json; without either,
    Wav2Vec2FeatureExtractor's defaults, True and 16 kHz, with a warning). Nothing is
    downloaded. Their vocabulary is mapped onto ours by the rule above `_NEVER_EMITTED_BIAS`:
    row for row for fairseq-converted models and our own exports, permuted otherwise.

    Text comes out as ours (`Dictionary.words`), which differs from transformers' decoding
    only where the model emits a special token (they print it, we print `<unk>` only) or
    two word delimiters with a blank between them (they print two spaces, we one); a
    tokenizer with do_lower_case gives our text in the vocabulary's case.
    """
    from wav2vec2.infer.recognizer import build_recognizer

    path = Path(path)
    _check_hf_dir(path)
    vocab_file = path / "vocab.json"
    if not vocab_file.is_file():
        raise FileNotFoundError(
            f"{vocab_file} not found: a Wav2Vec2ForCTC directory needs its tokenizer's vocabulary "
            "(Wav2Vec2Processor.save_pretrained or Wav2Vec2CTCTokenizer.save_pretrained writes it)"
        )
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
        raise ValueError(f"{vocab_file}: expected a flat {{token: id}} object (multi-lingual, nested "
                         "vocabularies such as MMS's are not supported)")
    try:
        from transformers import Wav2Vec2Config as HfConfig
        from transformers import Wav2Vec2CTCTokenizer
        from transformers import Wav2Vec2ForCTC as HfCtc
    except ImportError as e:
        raise ImportError(f"loading the transformers model {path} needs transformers: pip install transformers") from e

    hf_config = HfConfig.from_pretrained(path, local_files_only=True)
    if hf_config.pad_token_id is None:
        raise ValueError(f"{path / 'config.json'}: no pad_token_id, which is Wav2Vec2ForCTC's CTC blank")
    try:
        cfg = config_from_hf(hf_config, template=template)
    except ValueError as e:
        raise ValueError(f"{path / 'config.json'}: {e}") from e
    hf_state = _checkpoint_tensors(HfCtc, path, hf_config, may_lack="wav2vec2.masked_spec_embed",
                                   hint=" (a Wav2Vec2ForCTC directory has the encoder and lm_head)")
    try:
        state = ctc_state_dict_from_hf(hf_state, cfg)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e

    tokenizer = Wav2Vec2CTCTokenizer.from_pretrained(path, local_files_only=True)
    # Row i's token as transformers decodes it: vocab.json first, then the added tokens.
    id_to_token = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
    id_to_token.update({i: t for t, i in vocab.items()})
    num_rows = state["proj.weight"].shape[0]
    if max(vocab.values(), default=-1) >= num_rows:
        raise ValueError(f"{vocab_file}: {len(vocab)} tokens (ids up to {max(vocab.values())}) but the lm_head "
                         f"in {path} has {num_rows} rows: not this model's vocabulary")
    blank = hf_config.pad_token_id
    if id_to_token.get(blank) != tokenizer.pad_token:
        raise ValueError(
            f"{path / 'config.json'}: pad_token_id {blank} (the CTC blank) is {id_to_token.get(blank)!r} in "
            f"{vocab_file}, but the tokenizer's pad_token (what its decoding drops) is {tokenizer.pad_token!r}"
        )
    dictionary, rows = _map_vocab(
        id_to_token, num_rows, blank=blank, bos=tokenizer.bos_token, eos=tokenizer.eos_token,
        unk=tokenizer.unk_token, delimiter=_word_delimiter(path), where=str(vocab_file),
    )
    state["proj.weight"], state["proj.bias"] = _remap_head(state["proj.weight"], state["proj.bias"], rows)

    settings = _read_feature_extractor(path)
    if settings is None:
        log.warning("%s has no preprocessor_config.json: assuming Wav2Vec2FeatureExtractor's defaults "
                    "(do_normalize=True, 16 kHz)", path)
        settings, settings_file = {}, path / "preprocessor_config.json"
    else:
        settings, settings_file = settings
    if settings.get("feature_size", 1) != 1:
        raise ValueError(f"{settings_file}: feature_size {settings['feature_size']}; a waveform model needs 1")
    return build_recognizer(
        cfg, state, dictionary, normalize=bool(settings.get("do_normalize", True)),
        sample_rate=int(settings.get("sampling_rate", 16000)), source=str(path), device=device,
    )


def export_hf_ctc(
    recognizer_or_model: Recognizer | Wav2Vec2Ctc,
    out_dir: str | Path,
    *,
    dictionary: Dictionary | None = None,
    normalize: bool | None = None,
    sample_rate: int | None = None,
) -> Path:
    """Write a directory that transformers loads offline as a whole recogniser:
    `Wav2Vec2ForCTC.from_pretrained`, `Wav2Vec2Processor.from_pretrained` and
    `pipeline("automatic-speech-recognition", model=str(out_dir))`. Returns `out_dir`.

    A Recognizer brings its dictionary, normalisation and sample rate; a bare `Wav2Vec2Ctc`
    needs `dictionary` and `normalize` (sample_rate defaults to 16 kHz). Files:

    - config.json: `ctc_config_to_hf` (pad_token_id 0: our blank is their CTC blank);
    - model.safetensors: `ctc_state_dict_to_hf`, the output layer row for row;
    - vocab.json: our symbols at our indices, index 0..3 written "<pad>", "<s>", "</s>",
      "<unk>" (transformers' names in a fairseq-converted model: their pad is the blank);
    - tokenizer_config.json, special_tokens_map.json: a Wav2Vec2CTCTokenizer with "|" as the
      word delimiter and no clean-up of spaces;
    - preprocessor_config.json: a Wav2Vec2FeatureExtractor (1 feature, `sample_rate`, padding
      0.0, do_normalize = `normalize`; return_attention_mask only for layer-norm encoders, as
      transformers sets it: the group-norm encoder is trained on unpadded batches, and padding
      it changes its output whatever the mask). Its do_normalize uses a variance eps of 1e-7
      where we use F.layer_norm's 1e-5: a relative difference of ~1e-5/var in the waveform.

    Written to a temporary directory beside `out_dir` and renamed into place, so a failure
    leaves nothing half-written; `out_dir` must not exist or be empty.
    """
    from safetensors.torch import save_file
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor

    from wav2vec2.infer.recognizer import Recognizer

    if isinstance(recognizer_or_model, Recognizer):
        if dictionary is not None or normalize is not None:
            raise ValueError("a Recognizer brings its own dictionary and normalize; pass them only with a bare model")
        model, dictionary = recognizer_or_model.model, recognizer_or_model.dictionary
        normalize = recognizer_or_model.normalize
        sample_rate = sample_rate or recognizer_or_model.sample_rate
    else:
        model = recognizer_or_model
        if dictionary is None or normalize is None:
            raise ValueError("exporting a bare Wav2Vec2Ctc needs its dictionary and normalize (how its audio "
                             "was prepared in training)")
    sample_rate = sample_rate or 16000
    if model.blank != BLANK:
        raise ValueError(f"the model's CTC blank is {model.blank}; transformers' must be our index {BLANK}")
    num_rows = model.proj.out_features
    if num_rows != len(dictionary):
        raise ValueError(f"the model has {num_rows} outputs but the dictionary {len(dictionary)} symbols")
    taken = set(_HF_SPECIALS) & set(dictionary.symbols[len(SPECIALS):])
    if taken:
        raise ValueError(f"dictionary symbol(s) {sorted(taken)} collide with the names transformers' tokenizer "
                         f"gives our specials ({', '.join(_HF_SPECIALS)})")
    vocab = {token: i for i, token in enumerate((*_HF_SPECIALS, *dictionary.symbols[len(SPECIALS):]))}

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty directory; export to a new one")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        cfg = model.cfg
        hf_config = ctc_config_to_hf(cfg, vocab_size=num_rows, final_dropout=model.final_dropout.p)
        hf_config.save_pretrained(tmp)
        tensors = {key: value.detach().cpu().contiguous()
                   for key, value in ctc_state_dict_to_hf(model.state_dict(), cfg).items()}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})

        (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=2), encoding="utf-8")
        specials = dict(zip(("pad_token", "bos_token", "eos_token", "unk_token"), _HF_SPECIALS))
        tokenizer = Wav2Vec2CTCTokenizer(
            str(tmp / "vocab.json"), **specials, word_delimiter_token=WORD_BOUNDARY, do_lower_case=False,
            clean_up_tokenization_spaces=False,  # it would glue a lone "'" to its neighbours
        )
        tokenizer.save_pretrained(tmp)
        # transformers 5 no longer writes it; 4.x reads the special tokens from it.
        (tmp / "special_tokens_map.json").write_text(
            json.dumps({**specials, "word_delimiter_token": WORD_BOUNDARY}, indent=2))
        Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=sample_rate, padding_value=0.0, do_normalize=bool(normalize),
            return_attention_mask=cfg.feature_encoder.mode == "layer_norm",
        ).save_pretrained(tmp)
        os.rename(tmp, out)  # replaces an empty out_dir; atomic on one filesystem
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
