"""Config and state-dict conversion to and from transformers' `Wav2Vec2ForPreTraining`:
exact round trips in both directions, save/load through `from_pretrained`, and the
special cases of the mapping (identity projection, legacy weight-norm names)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from wav2vec2.config import ModelConfig, base, large, tiny  # noqa: E402
from wav2vec2.interop.hf import (  # noqa: E402
    config_from_hf,
    config_to_hf,
    export_hf,
    read_hf,
    negatives_to_hf,
    state_dict_from_hf,
    state_dict_to_hf,
)
from wav2vec2.model.wav2vec2 import Wav2Vec2Model, sample_negatives  # noqa: E402

pytestmark = pytest.mark.reference


def _tiny_no_proj() -> ModelConfig:
    cfg = tiny()
    cfg.feature_encoder.conv_dims = [cfg.transformer.embed_dim] * 7
    return cfg


def _tiny_large_style() -> ModelConfig:
    cfg = tiny()
    cfg.feature_encoder.mode = "layer_norm"
    cfg.feature_encoder.conv_bias = True
    cfg.transformer.layer_norm_first = True
    cfg.quantizer.codebook_dim = 32  # != final_dim (16)
    return cfg


TINY_VARIANTS = [tiny, _tiny_no_proj, _tiny_large_style]


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _random_hf(hf_config) -> "transformers.Wav2Vec2ForPreTraining":
    torch.manual_seed(0)
    return transformers.Wav2Vec2ForPreTraining(hf_config)


# ------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("make_cfg", [base, large, tiny, _tiny_no_proj, _tiny_large_style])
def test_config_round_trip_ours_hf_ours(make_cfg):
    cfg = make_cfg()
    assert config_from_hf(config_to_hf(cfg), template=cfg) == cfg


def test_config_default_template_is_base():
    assert config_from_hf(config_to_hf(base())) == base()


def test_config_fields():
    hf = config_to_hf(large())
    assert (hf.feat_extract_norm, hf.conv_bias, hf.do_stable_layer_norm) == ("layer", True, True)
    assert (hf.hidden_size, hf.num_hidden_layers, hf.num_attention_heads, hf.intermediate_size) == (
        1024, 24, 16, 4096)
    assert (hf.codevector_dim, hf.proj_codevector_dim) == (768, 768)
    dropouts = (hf.hidden_dropout, hf.attention_dropout, hf.layerdrop, hf.feat_proj_dropout)
    assert dropouts == (0, 0, 0, 0)
    hf = config_to_hf(base())
    assert (hf.feat_extract_norm, hf.conv_bias, hf.do_stable_layer_norm) == ("group", False, False)
    assert (hf.codevector_dim, hf.proj_codevector_dim, hf.num_negatives) == (256, 256, 100)
    assert (hf.mask_time_prob, hf.mask_time_length, hf.mask_time_min_masks) == (0.65, 10, 2)
    assert (hf.feat_proj_dropout, hf.feat_quantizer_dropout, hf.layerdrop) == (0.1, 0.1, 0.05)
    assert (hf.contrastive_logits_temperature, hf.diversity_loss_weight) == (0.1, 0.1)


MAPPED_HF_FIELDS = [
    "conv_dim", "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm", "hidden_size",
    "num_hidden_layers", "num_attention_heads", "intermediate_size", "do_stable_layer_norm",
    "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "hidden_dropout",
    "attention_dropout", "activation_dropout", "layerdrop", "feat_proj_dropout",
    "feat_quantizer_dropout", "mask_time_prob", "mask_time_length", "mask_time_min_masks",
    "mask_feature_prob", "mask_feature_length", "num_codevector_groups",
    "num_codevectors_per_group", "codevector_dim", "proj_codevector_dim", "num_negatives",
    "contrastive_logits_temperature", "diversity_loss_weight",
]


def test_config_round_trip_hf_ours_hf():
    hf = transformers.Wav2Vec2Config(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=80,
        conv_dim=[16, 24, 32], conv_kernel=[10, 3, 2], conv_stride=[5, 2, 2], conv_bias=True,
        feat_extract_norm="layer", do_stable_layer_norm=True, num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=4, hidden_dropout=0.2, attention_dropout=0.3,
        activation_dropout=0.05, layerdrop=0.15, feat_proj_dropout=0.25,
        feat_quantizer_dropout=0.35,
        mask_time_prob=0.5, mask_time_length=7, mask_time_min_masks=3, mask_feature_prob=0.1,
        mask_feature_length=6, num_codevector_groups=4, num_codevectors_per_group=12,
        codevector_dim=40, proj_codevector_dim=24, num_negatives=9,
        contrastive_logits_temperature=0.2, diversity_loss_weight=0.3,
    )
    back = config_to_hf(config_from_hf(hf))

    def value(config, name):
        v = getattr(config, name)
        return list(v) if isinstance(v, (list, tuple)) else v

    for name in MAPPED_HF_FIELDS:
        assert value(back, name) == value(hf, name), name


def test_config_rejects_what_we_cannot_build():
    with pytest.raises(ValueError, match="hidden_act"):
        config_from_hf(transformers.Wav2Vec2Config(hidden_act="relu"))
    with pytest.raises(ValueError, match="layer_norm_eps"):
        config_from_hf(transformers.Wav2Vec2Config(layer_norm_eps=1e-6))
    cfg = tiny()
    cfg.quantizer.depth = 2
    with pytest.raises(ValueError, match="depth"):
        config_to_hf(cfg)


# ------------------------------------------------------------------------------ state dicts
@pytest.mark.parametrize("make_cfg", TINY_VARIANTS)
def test_state_dict_round_trip_ours_hf_ours(make_cfg):
    cfg = make_cfg()
    torch.manual_seed(0)
    ours = Wav2Vec2Model(cfg).state_dict()
    hf_state = state_dict_to_hf(ours, cfg)
    # Loads strictly into transformers' model: no missing or unexpected keys, same shapes.
    _random_hf(config_to_hf(cfg)).load_state_dict(hf_state, strict=True)
    _assert_same_state(state_dict_from_hf(hf_state, cfg), ours)


@pytest.mark.parametrize("make_cfg", [tiny, _tiny_large_style])
def test_state_dict_round_trip_hf_ours_hf(make_cfg):
    cfg = make_cfg()
    hf_state = _random_hf(config_to_hf(cfg)).state_dict()
    ours = state_dict_from_hf(hf_state, cfg)
    Wav2Vec2Model(cfg).load_state_dict(ours, strict=True)
    _assert_same_state(state_dict_to_hf(ours, cfg), hf_state)


def test_identity_projection_exported_and_required():
    cfg = _tiny_no_proj()
    D = cfg.transformer.embed_dim
    hf_state = state_dict_to_hf(Wav2Vec2Model(cfg).state_dict(), cfg)
    proj = "wav2vec2.feature_projection.projection."
    assert torch.equal(hf_state[proj + "weight"], torch.eye(D))
    assert not hf_state[proj + "bias"].any()
    hf_state[proj + "bias"] = hf_state[proj + "bias"] + 1e-3
    with pytest.raises(ValueError, match="not the identity"):
        state_dict_from_hf(hf_state, cfg)


def test_legacy_weight_norm_names_load():
    cfg = tiny()
    hf_state = _random_hf(config_to_hf(cfg)).state_dict()
    new = "wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original"
    legacy = dict(hf_state)
    legacy["wav2vec2.encoder.pos_conv_embed.conv.weight_g"] = legacy.pop(new + "0")
    legacy["wav2vec2.encoder.pos_conv_embed.conv.weight_v"] = legacy.pop(new + "1")
    _assert_same_state(state_dict_from_hf(legacy, cfg), state_dict_from_hf(hf_state, cfg))


def test_unmapped_key_raises():
    cfg = tiny()
    hf_state = _random_hf(config_to_hf(cfg)).state_dict()
    hf_state["lm_head.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="no mapping"):
        state_dict_from_hf(hf_state, cfg)


# ------------------------------------------------------------------------------ models
@pytest.mark.parametrize("make_cfg", TINY_VARIANTS)
def test_export_loads_in_transformers_and_imports_back_exactly(make_cfg, tmp_path):
    cfg = make_cfg()
    torch.manual_seed(0)
    model = Wav2Vec2Model(cfg)
    export_hf(model, tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()

    hf, info = transformers.Wav2Vec2ForPreTraining.from_pretrained(
        tmp_path, local_files_only=True, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info.get("mismatched_keys")
    _assert_same_state(hf.state_dict(), state_dict_to_hf(model.state_dict(), cfg))

    for source in (tmp_path, str(tmp_path)):
        back = read_hf(source, template=cfg)
        assert back.kind == "pretraining" and back.config == cfg
        _assert_same_state(back.weights, model.state_dict())
    # A model in memory goes through the same two tables.
    assert config_from_hf(hf.config, template=cfg) == cfg
    _assert_same_state(state_dict_from_hf(hf.state_dict(), cfg), model.state_dict())


def test_load_refuses_non_local_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_hf("facebook/wav2vec2-base")
    with pytest.raises(FileNotFoundError):
        read_hf(tmp_path / "missing")


def test_negatives_to_hf_points_at_the_same_frames():
    gen = torch.Generator().manual_seed(0)
    B, T, K = 3, 20, 5
    time_mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        time_mask[b, torch.randperm(T, generator=gen)[:8]] = True
    negatives = sample_negatives(B, 8, K, generator=gen)
    hf_idx = negatives_to_hf(time_mask, negatives)
    assert hf_idx.shape == (B, T, K)
    for b in range(B):
        frames = time_mask[b].nonzero().squeeze(1).tolist()  # masked frames in time order
        for m, t in enumerate(frames):
            expected = [b * T + frames[int(j)] for j in negatives[b, m]]
            assert hf_idx[b, t].tolist() == expected
