"""`fsdp-plan`: peak memory per GPU of pretraining 1B, 2B and 7B models on 8 x 80 GB, under
DDP and FSDP2, with and without activation checkpointing. On paper: nothing is run, no GPU
here. The shapes are real (the models are built on the meta device and their parameters
counted): `1B` is XLS-R 1B's and omniASR-W2V-1B's (48 x 1280, FFN 5120: 965,514,752
parameters, omnilingual-asr's published count), `2B` XLS-R 2B's (48 x 1920, FFN 7680), `7B`
omniASR-W2V-7B's (128 x 2048, FFN 8192: 6,488,487,168, its published count); LARGE-style
pre-LN, layer-norm feature encoder, final_dim 1024.

The model, per GPU, in bytes (P parameters, N GPUs, T frames per GPU, D width, L layers):
- states: fp32 parameters, fp32 gradients, Adam's two moments = 16 P, divided by N under
  FSDP2 (full sharding, as `train/sharding.py` shards); DDP keeps all 16 P (and its gradient
  buckets, another 4 P, not counted: a lower bound).
- FSDP2 working set: the current and the prefetched Transformer layer all-gathered in bf16
  (2 x 2 B per layer parameter), that layer's unsharded bf16 gradient and its fp32 copy for
  the reduce-scatter (6 B); the other units (feature encoder, quantizer, root) are gathered
  in fp32 with their gradients (8 B per parameter) for the whole step.
- activations: 34 T D bytes per Transformer layer, Korthikanti et al. (2022)'s count for a
  16-bit layer with memory-efficient attention (no T x T scores); autocast keeps the residual
  stream and LayerNorm outputs in fp32 here, so the truth is somewhat above. Checkpointed:
  each layer keeps its fp32 input (4 T D) and one layer at a time is recomputed (34 T D).
  Feature encoder: three fp32 tensors per conv block (conv, norm, GELU outputs), or its input
  when checkpointed plus the largest block recomputed. Loss: fp32 quantizer logits (T x G V,
  x3) and contrastive logits (half the frames masked, x (K + 1), x2).
- a fixed 3 GB for the CUDA context, NCCL buffers and the allocator's slack, and 90% of the
  card usable (fragmentation).

`frames` is T: the recipes' 1.2-1.4M samples per GPU are 3,750-4,375 frames; the largest T
that fits is solved from the same (linear) model.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from wav2vec2.bench.common import row
from wav2vec2.config import ModelConfig, large
from wav2vec2.model.wav2vec2 import Wav2Vec2Model

GB = 1e9
SHAPES = {"LARGE": (24, 1024, 4096), "1B": (48, 1280, 5120), "2B": (48, 1920, 7680), "7B": (128, 2048, 8192)}
"""(layers, width, FFN width) of each size."""
ACTIVATION_BYTES = 34
"""Bytes per frame per model dimension a 16-bit Transformer layer keeps for backward
(Korthikanti et al. 2022, with memory-efficient attention)."""
FIXED_GB = 3.0
USABLE = 0.9


def model_config(size: str) -> ModelConfig:
    num_layers, dim, ffn = SHAPES[size]
    cfg = large()
    cfg.transformer.num_layers, cfg.transformer.embed_dim, cfg.transformer.ffn_dim = num_layers, dim, ffn
    if size != "LARGE":
        cfg.final_dim = 1024
    return cfg


@dataclass
class Counts:
    total: int
    per_layer: int
    """Parameters of one Transformer layer."""


def count_parameters(cfg: ModelConfig) -> Counts:
    with torch.device("meta"):  # shapes only: no memory, no init
        model = Wav2Vec2Model(cfg)
    layer = sum(p.numel() for p in model.encoder.layers[0].parameters())
    return Counts(sum(p.numel() for p in model.parameters()), layer)


def memory_model(cfg: ModelConfig, *, frames: int, num_gpus: int = 8, strategy: str = "fsdp",
                 checkpointing: bool = False) -> dict[str, float]:
    """Peak bytes per GPU by part (module docstring): states, working, activations, fixed, total."""
    counts = count_parameters(cfg)
    L, D = cfg.transformer.num_layers, cfg.transformer.embed_dim
    rest = counts.total - L * counts.per_layer
    if strategy == "fsdp":
        states = 16 * counts.total / num_gpus
        working = 10 * counts.per_layer + 8 * rest
    elif strategy == "ddp":
        states, working = 16 * counts.total, 0.0
    else:
        raise ValueError(f"strategy must be fsdp or ddp, got {strategy!r}")
    per_layer = ACTIVATION_BYTES * frames * D
    transformer = L * 4 * frames * D + per_layer if checkpointing else L * per_layer
    fe = cfg.feature_encoder
    lengths, length = [], frames * fe.hop
    for stride in fe.conv_strides:
        length //= stride
        lengths.append(length)
    blocks = [3 * 4 * n * c for n, c in zip(lengths, fe.conv_dims)]
    inputs = [4 * frames * fe.hop] + [4 * n * c for n, c in zip(lengths[:-1], fe.conv_dims[:-1])]
    encoder = sum(inputs) + max(blocks) if checkpointing else sum(blocks)
    q = cfg.quantizer
    loss = 3 * 4 * frames * q.num_codebooks * q.num_entries + 2 * 4 * (frames // 2) * (cfg.num_negatives + 1)
    parts = {"states": states, "working": working, "activations": transformer + encoder + loss,
             "fixed": FIXED_GB * GB}
    return {**parts, "total": sum(parts.values()), "parameters": counts.total}


def max_frames(cfg: ModelConfig, *, card_gb: float = 80.0, **kwargs) -> int:
    """The largest T per GPU whose peak fits `USABLE` of the card (0: not even one frame)."""
    a = memory_model(cfg, frames=0, **kwargs)["total"]
    b = memory_model(cfg, frames=10_000, **kwargs)["total"] - a
    return max(0, int((USABLE * card_gb * GB - a) / b * 10_000))


def bench_fsdp_plan(args: argparse.Namespace) -> list[dict]:
    """The table: each size x strategy x checkpointing, at `--frames` per GPU."""
    print(f"on paper: {args.gpus} x {args.card_gb:g} GB, bf16 autocast, Adam, {args.frames} frames "
          f"({args.frames * 320 / 16000:.0f} s of audio) per GPU")
    print(f"{'model':6} {'params':>7} {'strategy':8} {'ckpt':>4} {'states':>7} {'working':>8} {'activ.':>7} "
          f"{'total GB':>8} {'fits':>4} {'max frames':>10}")
    out = []
    for size in args.sizes:
        cfg = model_config(size)
        for strategy in ("ddp", "fsdp"):
            for ckpt in (False, True):
                kw = dict(num_gpus=args.gpus, strategy=strategy, checkpointing=ckpt)
                m = memory_model(cfg, frames=args.frames, **kw)
                fits = m["total"] <= USABLE * args.card_gb * GB
                most = max_frames(cfg, card_gb=args.card_gb, **kw)
                print(f"{size:6} {m['parameters'] / 1e9:6.2f}B {strategy:8} {'yes' if ckpt else 'no':>4} "
                      f"{m['states'] / GB:7.1f} {m['working'] / GB:8.1f} {m['activations'] / GB:7.1f} "
                      f"{m['total'] / GB:8.1f} {'yes' if fits else 'no':>4} {most:10d}")
                out.append(row("fsdp-plan", f"{size} {strategy}{' ckpt' if ckpt else ''}", strategy, "bf16",
                               peak_mem_mb=m["total"] / 1e6, parameters=m["parameters"], fits=fits,
                               max_frames=most, **{k: m[k] / 1e6 for k in ("states", "working", "activations")}))
    return out
