"""CTC and encoder interop with transformers (`wav2vec2.interop.hf`).

- Our `Wav2Vec2Ctc` against transformers' `Wav2Vec2ForCTC` with the same weights (ours
  random, with non-trivial values where the init is constant, converted by
  `ctc_state_dict_to_hf`), eval, fp32, within 1e-5: BASE (12 x 768) on 1 s of audio, TINY,
  and padded batches (TINY post-LN with the group-norm encoder, TINY pre-LN with the
  layer-norm one). Neither side masks the conv stack: transformers uses `attention_mask` only
  from the frames on (and fairseq does the same), so both see the same zero-padded waveform,
  and the comparison covers the unpadded frames, where transformers' logits mean something.
- Our encoder's hidden states against transformers' `Wav2Vec2Model(output_hidden_states=True)`
  layer by layer, post-LN and pre-LN.
- Exact CTC state-dict round trips in both directions, and the CTC config.
- The loader's `read_hf` on directories saved by `Wav2Vec2ForPreTraining`, `Wav2Vec2Model`
  and `Wav2Vec2ForCTC`, as fine-tuning and features take them (the encoder): architecture,
  weights (exact) and outputs; `do_normalize`; a checkpoint without mask embedding; the errors.
"""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

from wav2vec2.config import ModelConfig, architecture, base, tiny  # noqa: E402
from wav2vec2.interop.hf import (  # noqa: E402
    config_from_hf,
    config_to_hf,
    ctc_config_to_hf,
    ctc_state_dict_from_hf,
    ctc_state_dict_to_hf,
    read_hf,
    state_dict_to_hf,
)
from wav2vec2.model.ctc import Wav2Vec2Ctc  # noqa: E402
from wav2vec2.model.wav2vec2 import Wav2Vec2Model  # noqa: E402

pytestmark = pytest.mark.reference

RTOL = ATOL = 1e-5
HF_MAJOR = int(transformers.__version__.split(".")[0])
VOCAB = 32  # 4 specials + 28 letters, as an English dict.ltr.txt
FINAL_DROPOUT = 0.1  # must be off in eval on both sides


def _tiny_pre_ln() -> ModelConfig:
    cfg = tiny()
    cfg.feature_encoder.mode = "layer_norm"
    cfg.feature_encoder.conv_bias = True
    cfg.transformer.layer_norm_first = True
    return cfg


def _tiny_no_proj() -> ModelConfig:
    cfg = tiny()
    cfg.feature_encoder.conv_dims = [cfg.transformer.embed_dim] * 7
    return cfg


