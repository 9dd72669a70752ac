"""Context network: convolutional positional embedding + Transformer (paper §2).

fairseq `TransformerEncoder` / `TransformerSentenceEncoderLayer`, with attention through
`F.scaled_dot_product_attention` (flash / memory-efficient kernels on CUDA) and a float
additive padding mask.

Shapes: B batch, T frames, D model dim, H heads, Dh = D / H.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm
from torch.utils.checkpoint import checkpoint

from wav2vec2.config import TransformerConfig
from wav2vec2.model.cpu_attention import dropout_attention
from wav2vec2.model.dropout import Dropout


class ConvPositionalEmbedding(nn.Module):
    """x -> GELU(conv(x)) with a grouped, weight-normalised Conv1d of even kernel width.

    The conv pads k/2 on both sides, so an even kernel yields T+1 steps; the last is dropped
    ("SamePad"). Weight norm is over dim 2: one gain per kernel tap, as fairseq.
    """

    def __init__(self, dim: int, *, kernel: int, groups: int) -> None:
        super().__init__()
        self.kernel = kernel
        conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        self._init_conv(conv)
        self.conv = weight_norm(conv, name="weight", dim=2)

    @staticmethod
    def _init_conv(conv: nn.Conv1d) -> None:
        # N(0, sqrt(4 / (k * D))) weights, zero bias (fairseq).
        std = math.sqrt(4.0 / (conv.kernel_size[0] * conv.in_channels))
        nn.init.normal_(conv.weight, mean=0.0, std=std)
        nn.init.zeros_(conv.bias)

    def reset_parameters(self) -> None:
        """Re-draw the raw weight and reset the weight-norm gain g = ||v|| per tap."""
        param = self.conv.parametrizations.weight
        v = param.original1
        std = math.sqrt(4.0 / (self.kernel * v.shape[0]))
        with torch.no_grad():
            nn.init.normal_(v, mean=0.0, std=std)
            param.original0.copy_(torch.linalg.vector_norm(v, dim=(0, 1), keepdim=True))
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: x (B, T, D) -> (B, T, D)."""
        y = self.conv(x.transpose(1, 2))  # (B, T, D) -> (B, D, T+1) for an even kernel
        if self.kernel % 2 == 0:
            y = y[:, :, :-1]
        return F.gelu(y).transpose(1, 2)  # (B, D, T) -> (B, T, D)


class SelfAttention(nn.Module):
    """Multi-head self-attention with q/k/v/out projections (with bias), fairseq layout."""

    def __init__(self, dim: int, *, num_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(
                f"transformer.embed_dim ({dim}) must be divisible by transformer.num_heads ({num_heads})"
            )
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_bias: Tensor | None) -> Tensor:
        """Shape: x (B, T, D), attn_bias (B, 1, 1, T) additive or None -> (B, T, D)."""
        B, T, D = x.shape
        H = self.num_heads

        def heads(t: Tensor) -> Tensor:
            return t.view(B, T, H, D // H).transpose(1, 2)  # (B, T, D) -> (B, H, T, Dh)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        if self.training and self.dropout > 0 and x.device.type == "cpu":
            # SDPA has no fused CPU kernel with dropout; its math path is 2x slower (cpu_attention.py).
            out = dropout_attention(q, k, v, attn_bias, self.dropout)
        else:
            # SDPA scales q.k by Dh^-0.5, as fairseq does to q before the product.
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_bias, dropout_p=self.dropout if self.training else 0.0
            )
        out = out.transpose(1, 2).reshape(B, T, D)  # (B, H, T, Dh) -> (B, T, D)
        return self.out_proj(out)


