"""Numerical equivalence with transformers' `Wav2Vec2ForPreTraining` (itself verified
bit-identical to fairseq 0.12.2), with weights transplanted through `wav2vec2.interop.hf`.

Both models run in eval mode (no dropout, no LayerDrop, no Gumbel noise) on the same audio,
the same fixed time mask and the same negatives (ours converted to transformers'
`sampled_negative_indices`). Compared in fp32 within 1e-5: the context network output, the
projected quantized targets at the masked frames, the contrastive logits (captured from
transformers' own `compute_contrastive_logits`, after its identical-negative -inf fill) and
the summed contrastive loss.

Where transformers differs from fairseq by design, the fairseq semantics are tested against
a direct computation instead:
- transformers has no feature penalty: ours must be the mean of the squared conv-encoder
  output, computed here from transformers' feature encoder;
- transformers' perplexity is over the masked frames, and in eval it is the hard-code
  perplexity (our `code_perplexity`); in training it is the softmax perplexity (our
  `prob_perplexity`, checked against transformers' quantizer in train mode, whose perplexity
  ignores the Gumbel noise). fairseq adds 1e-7 inside the log where transformers uses xlogy,
  which bounds the relative difference by V * 1e-7 per codebook.

Variants: BASE-shaped (full 12 x 768, post-LN, group-norm encoder) on 1 s of audio, which
gives an odd T = 49 so our padding to a multiple of 2 is exercised; LARGE-style (layer-norm
encoder with conv bias, pre-LN) at width 1024 with 2 layers; TINY; TINY with conv dim ==
model dim (no post_extract_proj, identity projection on the transformers side); and TINY
with a padded batch.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from wav2vec2.config import ModelConfig, base, large, tiny  # noqa: E402
from wav2vec2.interop.hf import config_to_hf, negatives_to_hf, state_dict_to_hf  # noqa: E402
from wav2vec2.model.losses import contrastive_loss, diversity_loss  # noqa: E402
from wav2vec2.model.masking import compute_span_mask  # noqa: E402
from wav2vec2.model.wav2vec2 import Wav2Vec2Model, sample_negatives  # noqa: E402

pytestmark = pytest.mark.reference

RTOL = ATOL = 1e-5


def _large_style() -> ModelConfig:
    cfg = large()
    cfg.transformer.num_layers = 2
    return cfg


def _tiny_no_proj() -> ModelConfig:
    cfg = tiny()
    cfg.feature_encoder.conv_dims = [cfg.transformer.embed_dim] * 7
    return cfg


# name -> (config, samples per utterance, padded tail of utterance 1 in samples)
VARIANTS = {
    "base": (base, 16000, 0),  # T = 49 (odd)
    "large_style": (_large_style, 16320, 0),  # T = 50
    "tiny": (tiny, 24000, 0),  # T = 74
    "tiny_no_proj": (_tiny_no_proj, 16000, 0),
    "tiny_padded": (tiny, 24000, 5000),
}


def _max_diffs(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """Max abs difference and norm-wise relative difference over the finite entries."""
    finite = torch.isfinite(ref)
    diff = (ours[finite] - ref[finite]).double()
    return float(diff.abs().max()), float(diff.norm() / ref[finite].double().norm())


def _build_pair(make_cfg):
    torch.manual_seed(0)
    cfg = make_cfg()
    ours = Wav2Vec2Model(cfg).eval()
    with torch.no_grad():  # non-trivial values where the init is constant
        for name, p in ours.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf_config = config_to_hf(cfg)
    hf_config._attn_implementation = "eager"  # plain softmax attention as the reference
    with torch.device("meta"):  # skip transformers' own init: every weight is replaced
        hf = transformers.Wav2Vec2ForPreTraining(hf_config)
    hf.load_state_dict(state_dict_to_hf(ours.state_dict(), cfg), strict=True, assign=True)
    hf.eval()
    return cfg, ours, hf


@pytest.fixture(scope="module", params=list(VARIANTS))
def run(request):
    """Both forwards on the same inputs; returns a dict of everything the tests compare."""
    make_cfg, num_samples, pad = VARIANTS[request.param]
    cfg, ours, hf = _build_pair(make_cfg)
    gen = torch.Generator().manual_seed(1)
    B = 2
    source = torch.randn(B, num_samples, generator=gen)
    padding_mask = None
    if pad:
        padding_mask = torch.zeros(B, num_samples, dtype=torch.bool)
        padding_mask[1, -pad:] = True
        source[padding_mask] = 0.0

    with torch.no_grad():
        z = ours.feature_encoder(source)
        T = z.shape[-1]
        frame_pad = None
        if padding_mask is not None:
            lengths = ours.feature_encoder.output_lengths((~padding_mask).sum(1))
            frame_pad = torch.arange(T)[None] >= lengths[:, None]
        time_mask = compute_span_mask(
            (B, T), mask_prob=cfg.masking.mask_prob, mask_len=cfg.masking.mask_len, generator=gen,
            padding_mask=frame_pad, min_masks=cfg.masking.min_masks,
        )
        M = int(time_mask[0].sum())
        negatives = sample_negatives(B, M, cfg.num_negatives, generator=gen)

        out = ours(source, padding_mask, temperature=2.0, time_mask=time_mask,
                   negative_indices=negatives)

        captured = {}
        hf.wav2vec2.register_forward_hook(lambda m, a, o: captured.update(base=o))
        compute = hf.compute_contrastive_logits

        def capture_logits(*args, **kwargs):
            captured["logits"] = compute(*args, **kwargs)  # filled with -inf in place after
            return captured["logits"]

        hf.compute_contrastive_logits = capture_logits
        hf_out = hf(
            source,
            attention_mask=None if padding_mask is None else (~padding_mask).long(),
            mask_time_indices=time_mask,
            sampled_negative_indices=negatives_to_hf(time_mask, negatives),
        )
        # transformers' training-mode perplexity: the softmax one, over the masked frames.
        hf.quantizer.train()
        features = captured["base"].extract_features  # LayerNormed conv output (B, T, C)
        _, hf_prob_ppl = hf.quantizer(features, mask_time_indices=time_mask)
        hf.quantizer.eval()
        hf_conv = hf.wav2vec2.feature_extractor(source)  # (B, C, T) before the LayerNorm

    hf_logits = captured["logits"].permute(1, 2, 0)[time_mask]  # (1+K, B, T) -> (B*M, 1+K)
    valid = time_mask.new_ones(B, T) if frame_pad is None else ~frame_pad
    return dict(
        name=request.param, cfg=cfg, out=out, hf_out=hf_out, time_mask=time_mask, valid=valid,
        hf_context=captured["base"].last_hidden_state, hf_logits=hf_logits,
        hf_prob_ppl=hf_prob_ppl, hf_conv=hf_conv,
    )


def _check(run, what, ours, ref, rtol=RTOL, atol=ATOL):
    abs_d, rel_d = _max_diffs(ours, ref)
    print(f"[{run['name']}] {what}: max abs {abs_d:.2e}, rel (norm) {rel_d:.2e}")
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=atol)


def test_context_matches(run):
    valid = run["valid"]
    _check(run, "context", run["out"].extras["context"][valid], run["hf_context"][valid])


def test_targets_match(run):
    targets = run["out"].extras["targets"]
    ref = run["hf_out"].projected_quantized_states[run["time_mask"]]  # (B*M, F), time order
    _check(run, "targets", targets.reshape(ref.shape), ref)


def test_logits_match(run):
    ours, ref = run["out"].logits, run["hf_logits"]
    assert ours.shape == ref.shape
    # The identical-negative rule must pick the same entries on both sides.
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    if run["cfg"].quantizer.num_entries <= 16:
        # With 16 x 16 codes, some negatives share the positive's codes: the rule is exercised.
        assert torch.isinf(ours).any()
    _check(run, "logits", ours, ref)


def test_contrastive_loss_matches(run):
    ours = contrastive_loss(run["out"].logits)
    _check(run, "contrastive loss", ours, run["hf_out"].contrastive_loss.float())


def test_code_perplexity_matches_hf_eval_perplexity(run):
    """transformers' eval perplexity is the hard-code perplexity over the masked frames."""
    V = run["cfg"].quantizer.num_entries
    _check(run, "code perplexity", run["out"].code_perplexity, run["hf_out"].codevector_perplexity,
           rtol=V * 1e-7 + 1e-6, atol=0)


