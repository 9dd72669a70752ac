"""CTC fine-tuning head (paper §4, fairseq `Wav2VecCtc`, transformers `Wav2Vec2ForCTC`).

The pretrained encoder with its pretraining modules removed (`mask_emb` kept: fine-tuning
masks too), dropout, and a Linear from the model width to the vocabulary. Letters come out
at one distribution per 20 ms frame; index 0 is the CTC blank (`wav2vec2.data.labels`).
With `model.upstream` (`upstream.py`) the Linear reads a weighted sum of the encoder's
hidden states, and the encoder may be frozen: SUPERB's PR/ASR probes.

Shapes: B batch, L samples, T frames, D model dim, V vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wav2vec2.config import ModelConfig
from wav2vec2.model.dropout import Dropout
from wav2vec2.model.upstream import DownstreamModel


@dataclass
class CtcOutput:
    logits: Tensor
    """(B, T, V) unnormalised scores; at padded frames the blank is certain (0 for blank,
    -inf elsewhere), as fairseq's `get_logits`, so decoding emits nothing there."""
    lengths: Tensor
    """(B,) long: unpadded frames of each utterance."""
    padding_mask: Tensor | None
    """(B, T) bool frame padding mask, True = pad (None without padding)."""
    layer_weights: Tensor | None = None
    """(K,) softmaxed weights of the hidden states the head read (`model.upstream.layer_sum`)."""


class Wav2Vec2Ctc(DownstreamModel):
    """wav2vec 2.0 encoder (or a weighted sum of its hidden states) + final dropout + Linear(D, V)."""

    def __init__(self, cfg: ModelConfig, *, vocab_size: int, final_dropout: float = 0.0, blank: int = 0) -> None:
        super().__init__(cfg)
        self.blank = blank
        self.final_dropout = Dropout(final_dropout)
        self.proj = nn.Linear(cfg.transformer.embed_dim, vocab_size)
        self.reset_head()
        if cfg.feature_encoder.grad_mult == 0:
            # Never trained (it runs under no_grad): out of the optimizer and out of DDP's
            # gradient bookkeeping, which would otherwise wait for its gradients.
            self.wav2vec2.feature_encoder.requires_grad_(False)

    def reset_head(self) -> None:
        """Xavier-uniform weights and zero bias, as fairseq's `Linear` helper."""
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(
        self,
        source: Tensor,
        padding_mask: Tensor | None = None,
        *,
        freeze_encoder: bool = False,
        generator: torch.Generator | None = None,
    ) -> CtcOutput:
        """Shape: source (B, L), padding_mask (B, L) bool True = pad -> logits (B, T, V).

        In training mode the encoder applies the time and channel masks of `cfg.masking`
        (drawn from `generator`), as fairseq fine-tuning does. `freeze_encoder` runs the
        whole encoder under no_grad, so only the head trains (fairseq's
        `freeze_finetune_updates`); `model.upstream.freeze` does always, in eval mode.
        """
        enc = self.upstream(source, padding_mask, freeze_encoder=freeze_encoder, generator=generator)
        logits = self.proj(self.final_dropout(enc.x))  # (B, T, D) -> (B, T, V)
        B, T, _ = logits.shape
        if enc.padding_mask is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=logits.device)
        else:
            lengths = (~enc.padding_mask).sum(dim=1)
            blank_only = torch.full_like(logits[0, 0], float("-inf"))
            blank_only[self.blank] = 0.0
            logits = torch.where(enc.padding_mask.unsqueeze(-1), blank_only.to(logits.dtype), logits)
        return CtcOutput(logits=logits, lengths=lengths, padding_mask=enc.padding_mask,
                         layer_weights=enc.layer_weights)


def ctc_loss_sum(logits: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor, *, blank: int = 0) -> Tensor:
    """-log p(target | audio) summed over the batch, as fairseq's `ctc` criterion: log-softmax
    in fp32, blank 0, sum reduction, and `zero_infinity` (an utterance with fewer frames
    than its transcript needs contributes 0 instead of inf).

    Shape: logits (B, T, V), lengths (B,) frames, targets (B, S) padded label ids (read up
    to target_lengths (B,), so the padding value does not matter) -> 0-dim fp32.
    """
    lprobs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (B, T, V) -> (T, B, V)
    # Padded (B, S) targets: no host sync to pack them.
    return F.ctc_loss(lprobs, targets, lengths, target_lengths, blank=blank, reduction="sum", zero_infinity=True)