class EncoderLayer(nn.Module):
    """One Transformer layer, post-LN (BASE) or pre-LN (LARGE, `layer_norm_first`)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        D = cfg.embed_dim
        self.layer_norm_first = cfg.layer_norm_first
        self.self_attn = SelfAttention(D, num_heads=cfg.num_heads, dropout=cfg.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(D)
        self.fc1 = nn.Linear(D, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, D)
        self.final_layer_norm = nn.LayerNorm(D)
        self.dropout = Dropout(cfg.dropout)
        self.activation_dropout = Dropout(cfg.activation_dropout)

    def _ffn(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.activation_dropout(F.gelu(self.fc1(x)))))

    def forward(self, x: Tensor, attn_bias: Tensor | None) -> Tensor:
        """Shape: x (B, T, D) -> (B, T, D)."""
        if self.layer_norm_first:
            x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), attn_bias))
            return x + self._ffn(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x + self.dropout(self.self_attn(x, attn_bias)))
        return self.final_layer_norm(x + self._ffn(x))


class ContextNetwork(nn.Module):
    """Positional conv, then the Transformer layers with LayerDrop.

    Post-LN applies the encoder LayerNorm before the layers; pre-LN after the last one.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.pos_conv = ConvPositionalEmbedding(
            cfg.embed_dim, kernel=cfg.conv_pos, groups=cfg.conv_pos_groups
        )
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.dropout = Dropout(cfg.dropout)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))
        self.layerdrop_generator: torch.Generator | None = None
        """Where LayerDrop draws come from: None is torch's global RNG (each rank its own
        stream). Sharded training (`train/sharding.py`) sets a CPU generator that every rank
        reseeds alike before each micro-batch: a layer skipped on one rank and run on another
        would pair one rank's all-gather of its weights with another layer's on the next.
        fairseq seeds every rank alike, so its LayerDrop is shared across ranks too."""

    def reset_parameters(self) -> None:
        """BERT init of every Linear in the encoder: N(0, 0.02) weights, zero bias.
        LayerNorms get weight 1, bias 0; the positional conv its own init."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        self.pos_conv.reset_parameters()

    def forward(
        self,
        x: Tensor,
        padding_mask: Tensor | None = None,
        *,
        return_hidden_states: bool = False,
    ) -> tuple[Tensor, list[Tensor]]:
        """Shape: x (B, T, D), padding_mask (B, T) True = pad -> ((B, T, D), hidden states).

        With `return_hidden_states`, the list holds num_layers + 1 tensors (B, T, D): [0] is
        the input of the first layer (after the positional conv, the post-LN encoder
        LayerNorm and dropout), [i] the output of layer i; for pre-LN the last one is after
        the final LayerNorm, so it always equals the returned output. This is transformers
        4.x's `hidden_states`; 5.x returns the last pre-LN one before that LayerNorm.
        Empty otherwise.
        """
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x)
        if not self.cfg.layer_norm_first:
            x = self.layer_norm(x)

        # Pad T to a multiple of `required_seq_len_multiple`; padded keys are masked out.
        num_frames = x.shape[1]
        pad = -num_frames % self.cfg.required_seq_len_multiple
        if pad:
            x = F.pad(x, (0, 0, 0, pad))  # (B, T, D) -> (B, T+pad, D)
            if padding_mask is None:
                padding_mask = torch.zeros(x.shape[0], num_frames, dtype=torch.bool, device=x.device)
            padding_mask = F.pad(padding_mask, (0, pad), value=True)
        attn_bias = None
        if padding_mask is not None:
            # Float additive mask: SDPA's fused kernels take it; a bool mask is slower (fairseq2 #438).
            attn_bias = torch.zeros(padding_mask.shape, dtype=x.dtype, device=x.device)
            attn_bias = attn_bias.masked_fill(padding_mask, torch.finfo(x.dtype).min)
            attn_bias = attn_bias[:, None, None, :]  # (B, T) -> (B, 1, 1, T)

        x = self.dropout(x)
        hidden_states: list[Tensor] = []
        for layer in self.layers:
            if return_hidden_states:
                hidden_states.append(x[:, :num_frames])
            # LayerDrop: a CPU draw from torch's global RNG, so deciding needs no device sync.
            # fairseq runs the layer when u > p.
            drop = self.training and self.cfg.layerdrop > 0
            if not drop or float(torch.rand((), generator=self.layerdrop_generator)) > self.cfg.layerdrop:
                if self.cfg.activation_checkpointing and self.training and torch.is_grad_enabled():
                    # Keeps only the layer's input; the recompute replays the dropout RNG.
                    x = checkpoint(layer, x, attn_bias, use_reentrant=False)
                else:
                    x = layer(x, attn_bias)
        if self.cfg.layer_norm_first:
            x = self.layer_norm(x)
        if return_hidden_states:
            hidden_states.append(x[:, :num_frames])
        return x[:, :num_frames], hidden_states
