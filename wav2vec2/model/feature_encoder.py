"""Convolutional feature encoder: raw waveform -> latent speech representations z.

Paper §2 ("Feature encoder"), fairseq `ConvFeatureExtractionModel`.

Shapes: B batch, L waveform samples, C conv channels, T frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from wav2vec2.config import FeatureEncoderConfig
from wav2vec2.model.dropout import Dropout


class GradMultiply(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `scale` backward (fairseq GradMultiply)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


class Fp32GroupNorm(nn.GroupNorm):
    """GroupNorm computed in fp32 whatever the autocast dtype (a spec fp32 island)."""

    def forward(self, x: Tensor) -> Tensor:
        out = F.group_norm(
            x.float(),
            self.num_groups,
            self.weight.float() if self.weight is not None else None,
            self.bias.float() if self.bias is not None else None,
            self.eps,
        )
        return out.type_as(x)


class Fp32ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, T) tensor, in fp32."""

    def forward(self, x: Tensor) -> Tensor:
        x_fp32 = x.float().transpose(1, 2)  # (B, C, T) -> (B, T, C)
        out = F.layer_norm(
            x_fp32,
            self.normalized_shape,
            self.weight.float() if self.weight is not None else None,
            self.bias.float() if self.bias is not None else None,
            self.eps,
        )
        return out.transpose(1, 2).type_as(x)  # (B, T, C) -> (B, C, T)


class ConvBlock(nn.Module):
    """conv -> dropout -> [norm] -> GELU. fairseq puts the norm after the dropout."""

    def __init__(
        self, in_dim: int, out_dim: int, *, kernel: int, stride: int, bias: bool,
        dropout: float, norm: nn.Module | None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, stride=stride, bias=bias)
        self.dropout = Dropout(dropout)
        self.norm = norm

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.conv.weight)
        if self.conv.bias is not None:
            # fairseq leaves the bias at PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
            bound = 1 / (self.conv.in_channels * self.conv.kernel_size[0]) ** 0.5
            nn.init.uniform_(self.conv.bias, -bound, bound)
        if self.norm is not None:
            self.norm.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(self.conv(x))
        if self.norm is not None:
            x = self.norm(x)
        return F.gelu(x)


class ConvFeatureEncoder(nn.Module):
    """wav (B, L) -> z (B, C, T), with C = conv_dims[-1] and T = output_lengths(L).

    Mode "default" normalises only block 0 with GroupNorm(C, C) (each channel over time,
    per utterance); mode "layer_norm" normalises every block over channels.
    The gradient multiplier (`grad_mult`) is applied by `Wav2Vec2Model`, not here, so the
    encoder stays a plain module for feature extraction.
    """

    def __init__(self, cfg: FeatureEncoderConfig) -> None:
        super().__init__()
        if cfg.mode not in ("default", "layer_norm"):
            raise ValueError(
                f"feature_encoder.mode must be 'default' or 'layer_norm', got {cfg.mode!r}"
            )
        if not len(cfg.conv_dims) == len(cfg.conv_kernels) == len(cfg.conv_strides):
            raise ValueError(
                "feature_encoder.conv_dims, conv_kernels and conv_strides must have the same "
                f"length, got {len(cfg.conv_dims)}, {len(cfg.conv_kernels)}, {len(cfg.conv_strides)}"
            )
        self.cfg = cfg
        self.activation_checkpointing = cfg.activation_checkpointing
        blocks = []
        in_dim = 1
        for i, (dim, kernel, stride) in enumerate(
            zip(cfg.conv_dims, cfg.conv_kernels, cfg.conv_strides)
        ):
            norm: nn.Module | None = None
            if cfg.mode == "layer_norm":
                norm = Fp32ChannelLayerNorm(dim)
            elif i == 0:
                norm = Fp32GroupNorm(dim, dim)
            blocks.append(
                ConvBlock(in_dim, dim, kernel=kernel, stride=stride, bias=cfg.conv_bias,
                          dropout=cfg.dropout, norm=norm)
            )
            in_dim = dim
        self.blocks = nn.ModuleList(blocks)
        self.out_dim = in_dim

    def reset_parameters(self) -> None:
        for block in self.blocks:
            block.reset_parameters()

    @property
    def receptive_field(self) -> int:
        """Samples needed for one output frame (400 for the paper's encoder)."""
        return self.cfg.receptive_field

    def output_lengths(self, lengths: Tensor | int) -> Tensor | int:
        """Frames produced from `lengths` samples (`FeatureEncoderConfig.output_lengths`)."""
        return self.cfg.output_lengths(lengths)

    def forward(self, wav: Tensor) -> Tensor:
        """Shape: wav (B, L) -> (B, C, T)."""
        if wav.dim() != 2:
            raise ValueError(f"source must have shape (B, L), got {tuple(wav.shape)}")
        if wav.shape[1] < self.receptive_field:
            raise ValueError(
                f"source has {wav.shape[1]} samples; the feature encoder needs at least "
                f"{self.receptive_field} for one frame"
            )
        x = wav.unsqueeze(1)  # (B, L) -> (B, 1, L)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            # Keeps only the block's input; the recompute replays the dropout RNG.
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return x  # (B, C, T)


def frame_padding_mask(
    sample_padding_mask: Tensor, encoder: ConvFeatureEncoder, num_frames: int
) -> Tensor:
    """Frame-level padding mask (True = pad) from a sample-level one (True = pad).

    A frame is padding when it lies at or past the encoder output length of the utterance's
    unpadded sample count (fairseq and transformers agree on this rule).

    Shape: sample_padding_mask (B, L) -> (B, T).
    """
    sample_lengths = (~sample_padding_mask).sum(dim=1)  # (B,)
    frame_lengths = encoder.output_lengths(sample_lengths).clamp(min=0)
    frames = torch.arange(num_frames, device=sample_padding_mask.device)
    return frames.unsqueeze(0) >= frame_lengths.unsqueeze(1)  # (B, T)
