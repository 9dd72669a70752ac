"""The tiled CPU attention with dropout (wav2vec2/model/cpu_attention.py) computes what the
plain formula computes with the same keep mask, forward and backward. The mask itself:
tests/model/test_dropout.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wav2vec2.model import cpu_attention
from wav2vec2.model.cpu_attention import dropout_attention
from wav2vec2.model.transformer import SelfAttention


def _record_masks(monkeypatch) -> list[torch.Tensor]:
    """Every block's keep mask, in the order the forward draws them."""
    masks: list[torch.Tensor] = []
    original = cpu_attention.draw_keep_mask_

    def recording(keep, p):
        out = original(keep, p)
        masks.append(out.clone())
        return out

    monkeypatch.setattr(cpu_attention, "draw_keep_mask_", recording)
    return masks


def _reference(q, k, v, bias, keep, p):
    """softmax(q k^T / sqrt(Dh) + bias) * keep / (1 - p) @ v, in float64, one (b, h) at a time."""
    B, H, T, Dh = q.shape
    out = torch.empty(B, H, T, Dh, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            scores = q[b, h].double() @ k[b, h].double().T / math.sqrt(Dh)
            if bias is not None:
                scores = scores + bias[b, 0, 0].double()
            probs = torch.softmax(scores, dim=-1) * keep[b, h].double() / (1 - p)
            out[b, h] = probs @ v[b, h].double()
    return out


@pytest.mark.parametrize("keys", [37, 40])  # odd key count takes the padded-column path
def test_forward_and_gradients_equal_the_formula_with_the_same_mask(monkeypatch, keys) -> None:
    monkeypatch.setattr(cpu_attention, "SCORE_BLOCK_BYTES", 4 * 4 * keys * 16)  # 16-row blocks
    torch.manual_seed(0)
    B, H, T, Dh, p = 2, 4, keys, 8, 0.3
    q, k, v = (torch.randn(B, H, T, Dh, requires_grad=True) for _ in range(3))
    bias = torch.zeros(B, 1, 1, T)
    bias[1, ..., T - 5:] = torch.finfo(torch.float32).min  # utterance 1 has 5 padded frames
    grad_out = torch.randn(B, H, T, Dh)

    masks = _record_masks(monkeypatch)
    out = dropout_attention(q, k, v, bias, p)
    out.backward(grad_out)
    assert len(masks) == math.ceil(T / 16)  # several blocks were exercised
    # blocks (BH, rows, S + S % 2) -> (B, H, T, S); an odd S has a padded column, unused
    keep = torch.cat(masks, dim=1)[..., :T].reshape(B, H, T, T).bool()

    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    want = _reference(qd, kd, vd, bias, keep, p)
    want.backward(grad_out.double())
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-6)
    for got, ref in ((q.grad, qd.grad), (k.grad, kd.grad), (v.grad, vd.grad)):
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    # padded keys get no weight, so no gradient reaches them through k or v
    assert torch.all(k.grad[1, :, T - 5:] == 0) and torch.all(v.grad[1, :, T - 5:] == 0)


def test_tiny_p_equals_sdpa_without_dropout() -> None:
    """With nothing dropped (p below the 1/32768 resolution), the tiled path is SDPA's math."""
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 3, 50, 16) for _ in range(3))
    bias = torch.zeros(2, 1, 1, 50)
    bias[0, ..., 44:] = torch.finfo(torch.float32).min
    got = dropout_attention(q, k, v, bias, 1e-6)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(got, want * (1 - 1e-6), rtol=1e-5, atol=1e-6)


def test_self_attention_uses_it_in_training_and_sdpa_in_eval() -> None:
    torch.manual_seed(3)
    attn = SelfAttention(32, num_heads=4, dropout=0.1)
    x = torch.randn(2, 30, 32)
    attn.eval()
    eval_out = attn(x, None)
    attn.train()
    torch.manual_seed(4)
    train_a = attn(x, None)
    torch.manual_seed(4)
    train_b = attn(x, None)
    assert torch.equal(train_a, train_b)  # the mask comes from torch's global RNG
    assert not torch.allclose(train_a, eval_out)  # dropout happened
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(4)
        train_bf16 = attn(x, None)
    assert train_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(train_bf16.float(), train_a, rtol=0.05, atol=0.05)