def test_prob_perplexity_and_diversity_match_hf_train_perplexity(run):
    """fairseq semantics: softmax perplexity (tau 1, no noise) over this forward's masked
    frames; transformers computes the same thing in training, with xlogy for the log."""
    cfg, out = run["cfg"], run["out"]
    V = cfg.quantizer.num_entries
    _check(run, "prob perplexity", out.prob_perplexity, run["hf_prob_ppl"],
           rtol=V * 1e-7 + 1e-6, atol=0)
    num_vars, n = out.num_vars, out.logits.shape[0]
    hf_diversity = (num_vars - run["hf_prob_ppl"]) / num_vars * n  # transformers' diversity_loss
    ours = diversity_loss(out.prob_perplexity, num_vars) * n
    # The perplexity bound carried through (GV - ppl) / GV * n.
    atol = float(n * run["hf_prob_ppl"] * (V * 1e-7 + 1e-6) / num_vars)
    _check(run, "diversity", ours, hf_diversity, rtol=0, atol=atol)


def test_feature_penalty_is_mean_square_of_conv_output(run):
    """fairseq only (transformers has no penalty): mean of squared feature-encoder outputs
    over every frame and channel, before the LayerNorm."""
    ref = run["hf_conv"].double().pow(2).mean().float()
    _check(run, "feature penalty", run["out"].feature_penalty, ref)

