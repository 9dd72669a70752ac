"""Utterance classification head: SUPERB's head of keyword spotting, speaker ID and emotion
recognition (s3prl's `projector` + `UtteranceLevel` with mean pooling).

The encoder (or a weighted sum of its hidden states, `model.upstream`) -> a projector
Linear(D, P) at every frame -> the mean over the utterance's unpadded frames -> a Linear(P, N)
to the classes. Padded frames never reach the mean, so an utterance gets the same logits
alone as in a padded batch.

Shapes: B batch, L samples, T frames, D model dim, P projector dim, N classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from wav2vec2.config import ModelConfig
from wav2vec2.model.upstream import DownstreamModel


@dataclass
class ClassifierOutput:
    logits: Tensor
    """(B, N) unnormalised class scores."""
    layer_weights: Tensor | None = None
    """(K,) softmaxed weights of the hidden states the head read (`model.upstream.layer_sum`)."""


def mean_over_frames(x: Tensor, padding_mask: Tensor | None) -> Tensor:
    """The mean of each utterance's unpadded frames.

    Shape: x (B, T, P), padding_mask (B, T) bool True = pad, or None -> (B, P).
    """
    if padding_mask is None:
        return x.mean(dim=1)
    # A fill, not a product with a 0/1 mask: a padded frame's value (even inf or NaN) never
    # reaches the sum.
    total = x.masked_fill(padding_mask.unsqueeze(-1), 0.0).sum(dim=1)  # (B, T, P) -> (B, P)
    count = (~padding_mask).sum(dim=1, keepdim=True).clamp_min(1)  # (B, 1)
    return total / count.to(x.dtype)


class Wav2Vec2Classifier(DownstreamModel):
    """wav2vec 2.0 encoder + projector + mean pooling + Linear(P, N) (module docstring)."""

    def __init__(self, cfg: ModelConfig, *, num_classes: int, projector_dim: int = 256) -> None:
        super().__init__(cfg)
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.projector = nn.Linear(cfg.transformer.embed_dim, projector_dim)
        self.linear = nn.Linear(projector_dim, num_classes)

    def forward(self, source: Tensor, padding_mask: Tensor | None = None, *,
                generator: torch.Generator | None = None) -> ClassifierOutput:
        """Shape: source (B, L), padding_mask (B, L) bool True = pad -> logits (B, N)."""
        up = self.upstream(source, padding_mask, generator=generator)
        pooled = mean_over_frames(self.projector(up.x), up.padding_mask)  # (B, T, D) -> (B, T, P) -> (B, P)
        return ClassifierOutput(logits=self.linear(pooled), layer_weights=up.layer_weights)
