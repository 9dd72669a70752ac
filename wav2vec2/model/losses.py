"""Pretraining losses (paper §3.2, fairseq `wav2vec` criterion with `infonce=True`).

All terms are sums over this micro-batch's masked frames, so the trainer can divide the
total by the *global* masked-frame count: L = L_c + w0*n*(GV - ppl)/GV + w1*n*penalty.
Everything here is fp32.

Shapes: N masked frames, K negatives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from wav2vec2.config import LossConfig

LN2 = math.log(2.0)


def contrastive_loss(logits: Tensor) -> Tensor:
    """Cross-entropy with the positive in column 0, summed over frames.

    Shape: logits (N, 1+K) -> 0-dim fp32.
    """
    targets = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def diversity_loss(prob_perplexity: Tensor, num_vars: int) -> Tensor:
    """(G*V - prob_perplexity) / (G*V), in [0, 1): 0 when every entry is used equally."""
    return (num_vars - prob_perplexity) / num_vars


def accuracy_counts(logits: Tensor) -> tuple[Tensor, int]:
    """(correct, count) with fairseq's rule: a row is correct when its argmax is the
    positive, except rows whose argmin is also the positive (all logits equal), which count
    as wrong.

    Shape: logits (N, 1+K).
    """
    with torch.no_grad():
        is_max = logits.argmax(dim=-1) == 0
        is_min = logits.argmin(dim=-1) == 0
        correct = (is_max & ~is_min).sum()
    return correct, logits.shape[0]


@dataclass
class PretrainingLoss:
    total: Tensor
    """0-dim: contrastive + weighted diversity + weighted feature penalty, summed over frames."""
    sample_size: int
    """n, the number of masked frames (logit rows) in this micro-batch."""
    contrastive: Tensor
    """0-dim: the contrastive sum (nats)."""
    diversity: Tensor
    """0-dim: w0 * n * (GV - ppl) / GV (0 when the weight is 0)."""
    feature_penalty: Tensor
    """0-dim: w1 * n * feature penalty (0 when the weight is 0)."""
    correct: Tensor
    """0-dim long: rows whose positive wins (fairseq accuracy rule)."""

    def logs(self) -> dict[str, Tensor]:
        """Detached parts, for metrics. Divide by n and ln 2 for fairseq's bits."""
        return {
            "loss": self.total.detach(),
            "contrastive": self.contrastive.detach(),
            "diversity": self.diversity.detach(),
            "feature_penalty": self.feature_penalty.detach(),
            "correct": self.correct,
        }


def pretraining_loss(out, cfg: LossConfig) -> PretrainingLoss:
    """The wav2vec 2.0 objective for one micro-batch, from a `Wav2Vec2Output`."""
    n = out.logits.shape[0]
    contrastive = contrastive_loss(out.logits)
    zero = contrastive.new_zeros(())
    diversity = zero
    if cfg.diversity_weight != 0:
        diversity = cfg.diversity_weight * n * diversity_loss(out.prob_perplexity, out.num_vars)
    feature_penalty = zero
    if cfg.feature_penalty_weight != 0:
        feature_penalty = cfg.feature_penalty_weight * n * out.feature_penalty.float()
    correct, _ = accuracy_counts(out.logits)
    return PretrainingLoss(
        total=contrastive + diversity + feature_penalty,
        sample_size=n,
        contrastive=contrastive,
        diversity=diversity,
        feature_penalty=feature_penalty,
        correct=correct,
    )
