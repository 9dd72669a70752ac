"""transformers' parameter names and layouts for this project's: one table (`PARAM_MAP`),
used in both directions, for `Wav2Vec2ForPreTraining` / `Wav2Vec2Model` (the encoder under
`wav2vec2.`) and `Wav2Vec2ForCTC` (+ `lm_head`), and our negatives as transformers'
`sampled_negative_indices`. transformers is not imported here.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from wav2vec2.config import ModelConfig
from wav2vec2.interop.keymap import Table, compile_table, rename

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
CTC_ENCODER = "wav2vec2."  # the encoder's prefix on both sides


_TO_HF = compile_table(PARAM_MAP)
_FROM_HF = compile_table([(hf, ours) for ours, hf in PARAM_MAP])
_CTC_HEAD_TO_HF = compile_table(CTC_HEAD_MAP)
_CTC_HEAD_FROM_HF = compile_table([(hf, ours) for ours, hf in CTC_HEAD_MAP])


def _rename(key: str, table: Table) -> str:
    return rename(key, table, where="PARAM_MAP in wav2vec2/interop/hf/names.py")


def _conv_and_model_dims(cfg: ModelConfig) -> tuple[int, int]:
    return cfg.feature_encoder.conv_dims[-1], cfg.transformer.embed_dim



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


def with_mask_emb(hf_state_dict: dict[str, Tensor], cfg: ModelConfig, *, source: str) -> dict[str, Tensor]:
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
            "the output layer (see CTC_HEAD_MAP in wav2vec2/interop/hf/names.py) are mapped"
        ) from None


def ctc_state_dict_to_hf(state_dict: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Our `Wav2Vec2Ctc` state dict -> `Wav2Vec2ForCTC`'s: the encoder through PARAM_MAP
    (`state_dict_to_hf`, identity projection when C == D included), `proj` -> `lm_head`."""
    encoder, head = {}, {}
    for key, value in state_dict.items():
        if key.startswith(CTC_ENCODER):
            encoder[key[len(CTC_ENCODER):]] = value
        else:
            head[_rename_ctc_head(key, _CTC_HEAD_TO_HF, "Wav2Vec2Ctc")] = value
    out = state_dict_to_hf(encoder, cfg)
    stray = sorted(key for key in out if not key.startswith(CTC_ENCODER))
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
        if key.startswith(CTC_ENCODER):
            encoder[key] = value
        else:
            head[_rename_ctc_head(key, _CTC_HEAD_FROM_HF, "Wav2Vec2ForCTC")] = value
    encoder = with_mask_emb(encoder, cfg, source="the Wav2Vec2ForCTC state dict")
    out = {CTC_ENCODER + key: value for key, value in state_dict_from_hf(encoder, cfg).items()}
    out.update(head)
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
