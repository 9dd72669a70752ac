"""Self-attention with dropout on a CPU, tiled over queries (issue #11).

Why this exists: `F.scaled_dot_product_attention` has no fused CPU kernel that takes
dropout, so BASE's attention dropout (0.1) sends every training step down its math path. That
path writes the (B, H, T, T) scores, probabilities and a Bernoulli mask to memory and reads
them back a dozen times, and it is what makes throughput fall off a cliff between 8 s and
15.6 s crops (`python scripts/bench.py profile --profile-seconds 15.6`): at T = 780 the score
matrix of one layer is 58 MB, far past the caches. Here the queries are processed in blocks
whose (B*H, rows, S) scores fit in about `SCORE_BLOCK_BYTES`, so softmax, dropout and both
products run on cache-resident data. Only q, k, v, the output and a one-byte keep mask are
saved; the backward recomputes each block's probabilities (as flash attention does).

The dropout mask is `dropout.draw_keep_mask_`'s: 16-bit integers from torch's global RNG, two
per 32-bit draw, ~5x cheaper per decision than `bernoulli_`; a unit is dropped with
probability round(p * 32768) / 32768, at most 1.5e-5 away from p. On CUDA, SDPA's flash
kernel does dropout itself and this module is not used.

Shapes: B batch, H heads, T queries, S keys, Dh head dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wav2vec2.model.dropout import draw_keep_mask_

# Scores of one query block: ~16 MiB is where the block still sits in this machine's cache
# (2-core AMD EPYC, one layer forward + backward at T=780: 9 and 18 MiB blocks ran 1.85-1.9x
# faster than SDPA's math path, 37 MiB blocks only 1.2-1.3x). A bigger cache wants more.
SCORE_BLOCK_BYTES = 16 * 2**20


def _block_rows(batch_heads: int, keys: int, itemsize: int) -> int:
    rows = SCORE_BLOCK_BYTES // max(1, batch_heads * keys * itemsize)
    return max(16, rows // 16 * 16)


def _scores(q_scaled: Tensor, k_t: Tensor, bias: Tensor | None) -> Tensor:
    """(BH, rows, Dh) x (BH, Dh, S) -> softmax probabilities (BH, rows, S)."""
    scores = torch.bmm(q_scaled, k_t)
    if bias is not None:
        scores += bias
    return torch.softmax(scores, dim=-1)


class _TiledDropoutAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, p: float) -> Tensor:  # type: ignore[override]
        # Under autocast q, k, v arrive in the autocast dtype; run in it, with no re-casting.
        with torch.autocast(q.device.type, enabled=False):
            return _TiledDropoutAttention._forward(ctx, q, k, v, bias, p)

    @staticmethod
    def _forward(ctx, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, p: float) -> Tensor:
        B, H, T, Dh = q.shape
        S = k.shape[2]
        q_scaled = (q * Dh**-0.5).reshape(B * H, T, Dh)  # (B, H, T, Dh) -> (BH, T, Dh)
        k3, v3 = k.reshape(B * H, S, Dh), v.reshape(B * H, S, Dh)
        bias3 = None
        if bias is not None:  # (B, 1, 1, S) -> (BH, 1, S)
            bias3 = bias.expand(B, H, 1, S).reshape(B * H, 1, S).to(q.dtype)
        out = torch.empty_like(q_scaled)
        # One byte per (query, key); a padded column when S is odd keeps the draw pairs whole.
        keep = torch.empty(B * H, T, S + S % 2, dtype=torch.uint8, device=q.device)
        k_t = k3.transpose(1, 2)  # (BH, Dh, S)
        rows = _block_rows(B * H, S, q.element_size())
        for start in range(0, T, rows):
            block = slice(start, start + rows)
            probs = _scores(q_scaled[:, block], k_t, bias3)
            keep_block = draw_keep_mask_(keep[:, block], p)[..., :S]
            torch.bmm(probs.mul_(keep_block), v3, out=out[:, block])
        out.mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(q_scaled, k3, v3, bias3, out, keep)
        ctx.p, ctx.rows, ctx.shape = p, rows, (B, H, T, Dh)
        return out.view(B, H, T, Dh)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        q_scaled, k3, v3, bias3, out, keep = ctx.saved_tensors
        B, H, T, Dh = ctx.shape
        S = k3.shape[1]
        grad_out = grad_out.reshape(B * H, T, Dh)
        # softmax backward needs rowsum(P * dP) = rowsum(dO * O) (O already holds the dropout).
        row_dot = (grad_out * out).sum(dim=-1, keepdim=True)  # (BH, T, 1)
        grad_scaled = grad_out * (1.0 / (1.0 - ctx.p))  # folds the dropout scale into dO
        grad_q = torch.empty_like(q_scaled)
        grad_k = torch.zeros_like(k3)
        grad_v = torch.zeros_like(v3)
        k_t, v_t = k3.transpose(1, 2), v3.transpose(1, 2)
        for start in range(0, T, ctx.rows):
            block = slice(start, start + ctx.rows)
            probs = _scores(q_scaled[:, block], k_t, bias3)  # recomputed, as in the forward
            keep_block = keep[:, block, :S]
            grad_v += torch.bmm((probs * keep_block).transpose(1, 2), grad_scaled[:, block])
            # dS = P * (dP - rowsum(P * dP)), dP = keep * dO V^T / (1 - p)
            grad_scores = torch.bmm(grad_scaled[:, block], v_t).mul_(keep_block)
            grad_scores.sub_(row_dot[:, block]).mul_(probs)
            torch.bmm(grad_scores, k3, out=grad_q[:, block])
            grad_k += torch.bmm(grad_scores.transpose(1, 2), q_scaled[:, block])
        grad_q.mul_(Dh**-0.5)
        shape = (B, H, T, Dh)
        return grad_q.view(shape), grad_k.view(B, H, S, Dh), grad_v.view(B, H, S, Dh), None, None


def dropout_attention(q: Tensor, k: Tensor, v: Tensor, attn_bias: Tensor | None, p: float) -> Tensor:
    """softmax(q k^T / sqrt(Dh) + attn_bias) with dropout p, times v.

    Shape: q (B, H, T, Dh), k and v (B, H, S, Dh), attn_bias (B, 1, 1, S) additive or None
    -> (B, H, T, Dh).
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"dropout_attention needs 0 < p < 1, got {p}")
    return _TiledDropoutAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), attn_bias, p)
