"""Analytical FLOPs of the models, per component: what MFU is measured with.

Counts the matrix products only (convolutions, linears, attention's QK^T and AV, the
quantizer's codebook product, the logits' dot products; a multiply-add = 2 FLOPs): norms,
activations, softmax and dropout are a few FLOPs per element and left out, as torch's
FlopCounterMode does (tests/bench/test_flops.py checks the count against it). A training
update costs 3x the forward (backward = 2 products per forward product), less what gets no
gradient. Here, below the training loop, so that the loop's log (MFU) and the benchmark
(`wav2vec2.bench`) use the same count.
"""

from __future__ import annotations

import dataclasses

from wav2vec2.config import FeatureEncoderConfig, ModelConfig

__all__ = ["conv_block_steps", "ctc_update_flops", "encoder_flops", "model_flops", "train_flops",
           "transcribe_flops"]


def conv_block_steps(fe: FeatureEncoderConfig, num_samples: int) -> list[int]:
    """Output steps of each conv block for `num_samples` of audio: the config's frame
    arithmetic applied to its first 1, 2, ... blocks (the last entry is the frame count)."""
    return [dataclasses.replace(fe, conv_kernels=fe.conv_kernels[:i], conv_strides=fe.conv_strides[:i])
            .output_lengths(num_samples) for i in range(1, len(fe.conv_kernels) + 1)]


def encoder_flops(cfg: ModelConfig, batch: int, num_samples: int) -> dict[str, float]:
    """One forward of what pretraining and fine-tuning share: the CNN, `post_extract_proj`
    (as "input_proj"), the positional conv and the Transformer layers, for `batch` utterances
    of `num_samples` (padded: the layers see the padded length)."""
    fe, t = cfg.feature_encoder, cfg.transformer
    B, D = batch, t.embed_dim
    out: dict[str, float] = {}
    # CNN: a Conv1d costs 2 * C_in * C_out * k per output step; audio comes in with 1 channel.
    steps = conv_block_steps(fe, num_samples)
    c_ins = [1] + list(fe.conv_dims[:-1])
    out["cnn"] = float(sum(2 * B * n * c_in * c_out * k
                           for n, c_in, c_out, k in zip(steps, c_ins, fe.conv_dims, fe.conv_kernels)))
    C, T = fe.conv_dims[-1], steps[-1]
    if cfg.crop_seq_to_multiple > 1:
        T -= T % cfg.crop_seq_to_multiple
    Tp = T + (-T % t.required_seq_len_multiple)  # the layers see T padded to the multiple
    out["input_proj"] = 2 * B * T * C * D if C != D else 0
    # Grouped positional conv, pad k/2 both sides: T+1 output steps for an even kernel.
    out["pos_conv"] = 2 * B * (T + 1 - t.conv_pos % 2) * D * (D // t.conv_pos_groups) * t.conv_pos
    L = t.num_layers
    out["attention_proj"] = L * 4 * 2 * B * Tp * D * D  # q, k, v, out
    out["attention_scores"] = L * 2 * 2 * B * Tp * Tp * D  # QK^T and AV over all heads
    out["ffn"] = L * 2 * 2 * B * Tp * D * t.ffn_dim
    out["frames"] = T  # not FLOPs: the frame count the heads below need
    return out


def model_flops(cfg: ModelConfig, batch: int, num_samples: int, num_masked: float) -> dict[str, float]:
    """FLOPs of one pretraining *forward*, per component, with `num_masked` masked frames per
    utterance (a mean is exact: every term is linear in it)."""
    q, t = cfg.quantizer, cfg.transformer
    B, D, Fd = batch, t.embed_dim, cfg.final_dim or t.embed_dim
    enc = encoder_flops(cfg, batch, num_samples)
    out = {"cnn": enc["cnn"]}
    C = cfg.feature_encoder.conv_dims[-1]
    M, K = num_masked, cfg.num_negatives
    vq = q.codebook_dim or Fd
    out["projections"] = enc["input_proj"] + 2 * B * M * vq * Fd + 2 * B * M * D * Fd  # + project_q, final_proj
    for k in ("pos_conv", "attention_proj", "attention_scores", "ffn"):
        out[k] = enc[k]
    G, V = q.num_codebooks, q.num_entries
    hidden = C * q.hidden_factor
    logits_in = [C] + [hidden] * (q.depth - 1)
    logits_out = [hidden] * (q.depth - 1) + [G * V]
    qproj = sum(2 * B * M * i * o for i, o in zip(logits_in, logits_out))
    out["quantizer"] = qproj + 2 * B * M * V * vq  # logits MLP + one-hot x codebook per group
    out["logits"] = 2 * B * M * (1 + K) * Fd  # context . candidate, as one batched product
    return out


def train_flops(cfg: ModelConfig, batch: int, num_samples: int, num_masked: float) -> float:
    """FLOPs of one pretraining update: 3 forwards (see `model_flops`)."""
    return 3.0 * sum(model_flops(cfg, batch, num_samples, num_masked).values())


def _ctc_parts(cfg: ModelConfig, batch: int, num_samples: int, vocab_size: int) -> tuple[float, float, float]:
    """(CNN, rest of the encoder, CTC head) FLOPs of one CTC forward."""
    enc = encoder_flops(cfg, batch, num_samples)
    head = 2.0 * batch * enc["frames"] * cfg.transformer.embed_dim * vocab_size
    rest = sum(v for k, v in enc.items() if k not in ("cnn", "frames"))
    return enc["cnn"], rest, head


def transcribe_flops(cfg: ModelConfig, batch: int, num_samples: int, vocab_size: int) -> float:
    """FLOPs of one CTC forward (transcription: no backward)."""
    return sum(_ctc_parts(cfg, batch, num_samples, vocab_size))


def ctc_update_flops(cfg: ModelConfig, batch: int, num_samples: int, vocab_size: int, *,
                     frozen_encoder: bool = False) -> float:
    """FLOPs of one CTC fine-tuning update: forward, and a backward (2x) through what is
    trained: the head always, the encoder unless `frozen_encoder` (the recipes' first
    updates), the CNN only if `feature_encoder.grad_mult` > 0."""
    cnn, rest, head = _ctc_parts(cfg, batch, num_samples, vocab_size)
    backward = head + (0.0 if frozen_encoder else rest + (cnn if cfg.feature_encoder.grad_mult > 0 else 0.0))
    return cnn + rest + head + 2.0 * backward