def _max_diffs(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """Max abs difference and norm-wise relative difference (as test_hf_equivalence)."""
    diff = (ours - ref).double()
    return float(diff.abs().max()), float(diff.norm() / ref.double().norm())


def _check(what: str, ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape, what
    abs_d, rel_d = _max_diffs(ours, ref)
    print(f"{what}: max abs {abs_d:.2e}, rel (norm) {rel_d:.2e}")
    torch.testing.assert_close(ours, ref, rtol=RTOL, atol=ATOL)


def _perturb(module: torch.nn.Module) -> None:
    """Non-trivial values where the init is constant (biases 0, norm gains 1)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))


def _hf_from_state(cls, hf_config, state: dict[str, torch.Tensor]):
    hf_config._attn_implementation = "eager"  # plain softmax attention as the reference
    with torch.device("meta"):  # skip transformers' own init: every weight is replaced
        hf = cls(hf_config)
    hf.load_state_dict(state, strict=True, assign=True)
    return hf.eval()


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------------------ CTC logits
# name -> (config, samples per utterance, padded tail of utterance 1 in samples)
CTC_VARIANTS = {
    "base": (base, 16000, 0),  # full 12 x 768, T = 49
    "tiny": (tiny, 24000, 0),
    "tiny_padded": (tiny, 24000, 5000),
    "tiny_pre_ln_padded": (_tiny_pre_ln, 24000, 5000),
}


@pytest.fixture(scope="module", params=list(CTC_VARIANTS))
def ctc_run(request):
    make_cfg, num_samples, pad = CTC_VARIANTS[request.param]
    torch.manual_seed(0)
    cfg = make_cfg()
    ours = Wav2Vec2Ctc(cfg, vocab_size=VOCAB, final_dropout=FINAL_DROPOUT)
    _perturb(ours)
    ours.eval()
    hf = _hf_from_state(
        transformers.Wav2Vec2ForCTC,
        ctc_config_to_hf(cfg, vocab_size=VOCAB, final_dropout=FINAL_DROPOUT),
        ctc_state_dict_to_hf(ours.state_dict(), cfg),
    )
    gen = torch.Generator().manual_seed(1)
    source = torch.randn(2, num_samples, generator=gen)
    padding_mask = attention_mask = None
    if pad:
        padding_mask = torch.zeros_like(source, dtype=torch.bool)
        padding_mask[1, -pad:] = True
        source[padding_mask] = 0.0
        attention_mask = (~padding_mask).long()
    with torch.no_grad():
        out = ours(source, padding_mask)
        ref = hf(source, attention_mask=attention_mask).logits
        no_mask = ours(source).logits if pad else None
    return dict(name=request.param, pad=pad, out=out, ref=ref, hf=hf, source=source,
                attention_mask=attention_mask, no_mask=no_mask)


def _valid(run) -> torch.Tensor:
    out = run["out"]
    if out.padding_mask is None:
        return torch.ones(out.logits.shape[:2], dtype=torch.bool)
    return ~out.padding_mask


def test_ctc_logits_match(ctc_run):
    out, ref, valid = ctc_run["out"], ctc_run["ref"], _valid(ctc_run)
    assert out.logits.shape == ref.shape == (*valid.shape, VOCAB)
    _check(f"[{ctc_run['name']}] CTC logits", out.logits[valid], ref[valid])


def test_ctc_lengths_match_transformers(ctc_run):
    out, source, attention_mask = ctc_run["out"], ctc_run["source"], ctc_run["attention_mask"]
    if attention_mask is None:
        samples = torch.full((source.shape[0],), source.shape[1])
    else:
        samples = attention_mask.sum(-1)
    expected = ctc_run["hf"]._get_feat_extract_output_lengths(samples)
    assert out.lengths.tolist() == expected.tolist()
    if ctc_run["pad"]:
        assert out.lengths[1] < out.lengths[0] == out.logits.shape[1]


def test_ctc_padded_frames_are_blank_only(ctc_run):
    out = ctc_run["out"]
    if not ctc_run["pad"]:
        assert out.padding_mask is None
        return
    padded = out.logits[out.padding_mask]  # (N, V)
    assert padded.shape[0] > 0
    assert (padded[:, 0] == 0).all()
    assert torch.isneginf(padded[:, 1:]).all()
    assert torch.isfinite(out.logits[~out.padding_mask]).all()


def test_ctc_padding_mask_reaches_the_encoder(ctc_run):
    """The padded comparison means something only if the masks change the unpadded frames
    (both sides ignoring them would also agree)."""
    if not ctc_run["pad"]:
        return
    out, no_mask = ctc_run["out"], ctc_run["no_mask"]
    valid = _valid(ctc_run)
    torch.testing.assert_close(out.logits[0], no_mask[0])  # the unpadded utterance
    assert (out.logits[1][valid[1]] - no_mask[1][valid[1]]).abs().max() > 1e-3


# ------------------------------------------------------------------------------ hidden states
@pytest.mark.parametrize("make_cfg", [tiny, _tiny_pre_ln])
def test_hidden_states_match_layer_by_layer(make_cfg):
    torch.manual_seed(0)
    cfg = make_cfg()
    ours = Wav2Vec2Model(cfg)
    ours.remove_pretraining_modules()
    _perturb(ours)
    ours.eval()
    hf_state = {k.removeprefix("wav2vec2."): v for k, v in state_dict_to_hf(ours.state_dict(), cfg).items()}
    hf = _hf_from_state(transformers.Wav2Vec2Model, config_to_hf(cfg), hf_state)
    source = torch.randn(3, 17000, generator=torch.Generator().manual_seed(1))
    captured = {}  # pre-LN: the last layer's output, before the encoder's final LayerNorm
    ours.encoder.layer_norm.register_forward_hook(lambda m, a, o: captured.update(last_layer=a[0]))
    with torch.no_grad():
        enc = ours.encode(source, return_hidden_states=True)
        ref = hf(source, output_hidden_states=True)
    name, L = make_cfg.__name__, cfg.transformer.num_layers
    assert len(enc.hidden_states) == len(ref.hidden_states) == L + 1
    # [0] the first layer's input, [i] layer i's output.
    for i in range(L):
        _check(f"[{name}] hidden state {i}", enc.hidden_states[i], ref.hidden_states[i])
    _check(f"[{name}] output", enc.x, ref.last_hidden_state)
    # The last one is the output (ours, and transformers 4.x: after the final LayerNorm for
    # pre-LN). transformers 5 keeps the pre-LN model's last layer output *before* that
    # LayerNorm there (capture_outputs(tie_last_hidden_states=False)); compared as such.
    assert torch.equal(enc.hidden_states[-1], enc.x)
    if cfg.transformer.layer_norm_first and HF_MAJOR >= 5:
        T = ref.hidden_states[-1].shape[1]
        _check(f"[{name}] hidden state {L} (before the final LayerNorm)",
               captured["last_layer"][:, :T], ref.hidden_states[-1])
    else:
        _check(f"[{name}] hidden state {L}", enc.hidden_states[-1], ref.hidden_states[-1])


# ------------------------------------------------------------------------------ CTC conversion
@pytest.mark.parametrize("make_cfg", [tiny, _tiny_no_proj, _tiny_pre_ln])
def test_ctc_state_dict_round_trip_ours_hf_ours(make_cfg):
    cfg = make_cfg()
    torch.manual_seed(0)
    model = Wav2Vec2Ctc(cfg, vocab_size=VOCAB)
    _perturb(model)  # a permuted or dropped zero bias would go unnoticed otherwise
    ours = model.state_dict()
    hf_state = ctc_state_dict_to_hf(ours, cfg)
    assert torch.equal(hf_state["lm_head.weight"], ours["proj.weight"])
    assert torch.equal(hf_state["lm_head.bias"], ours["proj.bias"])
    # Loads strictly into transformers' CTC model: no missing or unexpected keys, same shapes.
    hf = transformers.Wav2Vec2ForCTC(ctc_config_to_hf(cfg, vocab_size=VOCAB))
    hf.load_state_dict(hf_state, strict=True)
    _assert_same_state(ctc_state_dict_from_hf(hf_state, cfg), ours)


@pytest.mark.parametrize("make_cfg", [tiny, _tiny_pre_ln])
def test_ctc_state_dict_round_trip_hf_ours_hf(make_cfg):
    cfg = make_cfg()
    torch.manual_seed(0)
    model = transformers.Wav2Vec2ForCTC(ctc_config_to_hf(cfg, vocab_size=VOCAB))
    _perturb(model)
    hf_state = model.state_dict()
    ours = ctc_state_dict_from_hf(hf_state, cfg)
    Wav2Vec2Ctc(cfg, vocab_size=VOCAB).load_state_dict(ours, strict=True)
    _assert_same_state(ctc_state_dict_to_hf(ours, cfg), hf_state)


def test_ctc_config_to_hf():
    cfg = tiny()
    hf = ctc_config_to_hf(cfg, vocab_size=VOCAB, final_dropout=0.25)
    assert hf.architectures == ["Wav2Vec2ForCTC"]
    assert (hf.vocab_size, hf.final_dropout, hf.pad_token_id) == (VOCAB, 0.25, 0)
    assert (hf.ctc_loss_reduction, hf.ctc_zero_infinity) == ("sum", True)
    assert (hf.bos_token_id, hf.eos_token_id) == (None, 2)
    assert config_from_hf(hf, template=cfg) == cfg
    # It survives save/load, and the model built from it has our head's shape.
    model = transformers.Wav2Vec2ForCTC(hf)
    assert tuple(model.lm_head.weight.shape) == (VOCAB, cfg.transformer.embed_dim)
    cfg.masking.mask_prob = cfg.masking.channel_prob = 0.0
    with pytest.raises(ValueError, match="mask"):
        ctc_config_to_hf(cfg, vocab_size=VOCAB)


def test_ctc_state_dict_rejects_unmapped_keys():
    cfg = tiny()
    torch.manual_seed(0)
    ours = Wav2Vec2Ctc(cfg, vocab_size=VOCAB).state_dict()
    with pytest.raises(ValueError, match="pretraining modules"):
        ctc_state_dict_to_hf({**ours, "wav2vec2.quantizer.codebook": torch.zeros(1, 32, 16)}, cfg)
    with pytest.raises(ValueError, match="unexpected key 'head.weight'"):
        ctc_state_dict_to_hf({**ours, "head.weight": torch.zeros(1)}, cfg)
    hf_state = ctc_state_dict_to_hf(ours, cfg)
    with pytest.raises(ValueError, match="unexpected key 'project_hid.weight'"):
        ctc_state_dict_from_hf({**hf_state, "project_hid.weight": torch.zeros(1)}, cfg)


def test_ctc_state_dict_from_hf_without_mask_embedding(caplog):
    cfg = tiny()
    torch.manual_seed(0)
    hf_state = transformers.Wav2Vec2ForCTC(ctc_config_to_hf(cfg, vocab_size=VOCAB)).state_dict()
    del hf_state["wav2vec2.masked_spec_embed"]
    with caplog.at_level(logging.WARNING, logger="wav2vec2.interop.hf"):
        ours = ctc_state_dict_from_hf(hf_state, cfg)
    assert "no masked_spec_embed" in caplog.text
    mask_emb = ours["wav2vec2.mask_emb"]
    assert mask_emb.shape == (cfg.transformer.embed_dim,)
    assert ((mask_emb >= 0) & (mask_emb < 1)).all() and mask_emb.std() > 0.1
    Wav2Vec2Ctc(cfg, vocab_size=VOCAB).load_state_dict(ours, strict=True)
    # Deterministic: the same embedding every time.
    assert torch.equal(ctc_state_dict_from_hf(hf_state, cfg)["wav2vec2.mask_emb"], mask_emb)


# ------------------------------------------------------------------------------ reading directories
def read_encoder(path, *, template: ModelConfig | None = None):
    """(config, encoder weights, normalize) of a directory, as fine-tuning and features read it."""
    loaded = read_hf(path, template=template)
    return loaded.config, loaded.encoder_weights(), loaded.normalize


HF_CLASSES = {
    "pretraining": transformers.Wav2Vec2ForPreTraining,
    "model": transformers.Wav2Vec2Model,
    "ctc": transformers.Wav2Vec2ForCTC,
}


def _save_hf(kind: str, cfg: ModelConfig, path, *, masking: bool = True):
    """A transformers model of `kind` and architecture `cfg`, saved to `path` (returns its
    encoder, in eval mode)."""
    hf_config = ctc_config_to_hf(cfg, vocab_size=VOCAB) if kind == "ctc" else config_to_hf(cfg)
    if not masking:
        hf_config.mask_time_prob = hf_config.mask_feature_prob = 0.0
    torch.manual_seed(0)
    hf = HF_CLASSES[kind](hf_config)
    _perturb(hf)
    encoder = hf if kind == "model" else hf.wav2vec2
    C, D = cfg.feature_encoder.conv_dims[-1], cfg.transformer.embed_dim
    if C == D:  # what our export writes, and what import requires, when C == D
        with torch.no_grad():
            encoder.feature_projection.projection.weight.copy_(torch.eye(D))
            encoder.feature_projection.projection.bias.zero_()
    hf.save_pretrained(path)
    encoder.config._attn_implementation = "eager"
    return encoder.eval()


def _our_encoder(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> Wav2Vec2Model:
    model = Wav2Vec2Model(cfg)
    model.remove_pretraining_modules()
    model.load_state_dict(state, strict=True)
    return model.eval()


def _assert_same_outputs(ours: Wav2Vec2Model, hf_encoder, what: str) -> None:
    gen = torch.Generator().manual_seed(1)
    source = torch.randn(3, 12345, generator=gen)
    padding_mask = torch.zeros_like(source, dtype=torch.bool)
    padding_mask[2, -3000:] = True
    source[padding_mask] = 0.0
    with torch.no_grad():
        enc = ours.encode(source, padding_mask)
        ref = hf_encoder(source, attention_mask=(~padding_mask).long()).last_hidden_state
    valid = ~enc.padding_mask
    _check(what, enc.x[valid], ref[valid])


@pytest.mark.parametrize("make_cfg", [tiny, _tiny_pre_ln, _tiny_no_proj])
@pytest.mark.parametrize("kind", list(HF_CLASSES))
def test_read_encoder(kind, make_cfg, tmp_path):
    source_cfg = make_cfg()
    hf_encoder = _save_hf(kind, source_cfg, tmp_path)
    cfg, state, do_normalize = read_encoder(tmp_path)
    assert architecture(cfg) == architecture(source_cfg)
    assert do_normalize is None  # no preprocessor_config.json
    # The tensors are transformers' own, renamed.
    expected = {"wav2vec2." + k: v for k, v in hf_encoder.state_dict().items()}
    _assert_same_state(state_dict_to_hf(state, cfg), expected)
    what = f"[{kind}/{make_cfg.__name__}] read_hf"
    _assert_same_outputs(_our_encoder(cfg, state), hf_encoder, what)
    # With the source as template, the whole config comes back (str paths work too).
    assert read_encoder(str(tmp_path), template=source_cfg)[0] == source_cfg


@pytest.mark.parametrize("do_normalize", [True, False])
def test_read_encoder_reads_do_normalize(do_normalize, tmp_path):
    _save_hf("model", tiny(), tmp_path)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=do_normalize).save_pretrained(tmp_path)
    assert read_encoder(tmp_path)[2] is do_normalize


def test_read_encoder_do_normalize_defaults_to_feature_extractor_default(tmp_path):
    _save_hf("model", tiny(), tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"sampling_rate": 16000}))
    assert read_encoder(tmp_path)[2] is True


def test_read_encoder_without_mask_embedding(tmp_path, caplog):
    """Saved with masking off, transformers has no masked_spec_embed: a fresh U[0, 1)
    mask_emb is returned (deterministic), with a warning; everything else is the checkpoint's."""
    source_cfg = tiny()
    hf_encoder = _save_hf("ctc", source_cfg, tmp_path, masking=False)
    assert not hasattr(hf_encoder, "masked_spec_embed")
    with caplog.at_level(logging.WARNING, logger="wav2vec2.interop.hf"):
        cfg, state, _ = read_encoder(tmp_path)
    assert "no masked_spec_embed" in caplog.text and str(tmp_path) in caplog.text
    assert (cfg.masking.mask_prob, cfg.masking.channel_prob) == (0.0, 0.0)
    mask_emb = state["mask_emb"]
    assert mask_emb.shape == (cfg.transformer.embed_dim,)
    assert ((mask_emb >= 0) & (mask_emb < 1)).all() and mask_emb.std() > 0.1
    assert torch.equal(read_encoder(tmp_path)[1]["mask_emb"], mask_emb)
    _assert_same_outputs(_our_encoder(cfg, state), hf_encoder, "[no mask_emb] read_hf")


def test_read_encoder_ignores_a_made_up_mask_embedding(tmp_path, caplog):
    """Masking on in the config but no masked_spec_embed in the weights: transformers makes
    one up (from the global RNG); ours is the deterministic fresh draw, with the warning."""
    _save_hf("model", tiny(), tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["masked_spec_embed"]
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with caplog.at_level(logging.WARNING, logger="wav2vec2.interop.hf"):
        first = read_encoder(tmp_path)[1]["mask_emb"]
    assert "no masked_spec_embed" in caplog.text
    torch.manual_seed(123)  # transformers' draw would change with the global RNG
    assert torch.equal(read_encoder(tmp_path)[1]["mask_emb"], first)


def test_read_encoder_errors(tmp_path, monkeypatch):
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        read_encoder(missing)
    with pytest.raises(FileNotFoundError, match="not a local directory"):
        read_encoder("facebook/wav2vec2-base")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{empty} has no config.json")):
        read_encoder(empty)

    hubert = tmp_path / "hubert"
    transformers.HubertConfig().save_pretrained(hubert)
    with pytest.raises(ValueError, match=re.escape(f"{hubert / 'config.json'}: a 'hubert' model")):
        read_encoder(hubert)

    relu = tmp_path / "relu"
    config_to_hf(tiny()).save_pretrained(relu)
    config = json.loads((relu / "config.json").read_text())
    (relu / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    with pytest.raises(ValueError, match=re.escape(f"{relu / 'config.json'}: transformers config has hidden_act='relu'")):
        read_encoder(relu)

    truncated = tmp_path / "truncated"
    _save_hf("ctc", tiny(), truncated)
    weights = load_file(truncated / "model.safetensors")
    del weights["wav2vec2.encoder.layer_norm.bias"]
    save_file(weights, str(truncated / "model.safetensors"), metadata={"format": "pt"})
    lacks = f"{truncated}: the checkpoint lacks ['wav2vec2.encoder.layer_norm.bias']"
    with pytest.raises(ValueError, match=re.escape(lacks)):
        read_encoder(truncated)

    not_identity = tmp_path / "not_identity"
    cfg = _tiny_no_proj()
    transformers.Wav2Vec2Model(config_to_hf(cfg)).save_pretrained(not_identity)  # random projection
    with pytest.raises(ValueError, match=re.escape(f"{not_identity}: conv dim == model dim")):
        read_encoder(not_identity)

    no_transformers = tmp_path / "no_transformers"
    config_to_hf(tiny()).save_pretrained(no_transformers)
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` fails
    with pytest.raises(ImportError, match=re.escape("pip install -e '.[hf]'")):
        read_encoder(no_transformers)
