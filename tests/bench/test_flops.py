"""The analytical FLOP count (`wav2vec2.model.flops.model_flops`, shared by the benchmark and
the training log's MFU) against torch's FlopCounterMode, per component, on one forward of BASE's widths with 2 of its 12 layers
(2 x 0.75 s).

Attention runs through SDPA's math backend here, which FlopCounterMode sees as matmuls (its
fused CPU kernel is not registered with the counter). The logits' dot products are left out
of the comparison: cosine_similarity is elementwise ops, which the counter does not count.
A whole update (forward + backward) is checked as 3x the analytical forward for everything
but the grouped positional conv, whose backward the counter over-counts."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from wav2vec2.model.flops import conv_block_steps, ctc_update_flops, model_flops, train_flops, transcribe_flops
from wav2vec2.config import base
from wav2vec2.model.losses import pretraining_loss
from wav2vec2.model.wav2vec2 import Wav2Vec2Model

SAMPLES = 12_000  # 0.75 s: T = 37, padded to 38 in the layers


def _by_component(counter: FlopCounterMode) -> dict[str, int]:
    """FlopCounterMode's per-module totals, summed into the benchmark's components."""
    counts = {mod: sum(ops.values()) for mod, ops in counter.get_flop_counts().items()}
    root = "Wav2Vec2Model"
    layers = [m for m in counts if m.startswith(f"{root}.encoder.layers.") and m.count(".") == 3]
    out: dict[str, int] = defaultdict(int)
    out["cnn"] = counts.get(f"{root}.feature_encoder", 0)
    out["pos_conv"] = counts.get(f"{root}.encoder.pos_conv", 0)
    out["attention"] = sum(counts.get(f"{m}.self_attn", 0) for m in layers)
    out["ffn"] = sum(counts.get(f"{m}.fc1", 0) + counts.get(f"{m}.fc2", 0) for m in layers)
    out["quantizer"] = counts.get(f"{root}.quantizer", 0)
    out["projections"] = sum(counts.get(f"{root}.{n}", 0) for n in ("post_extract_proj", "project_q", "final_proj"))
    out["total"] = counts[root]
    return dict(out)


@pytest.fixture(scope="module")
def measured():
    torch.manual_seed(0)
    cfg = base()
    cfg.transformer.num_layers = 2  # BASE widths; the count is per layer, and this keeps it fast
    cfg.transformer.layerdrop = 0.0
    model = Wav2Vec2Model(cfg).train()
    source = torch.randn(2, SAMPLES)
    gen = torch.Generator().manual_seed(0)
    # One counter over forward and backward: it attributes the backward to modules only then.
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        out = model(source, temperature=2.0, generator=gen)
        loss = pretraining_loss(out, cfg.loss).total
        forward = _by_component(counter)
        loss.backward()
    total = {mod: sum(ops.values()) for mod, ops in counter.get_flop_counts().items()}
    return cfg, int(out.time_mask[0].sum()), forward, total


def test_forward_flops_match_the_counter_per_component(measured):
    cfg, M, counted, _ = measured
    ours = model_flops(cfg, 2, SAMPLES, M)
    analytic = {
        "cnn": ours["cnn"], "pos_conv": ours["pos_conv"],
        "attention": ours["attention_proj"] + ours["attention_scores"], "ffn": ours["ffn"],
        "quantizer": ours["quantizer"], "projections": ours["projections"],
    }
    analytic["total"] = sum(analytic.values())  # everything but the logits
    for name, value in analytic.items():
        assert value == pytest.approx(counted[name], rel=1e-3), name


def test_update_is_three_forwards_but_for_the_positional_conv(measured):
    cfg, M, _, total = measured
    ours = model_flops(cfg, 2, SAMPLES, M)
    pos_conv = total["Wav2Vec2Model.encoder.pos_conv"]  # forward + backward
    assert pos_conv > 3 * ours["pos_conv"]  # the counter's over-count this test leaves out
    forward_wo_pos = sum(v for k, v in ours.items() if k not in ("pos_conv", "logits"))
    # The first conv computes no input gradient (audio): one forward's worth of it less.
    fe = cfg.feature_encoder
    first_conv = 2 * 2 * ((SAMPLES - fe.conv_kernels[0]) // fe.conv_strides[0] + 1) * fe.conv_dims[0] * fe.conv_kernels[0]
    assert total["Global"] - pos_conv == pytest.approx(3 * forward_wo_pos - first_conv, rel=1e-3)


def test_conv_block_steps_end_at_the_models_frame_count():
    """The per-block steps the CNN count uses: one per block, shrinking, the last = T."""
    fe = base().feature_encoder
    steps = conv_block_steps(fe, SAMPLES)
    assert len(steps) == len(fe.conv_kernels)
    assert steps == sorted(steps, reverse=True) and steps[0] == (SAMPLES - 10) // 5 + 1
    assert steps[-1] == fe.num_frames(SAMPLES) == 37


def test_train_flops_per_audio_second_at_4s():
    """The issue's figure: ~43 GFLOP per audio-second for a BASE update at 4 s."""
    cfg = base()
    per_audio_s = train_flops(cfg, 2, 64_000, 98) / 8.0
    assert 40e9 < per_audio_s < 46e9


def test_ctc_update_counts_backward_only_through_what_is_trained():
    """A CTC update: 3x the head; the encoder 3x unless frozen (1x); the CNN 3x only when it
    gets gradients (`grad_mult` > 0), else 1x. Transcription is one forward."""
    cfg = base()
    forward = transcribe_flops(cfg, 2, 64_000, 32)
    cfg.feature_encoder.grad_mult = 1.0
    assert ctc_update_flops(cfg, 2, 64_000, 32) == pytest.approx(3 * forward)
    cfg.feature_encoder.grad_mult = 0.0
    frozen_cnn = ctc_update_flops(cfg, 2, 64_000, 32)
    assert forward < ctc_update_flops(cfg, 2, 64_000, 32, frozen_encoder=True) < frozen_cnn < 3 * forward
