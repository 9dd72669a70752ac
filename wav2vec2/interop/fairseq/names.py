"""fairseq's parameter names for this project's: one table (`PARAM_MAP`), used in both
directions, for `Wav2Vec2Model` (pretraining) and `Wav2VecCtc` (CTC fine-tuned), fairseq 0.12
layout. fairseq is never imported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from wav2vec2.config import ModelConfig
from wav2vec2.interop.keymap import Table, compile_table, rename
from wav2vec2.interop.loaded import PRETRAINING_MODULES

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

HEADS = PRETRAINING_MODULES  # fairseq's remove_pretraining_modules() drops the same three
_NEW_WEIGHT_NORM = {
    "encoder.pos_conv.0.parametrizations.weight.original0": "encoder.pos_conv.0.weight_g",
    "encoder.pos_conv.0.parametrizations.weight.original1": "encoder.pos_conv.0.weight_v",
}


def _table(cfg: ModelConfig, *, to_fairseq: bool) -> Table:
    rows = [LAYER_NORM_ROW if ours == LAYER_NORM_ROW[0] and cfg.feature_encoder.mode == "layer_norm"
            else (ours, fs) for ours, fs in PARAM_MAP]
    return compile_table([(a, b) if to_fairseq else (b, a) for a, b in rows])


def _rename(key: str, table: Table) -> str:
    return rename(key, table, where="PARAM_MAP in wav2vec2/interop/fairseq/names.py")


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
