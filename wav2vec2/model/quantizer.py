"""Gumbel-softmax product quantizer (paper §2 "Quantization module", §3.2 diversity loss).

fairseq `GumbelVectorQuantizer` with `combine_groups=False`, `time_first=True`.

Shapes: N frames to quantize, C input dim, G codebooks, V entries per codebook,
E = codebook_dim / G (one codeword).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wav2vec2.config import QuantizerConfig


def gumbel_temperature(num_updates: int, cfg: QuantizerConfig) -> float:
    """tau(u) = max(max_temp * temp_decay**u, min_temp), u = completed optimizer updates.

    A pure function of the update count (not of forward calls), so gradient accumulation,
    skipped fp16 updates and resumption cannot shift it.
    """
    return max(cfg.max_temp * cfg.temp_decay**num_updates, cfg.min_temp)


def perplexity(probs: Tensor) -> Tensor:
    """Sum over codebooks of exp(entropy) of the frame-averaged distribution.

    Shape: probs (N, G, V) -> 0-dim. Range [G, G*V]. The 1e-7 is fairseq's.
    """
    avg = probs.mean(dim=0)  # (N, G, V) -> (G, V)
    return torch.exp(-(avg * torch.log(avg + 1e-7)).sum(dim=-1)).sum()


@dataclass
class QuantizerOutput:
    q: Tensor
    """(N, codebook_dim) quantized vectors (concatenated codewords)."""
    prob_perplexity: Tensor
    """0-dim, with grad: perplexity of the softmax (tau = 1, no noise) averaged over frames."""
    code_perplexity: Tensor
    """0-dim, no grad: perplexity of the hard argmax codes (no noise) averaged over frames."""
    codes: Tensor
    """(N, G) long: chosen entry per codebook (noisy argmax in training, argmax in eval)."""


class GumbelVectorQuantizer(nn.Module):
    """Maps features to one of V entries in each of G codebooks and concatenates them.

    Training: straight-through hard Gumbel-softmax at temperature tau (forward = one-hot of
    argmax(logits + gumbel noise), backward = gradient of the soft sample). Eval: one-hot of
    argmax(logits). The softmaxes and perplexities run in fp32 (fairseq's fp32 island).
    """

    def __init__(self, cfg: QuantizerConfig, *, input_dim: int, codebook_dim: int) -> None:
        super().__init__()
        if codebook_dim % cfg.num_codebooks != 0:
            raise ValueError(
                f"quantizer codebook_dim ({codebook_dim}) must be divisible by "
                f"quantizer.num_codebooks ({cfg.num_codebooks})"
            )
        self.num_codebooks = cfg.num_codebooks
        self.num_entries = cfg.num_entries
        self.codebook_dim = codebook_dim
        num_vars = cfg.num_codebooks * cfg.num_entries
        # (1, G*V, E): fairseq's layout, kept so checkpoints map one to one.
        self.codebook = nn.Parameter(torch.empty(1, num_vars, codebook_dim // cfg.num_codebooks))
        layers: list[nn.Module] = []
        in_dim = input_dim
        for _ in range(cfg.depth - 1):
            layers += [nn.Linear(in_dim, input_dim * cfg.hidden_factor), nn.GELU()]
            in_dim = input_dim * cfg.hidden_factor
        layers.append(nn.Linear(in_dim, num_vars))
        self.weight_proj = layers[0] if cfg.depth == 1 else nn.Sequential(*layers)

    @property
    def num_vars(self) -> int:
        return self.num_codebooks * self.num_entries

    def reset_parameters(self) -> None:
        """Codebook U[0, 1); final logits projection N(0, 1) weights and zero bias (fairseq)."""
        nn.init.uniform_(self.codebook)
        last = self.weight_proj if isinstance(self.weight_proj, nn.Linear) else self.weight_proj[-1]
        nn.init.normal_(last.weight, mean=0.0, std=1.0)
        nn.init.zeros_(last.bias)
        if isinstance(self.weight_proj, nn.Sequential):
            for layer in list(self.weight_proj)[:-1]:
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()

    def extra_repr(self) -> str:
        return f"G={self.num_codebooks}, V={self.num_entries}, dim={self.codebook_dim}"

    def forward(
        self, x: Tensor, *, temperature: float, generator: torch.Generator | None = None
    ) -> QuantizerOutput:
        """Shape: x (N, C) -> QuantizerOutput with q (N, codebook_dim)."""
        num_frames = x.shape[0]
        G, V = self.num_codebooks, self.num_entries
        logits = self.weight_proj(x).view(num_frames, G, V)  # (N, C) -> (N, G, V)
        logits_fp32 = logits.float()

        with torch.no_grad():
            hard_codes = logits_fp32.argmax(dim=-1)  # (N, G)
            hard = F.one_hot(hard_codes, V).float()  # (N, G, V)
            code_perplexity = perplexity(hard)
        prob_perplexity = perplexity(torch.softmax(logits_fp32, dim=-1))

        if self.training:
            # Gumbel(0, 1) noise as -log(E), E ~ Exp(1), the way torch's gumbel_softmax draws it.
            gumbel = -torch.empty_like(logits_fp32).exponential_(generator=generator).log()
            soft = torch.softmax((logits_fp32 + gumbel) / temperature, dim=-1)
            codes = soft.argmax(dim=-1)
            one_hot = F.one_hot(codes, V).to(soft.dtype)
            weights = (one_hot - soft.detach() + soft).type_as(x)  # straight-through
        else:
            codes = hard_codes
            weights = hard.type_as(x)

        # Sum of one-hot x codeword per codebook, then concatenate the G codewords.
        codebook = self.codebook.view(G, V, -1).to(weights.dtype)  # (1, G*V, E) -> (G, V, E)
        q = torch.einsum("ngv,gve->nge", weights, codebook)  # (N, G, E)
        q = q.reshape(num_frames, -1)  # (N, G, E) -> (N, G*E)
        return QuantizerOutput(
            q=q, prob_perplexity=prob_perplexity, code_perplexity=code_perplexity, codes=codes
        )
