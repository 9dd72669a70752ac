"""fairseq wav2vec 2.0 checkpoints in and out (`wav2vec2.interop.fairseq`), without fairseq.

The fairseq files are built here, from fairseq 0.12's modules: `Wav2Vec2Model`'s and
`Wav2VecCtc`'s parameter names and shapes, written out by hand below (not with the code under
test), saved in the three config formats fairseq has written: a 2020 argparse.Namespace
"args", a Hydra-era "cfg" dict, and a pickled omegaconf DictConfig.

- Import: our model built from a fairseq file gives what transformers' `Wav2Vec2ForPreTraining`
  / `Wav2Vec2ForCTC` (verified equal to fairseq by transformers) gives with the same fairseq
  weights, renamed by transformers' conversion-script names written independently here:
  eval, fp32, within 1e-5. Variants: group-norm encoder + post-LN (old weight_g/weight_v
  names), layer-norm encoder with conv bias + pre-LN (new parametrization names), and a
  latent_dim != final_dim model; CTC also on a padded batch.
- Configs: every fairseq field lands on its counterpart; missing fields take fairseq's
  defaults; the 2020 string forms parse; conv_feature_layers is parsed, never evaluated; a
  fine-tuned model's encoder config comes from its w2v_args, as fairseq rebuilds it.
- Export: ours -> fairseq -> ours is exact (weights, config, normalize), the exported weights
  have exactly the names and shapes of the hand-written fairseq layout, the file holds only
  plain containers, and a CTC export loads back through `load_recognizer`.
- Errors: unsupported fields name the field; head / dictionary size and symbol mismatches;
  a file that would run code is refused (and does not run it); non-fairseq files.
"""

from __future__ import annotations

import argparse
import builtins
import os
import re
import sys
import types

import pytest
import torch
from omegaconf import OmegaConf

transformers = pytest.importorskip("transformers")

from wav2vec2.config import ModelConfig, tiny  # noqa: E402
from wav2vec2.data.labels import Dictionary  # noqa: E402
from wav2vec2.files import UnsafeCheckpointError, load_checkpoint  # noqa: E402
from wav2vec2.infer.recognizer import Recognizer, load_recognizer  # noqa: E402
from wav2vec2.interop.fairseq import (  # noqa: E402
    FAIRSEQ_SAFE_TYPES,
    config_from_fairseq,
    config_to_fairseq,
    export_fairseq,
    is_fairseq_checkpoint,
    parse_conv_layers,
    read_fairseq,
)
from wav2vec2.interop.hf import negatives_to_hf  # noqa: E402
from wav2vec2.model.ctc import Wav2Vec2Ctc  # noqa: E402
from wav2vec2.model.losses import contrastive_loss  # noqa: E402
from wav2vec2.model.wav2vec2 import Wav2Vec2Model  # noqa: E402

pytestmark = pytest.mark.reference


def read_with_heads(path):
    """(config, Wav2Vec2Model weights with the pretraining heads, normalize) of a fairseq file."""
    loaded = read_fairseq(path)
    assert loaded.kind == "pretraining", loaded.kind
    return loaded.config, loaded.weights, loaded.normalize


def read_encoder(path):
    """(config, encoder weights, normalize): what fine-tuning and features take of a fairseq file."""
    loaded = read_fairseq(path)
    return loaded.config, loaded.encoder_weights(), loaded.normalize


def fairseq_recognizer(path, *, dictionary):
    return Recognizer.from_loaded(read_fairseq(path, dictionary=dictionary))

RTOL = ATOL = 1e-5
LETTERS = list("|ETAOINSHRDLU'")  # 4 specials + 14 = 18 outputs

