"""Feature encoder: exact output lengths, padding masks, norms, gradient multiplier."""

from __future__ import annotations

import pytest
import torch

from wav2vec2.config import FeatureEncoderConfig, tiny
from wav2vec2.model.feature_encoder import ConvFeatureEncoder, GradMultiply, frame_padding_mask


def slow_output_length(num_samples: int, kernels, strides) -> int:
    # Count the valid (unpadded) conv windows layer by layer.
    length = num_samples
    for k, s in zip(kernels, strides):
        length = len(range(0, length - k + 1, s))
    return length


@pytest.mark.parametrize("samples,frames", [(250000, 781), (320000, 999), (32000, 99), (400, 1), (720, 2)])
def test_paper_output_lengths(samples, frames):
    enc = ConvFeatureEncoder(FeatureEncoderConfig())
    assert enc.output_lengths(samples) == frames
    assert enc.output_lengths(torch.tensor([samples])).item() == frames


def test_output_lengths_match_conv_for_any_length():
    cfg = tiny().feature_encoder
    enc = ConvFeatureEncoder(cfg)
    for n in [400, 401, 719, 720, 1234, 3333]:
        assert enc(torch.randn(1, n)).shape[-1] == enc.output_lengths(n)
        assert enc.output_lengths(n) == slow_output_length(n, cfg.conv_kernels, cfg.conv_strides)
    assert enc.receptive_field == 400


def test_too_short_or_wrong_rank_raises():
    enc = ConvFeatureEncoder(tiny().feature_encoder)
    with pytest.raises(ValueError, match="at least 400"):
        enc(torch.randn(2, 399))
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        enc(torch.randn(2, 1, 800))


def test_bad_mode_raises():
    with pytest.raises(ValueError, match="feature_encoder.mode"):
        ConvFeatureEncoder(FeatureEncoderConfig(mode="batch_norm"))


def test_frame_padding_mask_follows_unpadded_lengths():
    enc = ConvFeatureEncoder(tiny().feature_encoder)
    lengths = torch.tensor([3200, 2001, 719])
    sample_pad = torch.arange(3200).unsqueeze(0) >= lengths.unsqueeze(1)
    T = enc.output_lengths(3200)
    mask = frame_padding_mask(sample_pad, enc, T)
    for row, n in zip(mask, lengths.tolist()):
        valid = slow_output_length(n, enc.cfg.conv_kernels, enc.cfg.conv_strides)
        assert (~row[:valid]).all() and row[valid:].all()


def test_group_norm_normalises_each_channel_over_time_per_utterance():
    enc = ConvFeatureEncoder(tiny().feature_encoder)
    norm = enc.blocks[0].norm
    x = torch.randn(2, 32, 50) * 5 + 3
    y = norm(x)
    assert torch.allclose(y.mean(-1), torch.zeros(2, 32), atol=1e-5)
    assert torch.allclose(y.var(-1, unbiased=False), torch.ones(2, 32), atol=1e-3)
    assert all(b.norm is None for b in enc.blocks[1:])


def test_layer_norm_mode_normalises_every_block_over_channels():
    cfg = tiny().feature_encoder
    cfg.mode, cfg.conv_bias = "layer_norm", True
    enc = ConvFeatureEncoder(cfg)
    assert all(b.norm is not None and b.conv.bias is not None for b in enc.blocks)
    y = enc.blocks[0].norm(torch.randn(2, 32, 7) * 4 + 1)
    assert torch.allclose(y.mean(1), torch.zeros(2, 7), atol=1e-5)


def test_norms_run_in_fp32_under_bf16():
    enc = ConvFeatureEncoder(tiny().feature_encoder)
    x = torch.randn(2, 32, 50, dtype=torch.bfloat16)
    y = enc.blocks[0].norm(x)
    ref = torch.nn.functional.group_norm(x.float(), 32, enc.blocks[0].norm.weight, enc.blocks[0].norm.bias)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, ref.to(torch.bfloat16))


def test_grad_multiply_scales_only_backward():
    x = torch.randn(4, requires_grad=True)
    y = GradMultiply.apply(x, 0.1)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full((4,), 0.1))
