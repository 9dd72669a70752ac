"""Gumbel vector quantizer: perplexities against slow loops, the Gumbel-max law,
straight-through gradients, eval argmax, and the temperature schedule."""

from __future__ import annotations

import math

import pytest
import torch

from wav2vec2.config import QuantizerConfig, base, large
from wav2vec2.model.quantizer import GumbelVectorQuantizer, gumbel_temperature


def make(G=2, V=8, dim=16, input_dim=12, seed=0):
    torch.manual_seed(seed)
    q = GumbelVectorQuantizer(QuantizerConfig(num_codebooks=G, num_entries=V), input_dim=input_dim, codebook_dim=dim)
    q.reset_parameters()
    return q


def slow_perplexity(dists):
    """dists: list over frames of list over groups of V-probabilities."""
    G, V = len(dists[0]), len(dists[0][0])
    total = 0.0
    for g in range(G):
        avg = [sum(d[g][v] for d in dists) / len(dists) for v in range(V)]
        total += math.exp(-sum(p * math.log(p + 1e-7) for p in avg))
    return total


def test_perplexities_match_slow_loops():
    q = make()
    x = torch.randn(30, 12)
    out = q(x, temperature=2.0)
    logits = q.weight_proj(x).view(30, 2, 8).double()
    soft = torch.softmax(logits, -1).tolist()
    hard = [[[1.0 if v == int(row[g].argmax()) else 0.0 for v in range(8)] for g in range(2)] for row in logits]
    assert out.prob_perplexity.item() == pytest.approx(slow_perplexity(soft), rel=1e-5)
    assert out.code_perplexity.item() == pytest.approx(slow_perplexity(hard), rel=1e-5)
    assert 2 <= out.code_perplexity.item() <= 16
    assert out.prob_perplexity.requires_grad and not out.code_perplexity.requires_grad


def test_eval_is_argmax_codeword_concatenation():
    q = make().eval()
    x = torch.randn(5, 12)
    out = q(x, temperature=2.0)
    logits = q.weight_proj(x).view(5, 2, 8)
    book = q.codebook.view(2, 8, 8)
    for n in range(5):
        expect = torch.cat([book[g, logits[n, g].argmax()] for g in range(2)])
        assert torch.allclose(out.q[n], expect)
    assert torch.equal(out.codes, logits.argmax(-1))


def test_training_codes_follow_the_softmax_gumbel_max_law():
    # Gumbel-max: argmax(logits + g) ~ softmax(logits). Chi-square over many frames.
    q = make(G=1, V=4, dim=4, input_dim=3)
    with torch.no_grad():
        q.weight_proj.weight.zero_()
        q.weight_proj.bias.copy_(torch.tensor([0.0, 1.0, -1.0, 0.5]))
    n = 40000
    out = q(torch.zeros(n, 3), temperature=2.0, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(out.codes[:, 0], minlength=4).double()
    expected = torch.softmax(torch.tensor([0.0, 1.0, -1.0, 0.5]), 0).double() * n
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 16.27  # p = 0.001 for 3 degrees of freedom


def test_straight_through_gradient_is_the_soft_samples():
    q = make(G=1, V=4, dim=4, input_dim=3)
    x = torch.randn(6, 3)
    gen_seed = 3
    out = q(x, temperature=0.7, generator=torch.Generator().manual_seed(gen_seed))
    w = torch.randn_like(out.q)
    (out.q * w).sum().backward()
    grad_st = q.weight_proj.weight.grad.clone()
    # Recompute with the same noise, using the soft sample directly.
    q.zero_grad()
    logits = q.weight_proj(x).view(6, 1, 4).float()
    gumbel = -torch.empty_like(logits).exponential_(generator=torch.Generator().manual_seed(gen_seed)).log()
    soft = torch.softmax((logits + gumbel) / 0.7, -1)
    assert torch.equal(soft.argmax(-1)[:, 0], out.codes[:, 0])
    q_soft = torch.einsum("ngv,gve->nge", soft, q.codebook.view(1, 4, 4)).reshape(6, 4)
    (q_soft * w).sum().backward()
    assert torch.allclose(grad_st, q.weight_proj.weight.grad, atol=1e-6)


def test_fp32_softmax_under_bf16_input():
    q = make().to(torch.bfloat16)
    out = q(torch.randn(7, 12, dtype=torch.bfloat16), temperature=2.0)
    assert out.q.dtype == torch.bfloat16
    assert out.prob_perplexity.dtype == torch.float32


def test_temperature_is_a_function_of_updates():
    cfg = base().quantizer
    assert gumbel_temperature(0, cfg) == 2.0
    assert gumbel_temperature(1000, cfg) == pytest.approx(2.0 * 0.999995**1000)
    # BASE reaches its 0.5 floor near update 277,258 (max(2 * 0.999995**u, 0.5)); LARGE 0.1 near 599,145.
    assert gumbel_temperature(277_000, cfg) > 0.5
    assert gumbel_temperature(277_300, cfg) == 0.5
    lcfg = large().quantizer
    assert gumbel_temperature(599_000, lcfg) > 0.1
    assert gumbel_temperature(599_200, lcfg) == 0.1


def test_codebook_dim_must_split_into_groups():
    with pytest.raises(ValueError, match="num_codebooks"):
        GumbelVectorQuantizer(QuantizerConfig(num_codebooks=3), input_dim=8, codebook_dim=16)


def test_init_matches_spec():
    q = make(G=2, V=320, dim=256, input_dim=512)
    assert q.codebook.shape == (1, 640, 128)
    assert 0 <= q.codebook.min() and q.codebook.max() < 1
    assert abs(q.weight_proj.weight.std().item() - 1.0) < 0.02
    assert (q.weight_proj.bias == 0).all()