# ------------------------------------------------------------------------------ fairseq layout
# A small fairseq wav2vec 2.0, in fairseq's field names; `conv` is what the string says.
TINY_ARCH = dict(
    conv=[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2,
    conv_feature_layers="[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32,2,2)] * 2",
    extractor_mode="default", conv_bias=False, encoder_layers=2, encoder_embed_dim=48,
    encoder_ffn_embed_dim=96, encoder_attention_heads=2, layer_norm_first=False, conv_pos=16,
    conv_pos_groups=2, final_dim=16, latent_vars=8, latent_groups=2, latent_dim=0,
    quantizer_depth=1, quantizer_factor=3,
)
# name -> (architecture, config format, new weight-norm names)
VARIANTS = {
    "post_ln_args": (TINY_ARCH, "args", False),
    "pre_ln_layer_norm_cfg": ({**TINY_ARCH, "extractor_mode": "layer_norm", "conv_bias": True,
                               "layer_norm_first": True}, "cfg", True),
    "latent_dim_dictconfig": ({**TINY_ARCH, "latent_dim": 24}, "dictconfig", False),
}


def fairseq_weights(a: dict, *, heads: bool = True, new_weight_norm: bool = False, seed: int = 0) -> dict:
    """Random weights under fairseq `Wav2Vec2Model`'s names and shapes."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2):
        return torch.randn(*shape, generator=gen) * scale

    def norm(prefix, dim):
        sd[prefix + "weight"], sd[prefix + "bias"] = 1 + rnd(dim, scale=0.1), rnd(dim, scale=0.1)

    def linear(prefix, out_dim, in_dim, scale=None):
        sd[prefix + "weight"] = rnd(out_dim, in_dim, scale=scale or in_dim**-0.5)
        sd[prefix + "bias"] = rnd(out_dim, scale=0.1)

    sd: dict[str, torch.Tensor] = {}
    in_dim = 1
    for i, (dim, k, _) in enumerate(a["conv"]):  # Sequential(conv, dropout, norm, GELU)
        sd[f"feature_extractor.conv_layers.{i}.0.weight"] = rnd(dim, in_dim, k, scale=(2 / (in_dim * k)) ** 0.5)
        if a["conv_bias"]:
            sd[f"feature_extractor.conv_layers.{i}.0.bias"] = rnd(dim, scale=0.1)
        if a["extractor_mode"] == "layer_norm":  # Sequential(TransposeLast, Fp32LayerNorm, TransposeLast)
            norm(f"feature_extractor.conv_layers.{i}.2.1.", dim)
        elif i == 0:  # Fp32GroupNorm(dim, dim)
            norm("feature_extractor.conv_layers.0.2.", dim)
        in_dim = dim
    C, D, Fd = in_dim, a["encoder_embed_dim"], a["encoder_ffn_embed_dim"]
    norm("layer_norm.", C)
    if C != D:
        linear("post_extract_proj.", D, C)
    sd["mask_emb"] = torch.rand(D, generator=gen)
    k, groups = a["conv_pos"], a["conv_pos_groups"]
    g_name, v_name = (("parametrizations.weight.original0", "parametrizations.weight.original1")
                      if new_weight_norm else ("weight_g", "weight_v"))
    sd["encoder.pos_conv.0." + g_name] = 0.5 + torch.rand(1, 1, k, generator=gen)  # weight_norm(dim=2)
    sd["encoder.pos_conv.0." + v_name] = rnd(D, D // groups, k)
    sd["encoder.pos_conv.0.bias"] = rnd(D, scale=0.1)
    norm("encoder.layer_norm.", D)
    for i in range(a["encoder_layers"]):
        p = f"encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            linear(f"{p}self_attn.{proj}.", D, D)
        norm(p + "self_attn_layer_norm.", D)
        linear(p + "fc1.", Fd, D)
        linear(p + "fc2.", D, Fd)
        norm(p + "final_layer_norm.", D)
    if heads:
        final = a["final_dim"] or D
        vq = a["latent_dim"] or final
        G, V = a["latent_groups"], a["latent_vars"]
        sd["quantizer.vars"] = torch.rand(1, G * V, vq // G, generator=gen)
        depth, inner = a["quantizer_depth"], C * a["quantizer_factor"]
        if depth == 1:
            linear("quantizer.weight_proj.", G * V, C, scale=1.0)
        else:  # Sequential(Sequential(Linear, GELU) x (depth-1), Linear)
            for i in range(depth - 1):
                linear(f"quantizer.weight_proj.{i}.0.", inner, C if i == 0 else inner)
            linear(f"quantizer.weight_proj.{depth - 1}.", G * V, inner, scale=1.0)
        linear("project_q.", final, vq)
        linear("final_proj.", final, D)
    return sd


def fairseq_ctc_weights(a: dict, vocab: int, *, new_weight_norm: bool = False) -> dict:
    """`Wav2VecCtc`: the encoder (pretraining modules removed) under w2v_encoder.w2v_model, and proj."""
    sd = {"w2v_encoder.w2v_model." + k: v
          for k, v in fairseq_weights(a, heads=False, new_weight_norm=new_weight_norm).items()}
    gen = torch.Generator().manual_seed(1)
    sd["w2v_encoder.proj.weight"] = torch.randn(vocab, a["encoder_embed_dim"], generator=gen) * 0.2
    sd["w2v_encoder.proj.bias"] = torch.randn(vocab, generator=gen) * 0.1
    return sd


def fairseq_model_cfg(a: dict, **overrides) -> dict:
    """A Hydra-era `Wav2Vec2Config` section (BASE-recipe values around the architecture)."""
    cfg = {k: v for k, v in a.items() if k != "conv"}
    cfg.update(_name="wav2vec2", quantize_targets=True, activation_fn="gelu", dropout=0.1,
               attention_dropout=0.1, activation_dropout=0.0, encoder_layerdrop=0.05, dropout_input=0.1,
               dropout_features=0.1, feature_grad_mult=0.1, latent_temp=[2.0, 0.5, 0.999995],
               mask_prob=0.65, mask_length=10, num_negatives=10, logit_temp=0.1)
    cfg.update(overrides)
    return cfg


def hydra_state(model: dict, task: dict, weights: dict, criterion: dict | None = None) -> dict:
    """A Hydra-era fairseq checkpoint (cfg as OmegaConf.to_container writes it)."""
    return {"args": None, "cfg": {"common": {"fp16": False}, "model": model, "task": task, "criterion": criterion},
            "model": weights, "optimizer_history": [{"criterion_name": "x", "num_updates": 7}],
            "extra_state": {"train_iterator": {"epoch": 3}}, "last_optimizer_state": {"state": {}}}


def pretraining_state(a: dict, fmt: str, *, normalize: bool, new_weight_norm: bool = False) -> dict:
    weights = fairseq_weights(a, new_weight_norm=new_weight_norm)
    model = fairseq_model_cfg(a)
    if fmt == "args":  # 2020: one flat Namespace, strings for tuples and lists
        flat = {k: v for k, v in model.items() if k != "_name"}
        flat.update(arch="wav2vec2", task="audio_pretraining", criterion="wav2vec", normalize=normalize,
                    latent_temp="(2,0.5,0.999995)", loss_weights="[0.1, 10]", data="/data", lr=[5e-4])
        return {"args": argparse.Namespace(**flat), "model": weights,
                "optimizer_history": [{"criterion_name": "Wav2vecCriterion"}], "extra_state": {}}
    state = hydra_state(model, {"_name": "audio_pretraining", "data": "/data", "normalize": normalize},
                        weights, {"_name": "wav2vec", "infonce": True, "loss_weights": [0.1, 10.0]})
    if fmt == "dictconfig":
        state["cfg"] = OmegaConf.create(state["cfg"], flags={"allow_objects": True})
    return state


def ctc_state(a: dict, fmt: str, *, normalize: bool, new_weight_norm: bool = False, **asr) -> dict:
    weights = fairseq_ctc_weights(a, len(LETTERS) + 4, new_weight_norm=new_weight_norm)
    w2v = fairseq_model_cfg(a)
    fine_tuning = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.1, dropout_input=0.0,
                       final_dropout=0.1, apply_mask=True, mask_prob=0.5, mask_channel_prob=0.25,
                       mask_channel_length=64, layerdrop=0.1, feature_grad_mult=0.0, normalize=normalize,
                       freeze_finetune_updates=10000)
    fine_tuning.update(asr)
    # fairseq copies these fine-tuning values onto the pretraining config it stores as w2v_args
    # (Wav2VecEncoder's arg_overrides), so a real file has them in both places.
    for name in ("dropout", "attention_dropout", "activation_dropout", "dropout_input", "mask_prob",
                 "mask_channel_prob", "mask_channel_length", "feature_grad_mult"):
        w2v[name] = fine_tuning[name]
    w2v["encoder_layerdrop"] = fine_tuning["layerdrop"]
    if fmt == "args":
        flat_w2v = {k: v for k, v in w2v.items() if k != "_name"}
        flat_w2v.update(arch="wav2vec2", task="audio_pretraining", normalize=normalize,
                        latent_temp="(2,0.5,0.999995)")
        return {"args": argparse.Namespace(arch="wav2vec_ctc", task="audio_pretraining", labels="ltr",
                                           w2v_args=argparse.Namespace(**flat_w2v), **fine_tuning),
                "model": weights, "optimizer_history": [], "extra_state": {}}
    w2v_args = {"model": w2v, "task": {"_name": "audio_pretraining", "normalize": normalize}, "criterion": None}
    state = hydra_state({"_name": "wav2vec_ctc", "w2v_args": w2v_args, **fine_tuning},
                        {"_name": "audio_finetuning", "labels": "ltr", "normalize": normalize}, weights,
                        {"_name": "ctc"})
    if fmt == "dictconfig":
        state["cfg"] = OmegaConf.create(state["cfg"], flags={"allow_objects": True})
    return state


def write_dictionary(path, letters=LETTERS):
    path.write_text("".join(f"{s} {100 - i}\n" for i, s in enumerate(letters)))
    return path


# ------------------------------------------------------------------------------ transformers
# fairseq -> transformers names, as transformers' conversion script maps them.
_HF_RULES = [
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.", r"wav2vec2.feature_extractor.conv_layers.\1.conv."),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.(1\.)?", r"wav2vec2.feature_extractor.conv_layers.\1.layer_norm."),
    (r"^layer_norm\.", "wav2vec2.feature_projection.layer_norm."),
    (r"^post_extract_proj\.", "wav2vec2.feature_projection.projection."),
    (r"^mask_emb$", "wav2vec2.masked_spec_embed"),
    (r"^encoder\.pos_conv\.0\.(weight_g|parametrizations\.weight\.original0)$",
     "wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    (r"^encoder\.pos_conv\.0\.(weight_v|parametrizations\.weight\.original1)$",
     "wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
    (r"^encoder\.pos_conv\.0\.bias$", "wav2vec2.encoder.pos_conv_embed.conv.bias"),
    (r"^encoder\.layer_norm\.", "wav2vec2.encoder.layer_norm."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.", r"wav2vec2.encoder.layers.\1.attention."),
    (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"wav2vec2.encoder.layers.\1.layer_norm."),
    (r"^encoder\.layers\.(\d+)\.fc1\.", r"wav2vec2.encoder.layers.\1.feed_forward.intermediate_dense."),
    (r"^encoder\.layers\.(\d+)\.fc2\.", r"wav2vec2.encoder.layers.\1.feed_forward.output_dense."),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.", r"wav2vec2.encoder.layers.\1.final_layer_norm."),
    (r"^quantizer\.vars$", "quantizer.codevectors"),
    (r"^quantizer\.weight_proj\.", "quantizer.weight_proj."),
    (r"^project_q\.", "project_q."),
    (r"^final_proj\.", "project_hid."),
    (r"^w2v_encoder\.proj\.", "lm_head."),
]


def hf_state_dict(fairseq_sd: dict) -> dict:
    out = {}
    for key, value in fairseq_sd.items():
        key = key.removeprefix("w2v_encoder.w2v_model.")
        for pattern, repl in _HF_RULES:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            raise AssertionError(f"no transformers name for {key}")
    return out


def hf_model(cls, a: dict, fairseq_sd: dict, **config):
    final = a["final_dim"] or a["encoder_embed_dim"]
    hf_config = transformers.Wav2Vec2Config(
        conv_dim=[c[0] for c in a["conv"]], conv_kernel=[c[1] for c in a["conv"]],
        conv_stride=[c[2] for c in a["conv"]], conv_bias=a["conv_bias"],
        feat_extract_norm={"default": "group", "layer_norm": "layer"}[a["extractor_mode"]],
        hidden_size=a["encoder_embed_dim"], num_hidden_layers=a["encoder_layers"],
        num_attention_heads=a["encoder_attention_heads"], intermediate_size=a["encoder_ffn_embed_dim"],
        do_stable_layer_norm=a["layer_norm_first"], num_conv_pos_embeddings=a["conv_pos"],
        num_conv_pos_embedding_groups=a["conv_pos_groups"], num_codevector_groups=a["latent_groups"],
        num_codevectors_per_group=a["latent_vars"], codevector_dim=a["latent_dim"] or final,
        proj_codevector_dim=final, mask_time_prob=0.05, layer_norm_eps=1e-5, **config)
    hf_config._attn_implementation = "eager"
    with torch.device("meta"):
        hf = cls(hf_config)
    hf.load_state_dict(hf_state_dict(fairseq_sd), strict=True, assign=True)
    return hf.eval()


def _check(what: str, ours: torch.Tensor, ref: torch.Tensor) -> None:
    diff = (ours - ref).double().abs().max()
    print(f"{what}: max abs {float(diff):.2e}")
    torch.testing.assert_close(ours, ref, rtol=RTOL, atol=ATOL)


def _save(tmp_path, state, name="checkpoint.pt"):
    path = tmp_path / name
    torch.save(state, path)
    return path


# ------------------------------------------------------------------------------ import
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pretraining_import_matches_transformers(tmp_path, variant):
    a, fmt, new_wn = VARIANTS[variant]
    state = pretraining_state(a, fmt, normalize=fmt == "cfg", new_weight_norm=new_wn)
    path = _save(tmp_path, state)
    cfg, weights, normalize = read_with_heads(path)
    assert normalize is (fmt == "cfg")
    ours = Wav2Vec2Model(cfg)
    ours.load_state_dict(weights, strict=True)
    ours.eval()
    K = 10
    hf = hf_model(transformers.Wav2Vec2ForPreTraining, a, state["model"], num_negatives=K)

    gen = torch.Generator().manual_seed(2)
    source = torch.randn(2, 16000, generator=gen)  # T = 49: odd, exercises our padding to 2
    time_mask = torch.zeros(2, 49, dtype=torch.bool)
    time_mask[0, 3:13] = time_mask[0, 30:40] = time_mask[1, 10:30] = True
    M = 20
    negatives = torch.randint(0, M - 1, (2, M, K), generator=gen)
    negatives += (negatives >= torch.arange(M).view(1, M, 1)).long()  # never the positive itself
    with torch.no_grad():
        out = ours(source, time_mask=time_mask, negative_indices=negatives)
        hf_out = hf(source, mask_time_indices=time_mask,
                    sampled_negative_indices=negatives_to_hf(time_mask, negatives))
        hf_context = hf.wav2vec2(source, mask_time_indices=time_mask).last_hidden_state
        ours_projected = ours.final_proj(out.extras["context"])
    _check(f"[{variant}] context", out.extras["context"], hf_context)
    _check(f"[{variant}] final_proj", ours_projected[time_mask], hf_out.projected_states[time_mask])
    targets = out.extras["targets"].reshape(-1, out.extras["targets"].shape[-1])
    _check(f"[{variant}] quantized targets", targets, hf_out.projected_quantized_states[time_mask])
    _check(f"[{variant}] contrastive loss", contrastive_loss(out.logits), hf_out.contrastive_loss.float())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ctc_import_matches_transformers(tmp_path, variant):
    a, fmt, new_wn = VARIANTS[variant]
    state = ctc_state(a, fmt, normalize=fmt != "args", new_weight_norm=new_wn)
    path = _save(tmp_path, state)
    recognizer = fairseq_recognizer(path, dictionary=write_dictionary(tmp_path / "dict.ltr.txt"))
    assert recognizer.normalize is (fmt != "args")
    assert recognizer.dictionary.symbols[4:] == LETTERS
    hf = hf_model(transformers.Wav2Vec2ForCTC, a, state["model"], vocab_size=len(LETTERS) + 4)

    gen = torch.Generator().manual_seed(3)
    source = torch.randn(2, 24000, generator=gen)
    padding_mask = torch.zeros_like(source, dtype=torch.bool)
    padding_mask[1, -5000:] = True
    source[padding_mask] = 0.0
    with torch.no_grad():
        _check(f"[{variant}] CTC logits", recognizer(source).logits, hf(source).logits)
        out = recognizer(source, padding_mask)
        ref = hf(source, attention_mask=(~padding_mask).long()).logits
    valid = ~out.padding_mask
    _check(f"[{variant}] CTC logits, padded batch", out.logits[valid], ref[valid])


def test_load_recognizer_reads_fairseq_ctc(tmp_path):
    path = _save(tmp_path, ctc_state(TINY_ARCH, "cfg", normalize=True))
    recognizer = load_recognizer(path, dictionary=write_dictionary(tmp_path / "dict.ltr.txt"))
    assert recognizer.normalize and len(recognizer.dictionary) == len(LETTERS) + 4
    assert not recognizer.model.training


def test_every_config_field_maps(tmp_path):
    fairseq = dict(
        extractor_mode="layer_norm", encoder_layers=3, encoder_embed_dim=64, encoder_ffn_embed_dim=80,
        encoder_attention_heads=4, dropout=0.11, attention_dropout=0.12, activation_dropout=0.13,
        encoder_layerdrop=0.14, dropout_input=0.15, dropout_features=0.16, final_dim=24,
        layer_norm_first=True, conv_feature_layers="[(40, 10, 5)] + [(40, 3, 2)] * 2 + [(48,2,2)]",
        conv_bias=True, logit_temp=0.2, feature_grad_mult=0.3, quantizer_depth=2, quantizer_factor=4,
        latent_vars=17, latent_groups=3, latent_dim=30, mask_length=7, mask_prob=0.4,
        mask_selection="normal", mask_other=1.5, no_mask_overlap=True, mask_min_space=2,
        require_same_masks=False, mask_dropout=0.05, mask_channel_length=9, mask_channel_prob=0.2,
        mask_channel_before=True, mask_channel_selection="uniform", mask_channel_other=2.5,
        no_mask_channel_overlap=True, mask_channel_min_space=3, num_negatives=50, conv_pos=32,
        conv_pos_groups=8, latent_temp=[1.5, 0.25, 0.9999], required_seq_len_multiple=4,
        crop_seq_to_multiple=2, quantize_targets=True)
    expected = ModelConfig()
    fe, t, m, q = expected.feature_encoder, expected.transformer, expected.masking, expected.quantizer
    fe.mode, fe.conv_bias, fe.grad_mult, fe.dropout = "layer_norm", True, 0.3, 0.0
    fe.conv_dims, fe.conv_kernels, fe.conv_strides = [40, 40, 40, 48], [10, 3, 3, 2], [5, 2, 2, 2]
    t.num_layers, t.embed_dim, t.ffn_dim, t.num_heads, t.layer_norm_first = 3, 64, 80, 4, True
    t.dropout, t.attention_dropout, t.activation_dropout, t.layerdrop = 0.11, 0.12, 0.13, 0.14
    t.conv_pos, t.conv_pos_groups, t.required_seq_len_multiple = 32, 8, 4
    expected.dropout_input, expected.dropout_features, expected.final_dim = 0.15, 0.16, 24
    expected.logit_temp, expected.num_negatives, expected.crop_seq_to_multiple = 0.2, 50, 2
    q.depth, q.hidden_factor, q.num_entries, q.num_codebooks, q.codebook_dim = 2, 4, 17, 3, 30
    q.max_temp, q.min_temp, q.temp_decay = 1.5, 0.25, 0.9999
    m.mask_len, m.mask_prob, m.selection, m.other, m.no_overlap, m.min_space = 7, 0.4, "normal", 1.5, True, 2
    m.require_same_masks, m.mask_dropout, m.min_masks = False, 0.05, 2
    m.channel_len, m.channel_prob, m.channel_before, m.channel_selection = 9, 0.2, True, "uniform"
    m.channel_other, m.channel_no_overlap, m.channel_min_space = 2.5, True, 3
    expected.loss.diversity_weight, expected.loss.feature_penalty_weight = 0.3, 5.0
    criterion = {"_name": "wav2vec", "loss_weights": [0.3, 5.0]}

    assert config_from_fairseq(fairseq, criterion=criterion) == expected
    assert config_from_fairseq(argparse.Namespace(**fairseq), criterion=criterion) == expected
    assert config_from_fairseq(OmegaConf.create(fairseq), criterion=OmegaConf.create(criterion)) == expected
    exported = config_to_fairseq(expected)
    assert {k: exported[k] for k in fairseq if k != "conv_feature_layers"} == {
        k: v for k, v in fairseq.items() if k != "conv_feature_layers"}
    assert parse_conv_layers(exported["conv_feature_layers"]) == parse_conv_layers(fairseq["conv_feature_layers"])
    assert config_from_fairseq(exported, criterion=criterion) == expected


def test_missing_fields_take_fairseq_defaults():
    cfg = config_from_fairseq({}, heads=False)
    assert cfg.feature_encoder.conv_dims == [512] * 7
    assert cfg.feature_encoder.conv_kernels == [10, 3, 3, 3, 3, 2, 2]
    assert cfg.feature_encoder.conv_strides == [5, 2, 2, 2, 2, 2, 2]
    fe = cfg.feature_encoder
    assert (fe.mode, fe.conv_bias, fe.grad_mult) == ("default", False, 1.0)
    t = cfg.transformer
    assert (t.num_layers, t.embed_dim, t.ffn_dim, t.num_heads, t.layer_norm_first) == (12, 768, 3072, 12, False)
    assert (t.dropout, t.attention_dropout, t.activation_dropout, t.layerdrop) == (0.1, 0.1, 0.0, 0.0)
    assert (cfg.final_dim, cfg.dropout_input, cfg.dropout_features) == (0, 0.0, 0.0)
    q = cfg.quantizer
    assert (q.num_entries, q.num_codebooks, q.codebook_dim, q.depth) == (320, 2, 0, 1)
    assert (q.max_temp, q.min_temp, q.temp_decay) == (2.0, 0.5, 0.999995)
    assert (cfg.masking.mask_prob, cfg.masking.mask_len, cfg.masking.channel_prob) == (0.65, 10, 0.0)
    assert (t.required_seq_len_multiple, cfg.crop_seq_to_multiple) == (2, 1)
    # A criterion without loss_weights adds no extra losses in fairseq.
    plain = config_from_fairseq({}, criterion={"_name": "wav2vec"}, heads=False)
    assert (plain.loss.diversity_weight, plain.loss.feature_penalty_weight) == (0.0, 0.0)


def test_2020_string_fields_parse():
    cfg = config_from_fairseq({"latent_temp": "(2.0,0.1,0.999995)", "quantize_targets": True},
                              criterion={"loss_weights": "[0.1, 0]"})
    assert (cfg.quantizer.max_temp, cfg.quantizer.min_temp) == (2.0, 0.1)
    assert (cfg.loss.diversity_weight, cfg.loss.feature_penalty_weight) == (0.1, 0.0)
    one = config_from_fairseq({"quantize_targets": True}, criterion={"loss_weights": [0.5]})
    assert (one.loss.diversity_weight, one.loss.feature_penalty_weight) == (0.5, 0.5)


def test_parse_conv_layers():
    base = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    assert parse_conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2") == base
    assert parse_conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]") == base
    assert parse_conv_layers(" [(512,10,5), (512,8,4)] + 3 * [(512,4,2)] + [(512,1,1)]") == (
        [(512, 10, 5), (512, 8, 4)] + [(512, 4, 2)] * 3 + [(512, 1, 1)])
    for bad in ("__import__('os').system('true')", "[(512, 10, 5)] * 10**9", "[(512, 10)]",
                "[(512, 10, 5.0)]", "[(512, 10, -5)]", "[]", "[(1, 2, 3)] - [(1, 2, 3)]", "[(a, 2, 3)]",
                "[(512, 10, 5)", "[(512, 10, 5)] * 100"):
        with pytest.raises(ValueError, match="conv_feature_layers"):
            parse_conv_layers(bad)


def test_fine_tuned_config_is_rebuilt_as_fairseq_does(tmp_path):
    state = ctc_state(TINY_ARCH, "cfg", normalize=False)
    cfg, weights, normalize = read_encoder(_save(tmp_path, state))  # a CTC file: its encoder
    assert normalize is False and not any(k.startswith(("quantizer.", "proj.")) for k in weights)
    m, t = cfg.masking, cfg.transformer
    assert (t.dropout, t.attention_dropout, t.activation_dropout, cfg.dropout_input) == (0.0, 0.0, 0.1, 0.0)
    assert (m.mask_prob, m.channel_prob, m.channel_len, t.layerdrop) == (0.5, 0.25, 64, 0.1)
    assert cfg.feature_encoder.grad_mult == 0.0
    assert cfg.dropout_features == 0.1 and cfg.transformer.num_layers == 2
    # fairseq builds the encoder from w2v_args, not from the fine-tuning fields beside it.
    edited = ctc_state(TINY_ARCH, "cfg", normalize=False)
    edited["cfg"]["model"]["dropout"] = 0.3
    cfg, _, _ = read_encoder(_save(tmp_path, edited, "edited.pt"))
    assert cfg.transformer.dropout == 0.0
    # apply_mask False: fairseq never masks.
    no_mask = ctc_state(TINY_ARCH, "args", normalize=False, apply_mask=False)
    cfg, _, _ = read_encoder(_save(tmp_path, no_mask, "no_mask.pt"))
    assert (cfg.masking.mask_prob, cfg.masking.channel_prob) == (0.0, 0.0)


def test_blank_weight_is_folded_into_the_blank_bias(tmp_path):
    dictionary = write_dictionary(tmp_path / "dict.ltr.txt")
    plain = fairseq_recognizer(_save(tmp_path, ctc_state(TINY_ARCH, "cfg", normalize=False), "a.pt"),
                             dictionary=dictionary)
    added = fairseq_recognizer(_save(tmp_path, ctc_state(TINY_ARCH, "cfg", normalize=False, blank_weight=0.7),
                                   "b.pt"), dictionary=dictionary)
    source = torch.randn(1, 8000, generator=torch.Generator().manual_seed(0))
    diff = added(source).logits - plain(source).logits
    torch.testing.assert_close(diff[..., 0], torch.full_like(diff[..., 0], 0.7))
    assert not diff[..., 1:].any()
    with pytest.raises(ValueError, match="blank_mode"):
        fairseq_recognizer(_save(tmp_path, ctc_state(TINY_ARCH, "cfg", normalize=False, blank_weight=1.0,
                                                   blank_mode="set"), "c.pt"), dictionary=dictionary)


def test_heads_are_optional(tmp_path):
    path = _save(tmp_path, pretraining_state(TINY_ARCH, "cfg", normalize=False))
    _, with_heads, _ = read_with_heads(path)
    cfg, without, _ = read_encoder(path)
    assert any(k.startswith("quantizer.") for k in with_heads)
    assert set(without) == {k for k in with_heads if not k.startswith(("quantizer.", "project_q.", "final_proj."))}
    model = Wav2Vec2Model(cfg)
    model.remove_pretraining_modules()
    model.load_state_dict(without, strict=True)


# ------------------------------------------------------------------------------ export
def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _pre_ln_deep_quantizer() -> ModelConfig:
    cfg = tiny()
    cfg.feature_encoder.mode, cfg.feature_encoder.conv_bias = "layer_norm", True
    cfg.transformer.layer_norm_first = True
    cfg.quantizer.depth, cfg.quantizer.codebook_dim = 3, 24
    cfg.masking.channel_prob, cfg.loss.feature_penalty_weight = 0.1, 0.0
    return cfg


def _no_projection() -> ModelConfig:
    cfg = tiny()
    cfg.feature_encoder.conv_dims = [cfg.transformer.embed_dim] * 7
    return cfg


def _fairseq_arch(cfg: ModelConfig) -> dict:
    fe, t, q = cfg.feature_encoder, cfg.transformer, cfg.quantizer
    return dict(conv=list(zip(fe.conv_dims, fe.conv_kernels, fe.conv_strides)), extractor_mode=fe.mode,
                conv_bias=fe.conv_bias, encoder_layers=t.num_layers, encoder_embed_dim=t.embed_dim,
                encoder_ffn_embed_dim=t.ffn_dim, encoder_attention_heads=t.num_heads,
                layer_norm_first=t.layer_norm_first, conv_pos=t.conv_pos, conv_pos_groups=t.conv_pos_groups,
                final_dim=cfg.final_dim, latent_vars=q.num_entries, latent_groups=q.num_codebooks,
                latent_dim=q.codebook_dim, quantizer_depth=q.depth, quantizer_factor=q.hidden_factor)


def _shapes(sd: dict) -> dict:
    return {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize("make_cfg", [tiny, _pre_ln_deep_quantizer, _no_projection])
def test_pretraining_round_trip_is_exact(tmp_path, make_cfg):
    cfg = make_cfg()
    model = _perturbed(Wav2Vec2Model(cfg))
    path = export_fairseq(model, tmp_path / "out" / "pretrained.pt", normalize=True)
    raw = torch.load(path, weights_only=True)  # plain containers and tensors only
    assert is_fairseq_checkpoint(raw)
    # Exactly fairseq's names and shapes, as the hand-written layout has them.
    assert _shapes(raw["model"]) == _shapes(fairseq_weights(_fairseq_arch(cfg)))
    assert raw["cfg"]["model"]["_name"] == "wav2vec2" and raw["cfg"]["task"]["_name"] == "audio_pretraining"

    loaded_cfg, weights, normalize = read_with_heads(path)
    assert loaded_cfg == cfg and normalize is True
    ours = model.state_dict()
    assert weights.keys() == ours.keys()
    for key in ours:
        assert torch.equal(weights[key], ours[key]), key


def test_ctc_round_trip_is_exact_and_loads_as_a_recognizer(tmp_path):
    cfg = _pre_ln_deep_quantizer()
    model = _perturbed(Wav2Vec2Ctc(cfg, vocab_size=len(LETTERS) + 4, final_dropout=0.1)).eval()
    letters = Dictionary.load(write_dictionary(tmp_path / "letters.txt"))
    path = export_fairseq(model, tmp_path / "out" / "fine_tuned.pt", normalize=True, dictionary=letters)
    dict_path = path.parent / "dict.ltr.txt"
    assert Dictionary.load(dict_path) == letters

    raw = torch.load(path, weights_only=True)
    expected = fairseq_ctc_weights(_fairseq_arch(cfg), len(letters))
    assert _shapes(raw["model"]) == _shapes(expected)
    model_cfg, task = raw["cfg"]["model"], raw["cfg"]["task"]
    assert (model_cfg["_name"], task["_name"], task["labels"]) == ("wav2vec_ctc", "audio_finetuning", "ltr")
    assert task["data"] == str(path.parent.resolve())  # where fairseq looks for dict.ltr.txt
    assert model_cfg["w2v_args"]["model"]["_name"] == "wav2vec2"
    assert model_cfg["normalize"] is task["normalize"] is model_cfg["w2v_args"]["task"]["normalize"] is True
    assert model_cfg["final_dropout"] == 0.1 and model_cfg["apply_mask"] is True
    w2v_model = model_cfg["w2v_args"]["model"]
    assert (model_cfg["layerdrop"], model_cfg["mask_channel_prob"]) == (w2v_model["encoder_layerdrop"], 0.1)
    assert raw["optimizer_history"][-1]["num_updates"] == 0 and "train_iterator" in raw["extra_state"]

    recognizer = load_recognizer(path, dictionary=dict_path)
    assert recognizer.model.cfg == cfg and recognizer.normalize is True and recognizer.dictionary == letters
    for key, value in model.state_dict().items():
        assert torch.equal(recognizer.model.state_dict()[key], value), key
    source = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(recognizer(source).logits, model(source).logits)


def test_export_refuses_what_fairseq_cannot_load(tmp_path):
    model = Wav2Vec2Model(tiny())
    model.remove_pretraining_modules()
    with pytest.raises(ValueError, match="quantizer"):
        export_fairseq(model, tmp_path / "a.pt", normalize=False)
    ctc = Wav2Vec2Ctc(tiny(), vocab_size=10)
    with pytest.raises(ValueError, match="dictionary"):
        export_fairseq(ctc, tmp_path / "b.pt", normalize=False)
    with pytest.raises(ValueError, match="10 outputs"):
        export_fairseq(ctc, tmp_path / "b.pt", normalize=False, dictionary=Dictionary.from_symbols(["A"]))
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "b.pt").exists()


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("field, value", [
    ("activation_fn", "relu"), ("layer_type", "conformer"), ("quantize_input", True),
    ("pos_conv_depth", 5), ("conv_pos_batch_norm", True),
])
def test_unsupported_fields_are_named(tmp_path, field, value):
    state = pretraining_state(TINY_ARCH, "cfg", normalize=False)
    state["cfg"]["model"][field] = value
    with pytest.raises(ValueError, match=rf"{field}={value!r}"):
        read_fairseq(_save(tmp_path, state))
    with pytest.raises(ValueError, match=rf"{field}={value!r}"):  # also when only the heads are asked for
        config_from_fairseq(state["cfg"]["model"], heads=True)


@pytest.mark.parametrize("field, value", [
    ("quantize_targets", False), ("target_glu", True), ("negatives_from_everywhere", True),
    ("cross_sample_negatives", 10), ("codebook_negatives", 10),
])
def test_head_only_fields_do_not_block_the_encoder(tmp_path, field, value, caplog):
    state = pretraining_state(TINY_ARCH, "cfg", normalize=False)
    state["cfg"]["model"][field] = value
    with pytest.raises(ValueError, match=rf"{field}={value!r}"):  # the heads cannot be built here...
        config_from_fairseq(state["cfg"]["model"], heads=True)
    with caplog.at_level("WARNING", logger="wav2vec2.interop.fairseq.checkpoint"):
        loaded = read_fairseq(_save(tmp_path, state, "a.pt"))  # ...so the loader keeps the encoder and says so
    assert loaded.kind == "encoder" and f"{field}={value!r}" in caplog.text
    fine_tuned = ctc_state(TINY_ARCH, "cfg", normalize=False)
    fine_tuned["cfg"]["model"]["w2v_args"]["model"][field] = value
    fairseq_recognizer(_save(tmp_path, fine_tuned, "b.pt"), dictionary=write_dictionary(tmp_path / "d.txt"))
    unsupported = ctc_state(TINY_ARCH, "cfg", normalize=False)
    unsupported["cfg"]["model"]["w2v_args"]["model"]["layer_type"] = "conformer"
    with pytest.raises(ValueError, match="layer_type='conformer'"):
        fairseq_recognizer(_save(tmp_path, unsupported, "c.pt"), dictionary=tmp_path / "d.txt")


def test_field_types_are_checked(tmp_path):
    with pytest.raises(ValueError, match="encoder_layers='12'"):
        config_from_fairseq({"encoder_layers": "12"}, heads=False)
    with pytest.raises(ValueError, match="layer_norm_first='.{task.x}'"):  # an unresolved interpolation
        config_from_fairseq({"layer_norm_first": "${task.x}"}, heads=False)


def test_weights_that_do_not_fit_the_config(tmp_path):
    state = pretraining_state(TINY_ARCH, "cfg", normalize=False)
    state["cfg"]["model"]["encoder_layers"] = 3
    with pytest.raises(ValueError, match="missing.*encoder.layers.2"):
        read_fairseq(_save(tmp_path, state, "a.pt"))
    state = pretraining_state(TINY_ARCH, "cfg", normalize=False)
    state["cfg"]["model"]["latent_vars"] = 9  # codebook rows are G * 8
    with pytest.raises(ValueError, match="quantizer.codebook"):
        read_fairseq(_save(tmp_path, state, "b.pt"))


def test_head_and_dictionary_size_must_agree(tmp_path):
    path = _save(tmp_path, ctc_state(TINY_ARCH, "cfg", normalize=False))
    short = write_dictionary(tmp_path / "short.txt", LETTERS[:-1])
    with pytest.raises(ValueError, match=r"18 outputs but .*short.txt gives 17 symbols"):
        fairseq_recognizer(path, dictionary=short)
    with pytest.raises(ValueError, match="18 outputs"):
        load_recognizer(path, dictionary=short)


@pytest.fixture
def fake_fairseq_dictionary(monkeypatch):
    """Pickle a stand-in under fairseq's `fairseq.data.dictionary.Dictionary` name, as a
    Hydra-era fine-tuned checkpoint stores its target dictionary in task_state."""

    class Dictionary:
        def __init__(self, letters):
            self.symbols = ["<s>", "<pad>", "</s>", "<unk>", *letters]
            self.count = [1] * len(self.symbols)
            self.indices = {s: i for i, s in enumerate(self.symbols)}

    Dictionary.__module__ = "fairseq.data.dictionary"
    Dictionary.__qualname__ = "Dictionary"

    def save(state, path):
        with monkeypatch.context() as m:
            for name in ("fairseq", "fairseq.data", "fairseq.data.dictionary"):
                m.setitem(sys.modules, name, types.ModuleType(name))
            sys.modules["fairseq.data.dictionary"].Dictionary = Dictionary
            torch.save(state, path)
        return path

    return Dictionary, save


def test_stored_dictionary_is_read_and_checked(tmp_path, fake_fairseq_dictionary):
    FairseqDictionary, save = fake_fairseq_dictionary
    dictionary = write_dictionary(tmp_path / "dict.ltr.txt")
    state = ctc_state(TINY_ARCH, "cfg", normalize=False)
    state["task_state"] = {"target_dictionary": FairseqDictionary(LETTERS)}
    path = save(state, tmp_path / "a.pt")
    assert "fairseq" not in sys.modules
    assert "fairseq.data.dictionary.Dictionary" in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    given = load_recognizer(path, dictionary=dictionary)
    # The stored copy is enough: no dict.ltr.txt needed.
    stored = load_recognizer(path)
    assert stored.dictionary.symbols == given.dictionary.symbols and stored.dictionary.symbols[4:] == LETTERS
    with pytest.raises(ValueError, match="separate dict.ltr.txt; pass it"):  # without a stored copy, it is needed
        load_recognizer(_save(tmp_path, ctc_state(TINY_ARCH, "cfg", normalize=False), "plain.pt"))
    state["task_state"] = {"target_dictionary": FairseqDictionary(list(reversed(LETTERS)))}
    with pytest.raises(ValueError, match="differs from the dictionary stored"):
        load_recognizer(save(state, tmp_path / "b.pt"), dictionary=dictionary)


class _RunsCode:
    def __init__(self, call):
        self.call = call

    def __reduce__(self):
        return self.call


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec"])
def test_a_file_that_would_run_code_is_refused(tmp_path, payload):
    marker = tmp_path / "ran"
    call = ((os.system, (f"touch {marker}",)) if payload == "os.system"
            else (builtins.exec, (f"open({str(marker)!r}, 'w').close()",)))
    state = pretraining_state(TINY_ARCH, "cfg", normalize=False)
    state["extra_state"] = {"metrics": _RunsCode(call)}
    path = _save(tmp_path, state)
    with pytest.raises(UnsafeCheckpointError, match=payload.split(".")[1]):
        read_fairseq(path)
    with pytest.raises(UnsafeCheckpointError):
        load_recognizer(path, dictionary=write_dictionary(tmp_path / "dict.ltr.txt"))
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(path, allow=FAIRSEQ_SAFE_TYPES)
    assert not marker.exists()


def test_dictconfig_and_namespace_files_need_the_allow_list(tmp_path):
    for fmt in ("args", "dictconfig"):
        path = _save(tmp_path, pretraining_state(TINY_ARCH, fmt, normalize=False), f"{fmt}.pt")
        with pytest.raises(UnsafeCheckpointError):
            load_checkpoint(path)
        assert is_fairseq_checkpoint(load_checkpoint(path, allow=FAIRSEQ_SAFE_TYPES))


def test_what_is_not_a_fairseq_checkpoint(tmp_path):
    weights = fairseq_weights(TINY_ARCH)
    ours = {"model": weights, "config": {"model": {}}, "task": "pretrain", "cfg": {"model": {}}}
    assert not is_fairseq_checkpoint(ours)
    assert not is_fairseq_checkpoint(weights)  # a bare state dict: no config to build it from
    assert not is_fairseq_checkpoint({"model": weights, "args": None, "cfg": None})
    assert not is_fairseq_checkpoint({"model": weights, "cfg": {"task": {}}})
    assert not is_fairseq_checkpoint({"model": weights, "args": argparse.Namespace(lr=1)})
    with pytest.raises(ValueError, match="not a fairseq checkpoint"):
        read_fairseq(_save(tmp_path, ours, "ours.pt"))

    hubert = pretraining_state(TINY_ARCH, "cfg", normalize=False)
    hubert["cfg"]["model"]["_name"] = "hubert"
    with pytest.raises(ValueError, match="'hubert'"):
        read_fairseq(_save(tmp_path, hubert, "hubert.pt"))
    pretrained = _save(tmp_path, pretraining_state(TINY_ARCH, "cfg", normalize=False), "pretrained.pt")
    with pytest.raises(ValueError, match="no CTC output layer"):
        fairseq_recognizer(pretrained, dictionary=write_dictionary(tmp_path / "dict.ltr.txt"))
    no_w2v_args = ctc_state(TINY_ARCH, "cfg", normalize=False)
    no_w2v_args["cfg"]["model"]["w2v_args"] = None
    with pytest.raises(ValueError, match="w2v_args"):
        fairseq_recognizer(_save(tmp_path, no_w2v_args, "x.pt"), dictionary=tmp_path / "dict.ltr.txt")

