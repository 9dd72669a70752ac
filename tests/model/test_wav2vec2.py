"""The pretraining model: negatives, logits and losses against slow loops; parameter
counts; init; determinism; bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wav2vec2.config import base, large, tiny
from wav2vec2.model.losses import accuracy_counts, contrastive_loss, pretraining_loss
from wav2vec2.model.wav2vec2 import Wav2Vec2Model, contrastive_logits, sample_negatives


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = tiny()
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return Wav2Vec2Model(cfg)


# ---------------------------------------------------------------- negatives
def test_negatives_never_self_and_in_range():
    idx = sample_negatives(3, 7, 50, generator=torch.Generator().manual_seed(0))
    assert idx.shape == (3, 7, 50)
    assert idx.min() >= 0 and idx.max() < 7
    assert (idx != torch.arange(7).view(1, 7, 1)).all()


def test_negatives_uniform_over_other_frames():
    M, n = 6, 30000
    idx = sample_negatives(1, M, n, generator=torch.Generator().manual_seed(1))
    for t in range(M):
        counts = torch.bincount(idx[0, t], minlength=M).double()
        assert counts[t] == 0
        others = torch.cat([counts[:t], counts[t + 1:]])
        expected = n / (M - 1)
        chi2 = ((others - expected) ** 2 / expected).sum().item()
        assert chi2 < 18.47  # p = 0.001, 4 degrees of freedom


def test_negatives_need_two_masked_frames():
    with pytest.raises(ValueError, match="at least 2 masked frames"):
        sample_negatives(2, 1, 10)


def test_negatives_come_from_same_utterance_and_never_padding():
    model = tiny_model().eval()
    source = torch.randn(3, 8000)
    pad = torch.zeros(3, 8000, dtype=torch.bool)
    pad[1, 5000:] = True
    pad[2, 3000:] = True
    out = model(source, pad, temperature=2.0, generator=torch.Generator().manual_seed(0))
    assert not (out.time_mask & out.padding_mask).any()
    B, M, K = out.negative_indices.shape
    targets = out.extras["targets"]
    # Every negative used in the logits is a target of its own utterance.
    logits_slow = slow_logits(out.extras["context"], out.time_mask, targets, out.negative_indices, model)
    assert torch.allclose(out.logits, logits_slow, atol=1e-5)


# ---------------------------------------------------------------- logits and loss
def slow_logits(context, time_mask, targets, neg_idx, model):
    """Loop over utterances, masked frames and candidates."""
    B, M, K = neg_idx.shape
    rows = []
    for b in range(B):
        positions = [t for t in range(time_mask.shape[1]) if time_mask[b, t]]
        for m, t in enumerate(positions):
            c = model.final_proj(context[b, t])
            cands = [targets[b, m]] + [targets[b, int(neg_idx[b, m, k])] for k in range(K)]
            row = []
            for j, cand in enumerate(cands):
                if j > 0 and torch.equal(cand, targets[b, m]):
                    row.append(float("-inf"))
                else:
                    row.append(F.cosine_similarity(c.float(), cand.float(), dim=0).item() / model.cfg.logit_temp)
            rows.append(row)
    return torch.tensor(rows)


def test_logits_and_loss_match_slow_loop():
    model = tiny_model().eval()
    out = model(torch.randn(2, 6000), temperature=2.0, generator=torch.Generator().manual_seed(0))
    slow = slow_logits(out.extras["context"], out.time_mask, out.extras["targets"], out.negative_indices, model)
    assert torch.allclose(out.logits, slow, atol=1e-5)
    ce = sum(-torch.log_softmax(row, 0)[0] for row in slow)
    assert contrastive_loss(out.logits).item() == pytest.approx(ce.item(), rel=1e-5)


def test_logits_and_gradients_equal_fairseqs_broadcast_cosine():
    """The (B, M, M) matmul form against fairseq's formula: cosine_similarity of the context
    broadcast over gathered (B, M, 1+K, F) candidates, including a zero vector (eps clamp)."""
    gen = torch.Generator().manual_seed(5)
    B, M, K, Fd = 2, 30, 12, 16
    context = torch.randn(B, M, Fd, generator=gen, requires_grad=True)
    targets = torch.randn(B, M, Fd, generator=gen)
    targets[0, 3] = targets[0, 4]  # an identical pair for the -inf rule
    targets[1, 7] = 0.0  # a zero target: its norm is clamped at eps
    targets.requires_grad_()
    idx = sample_negatives(B, M, K, generator=gen)
    idx[0, 3, 0] = 4

    def fairseq_formula(c, t):
        negs = torch.stack([t[b][idx[b]] for b in range(B)])  # (B, M, K, F)
        cands = torch.cat([t.unsqueeze(2), negs], dim=2)  # (B, M, 1+K, F)
        logits = F.cosine_similarity(c.unsqueeze(2), cands, dim=-1) / 0.1
        same = (negs == t.unsqueeze(2)).all(-1)
        return torch.cat([logits[..., :1], logits[..., 1:].masked_fill(same, float("-inf"))], 2).view(B * M, 1 + K)

    got, want = contrastive_logits(context, targets, idx, 0.1), fairseq_formula(context, targets)
    assert torch.equal(torch.isinf(got), torch.isinf(want)) and torch.isinf(got).any()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    weights = torch.randn(got.shape, generator=gen).masked_fill(torch.isinf(got), 0.0)
    grads = torch.autograd.grad(got.masked_fill(torch.isinf(got), 0.0).mul(weights).sum(), (context, targets))
    ref = torch.autograd.grad(want.masked_fill(torch.isinf(want), 0.0).mul(weights).sum(), (context, targets))
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_negative_equal_to_positive_gets_minus_inf():
    targets = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])  # frames 0 and 1 share a code
    context = torch.tensor([[[1.0, 0.2], [0.3, 1.0], [0.5, 0.5]]])
    idx = torch.tensor([[[1, 2], [0, 2], [0, 1]]])
    logits = contrastive_logits(context, targets, idx, 0.1)
    assert logits[0, 1] == float("-inf") and logits[1, 1] == float("-inf")
    assert torch.isfinite(logits[2]).all() and torch.isfinite(logits[:, 0]).all()


def test_accuracy_rule_counts_degenerate_rows_wrong():
    logits = torch.tensor([
        [2.0, 1.0, 0.0],   # correct
        [0.0, 1.0, 2.0],   # wrong
        [1.0, 1.0, 1.0],   # all equal: argmax 0 and argmin 0 -> wrong
        [1.0, -math.inf, -math.inf],  # positive alone -> correct
    ])
    correct, count = accuracy_counts(logits)
    assert correct.item() == 2 and count == 4


def test_loss_terms_are_weighted_by_sample_size():
    model = tiny_model()
    out = model(torch.randn(2, 6000), temperature=2.0, generator=torch.Generator().manual_seed(0))
    loss = pretraining_loss(out, model.cfg.loss)
    n = out.logits.shape[0]
    assert loss.sample_size == n
    gv = model.quantizer.num_vars
    assert torch.allclose(loss.diversity, 0.1 * n * (gv - out.prob_perplexity) / gv)
    assert torch.allclose(loss.feature_penalty, 10.0 * n * out.feature_penalty)
    assert torch.allclose(loss.total, loss.contrastive + loss.diversity + loss.feature_penalty)
    cfg = model.cfg.loss
    cfg.feature_penalty_weight = 0.0
    assert pretraining_loss(out, cfg).feature_penalty.item() == 0.0


def test_feature_penalty_is_mean_square_of_conv_output():
    model = tiny_model().eval()
    source = torch.randn(2, 6000)
    out = model(source, temperature=2.0, generator=torch.Generator().manual_seed(0))
    z = model.feature_encoder(source)
    assert out.feature_penalty.item() == pytest.approx((z.double() ** 2).sum().item() / z.numel(), rel=1e-5)


def test_targets_are_not_detached():
    # The contrastive loss alone must reach the codebook, weight_proj, project_q and the CNN
    # (fairseq2 PR #731: detaching them is a bug).
    model = tiny_model()
    out = model(torch.randn(2, 6000), temperature=2.0, generator=torch.Generator().manual_seed(0))
    contrastive_loss(out.logits).backward()
    for p in (model.quantizer.codebook, model.quantizer.weight_proj.weight, model.project_q.weight,
              model.feature_encoder.blocks[0].conv.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_feature_grad_mult_zero_freezes_the_encoder():
    model = tiny_model()
    model.cfg.feature_encoder.grad_mult = 0.0
    out = model(torch.randn(2, 6000), temperature=2.0, generator=torch.Generator().manual_seed(0))
    pretraining_loss(out, model.cfg.loss).total.backward()
    assert all(p.grad is None for p in model.feature_encoder.parameters())


# ---------------------------------------------------------------- structure
def test_parameter_counts_match_spec():
    assert sum(p.numel() for p in Wav2Vec2Model(base()).parameters()) == 95_044_608
    assert sum(p.numel() for p in Wav2Vec2Model(large()).parameters()) == 317_390_592


def test_init_follows_spec():
    model = Wav2Vec2Model(base())
    layer = model.encoder.layers[0]
    for lin in (layer.self_attn.q_proj, layer.fc1, layer.fc2):
        assert abs(lin.weight.std().item() - 0.02) < 0.002 and (lin.bias == 0).all()
    pos = model.encoder.pos_conv.conv
    assert pos.parametrizations.weight.original0.shape == (1, 1, 128)  # one gain per tap
    assert abs(pos.weight.std().item() - math.sqrt(4 / (128 * 768))) < 1e-3
    assert 0 <= model.mask_emb.min() and model.mask_emb.max() < 1
    conv0 = model.feature_encoder.blocks[0].conv.weight
    assert abs(conv0.std().item() - math.sqrt(2 / 10)) < 0.03  # Kaiming normal, fan_in 10


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_post_and_pre_ln_layers(layer_norm_first):
    """One layer against its formula, written here (fairseq TransformerSentenceEncoderLayer):
    post-LN  x = LN1(x + attn(x)); x = LN2(x + FFN(x))
    pre-LN   x = x + attn(LN1(x)); x = x + FFN(LN2(x))
    with non-trivial LayerNorm weights, so putting a norm in the wrong place shows."""
    from wav2vec2.model.transformer import EncoderLayer

    cfg = tiny().transformer
    cfg.layer_norm_first = layer_norm_first
    torch.manual_seed(0)
    layer = EncoderLayer(cfg).eval()
    with torch.no_grad():
        for ln in (layer.self_attn_layer_norm, layer.final_layer_norm):
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 9, cfg.embed_dim)

    def attn(h):  # softmax(q k^T / sqrt(Dh)) v, heads by hand
        a = layer.self_attn
        H, Dh = a.num_heads, cfg.embed_dim // a.num_heads
        q, k, v = (p(h).view(2, 9, H, Dh).transpose(1, 2) for p in (a.q_proj, a.k_proj, a.v_proj))
        w = torch.softmax(q @ k.transpose(-1, -2) / Dh**0.5, dim=-1)
        return a.out_proj((w @ v).transpose(1, 2).reshape(2, 9, cfg.embed_dim))

    def ffn(h):
        return layer.fc2(F.gelu(layer.fc1(h)))

    ln1, ln2 = layer.self_attn_layer_norm, layer.final_layer_norm
    if layer_norm_first:
        h = x + attn(ln1(x))
        want = h + ffn(ln2(h))
    else:
        h = ln1(x + attn(x))
        want = ln2(h + ffn(h))
    torch.testing.assert_close(layer(x, None), want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- determinism and errors
def test_same_seed_gives_bit_identical_loss():
    losses = []
    for _ in range(2):
        model = tiny_model(seed=3)
        g = torch.Generator().manual_seed(11)
        torch.manual_seed(5)  # dropout / layerdrop
        out = model(torch.randn(3, 7000, generator=torch.Generator().manual_seed(2)), temperature=1.5, generator=g)
        loss = pretraining_loss(out, model.cfg.loss).total
        loss.backward()
        losses.append((loss.detach(), model.quantizer.codebook.grad.clone()))
    assert torch.equal(losses[0][0], losses[1][0]) and torch.equal(losses[0][1], losses[1][1])


def test_bad_input_raises_value_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="source"):
        model(torch.randn(6000), temperature=2.0)
    with pytest.raises(ValueError, match="at least 400"):
        model(torch.randn(2, 300), temperature=2.0)
    with pytest.raises(ValueError, match="padding_mask"):
        model(torch.randn(2, 6000), torch.zeros(2, 5000, dtype=torch.bool), temperature=2.0)
    with pytest.raises(ValueError, match="time_mask"):
        model(torch.randn(2, 6000), temperature=2.0, time_mask=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least 2 masked frames"):
        # 2 frames, one masked per utterance: a masked frame has no other to draw negatives from
        model(torch.randn(2, 720), temperature=2.0, time_mask=torch.tensor([[True, False], [False, True]]))
    bad = torch.zeros(2, 18, dtype=torch.bool)
    bad[0, :4] = True
    bad[1, :5] = True
    with pytest.raises(ValueError, match="same number of masked frames"):
        model(torch.randn(2, 6000), temperature=2.0, time_mask=bad)


class _HostSyncCounter(torch.overrides.TorchFunctionMode):
    """Counts tensor -> Python conversions: on a GPU each one waits for the device."""

    SYNCING = {"item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__"}

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.SYNCING:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def test_training_forward_syncs_with_the_host_once():
    # LayerDrop draws on the CPU generator (no device involved); off here so every
    # counted conversion would be a device sync on a GPU.
    model = tiny_model()
    model.cfg.transformer.layerdrop = 0.0
    model.train()
    source = torch.randn(3, 7000)
    with _HostSyncCounter() as counter:
        out = model(source, temperature=2.0, generator=torch.Generator().manual_seed(0))
    assert out.logits.shape[0] > 0
    assert counter.calls == ["tolist"]  # the masked-frame count that sets target shapes


# ---------------------------------------------------------------- encode
@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_encode_returns_hidden_states_features_and_padding(layer_norm_first):
    cfg = tiny()
    cfg.transformer.layer_norm_first = layer_norm_first
    torch.manual_seed(0)
    model = Wav2Vec2Model(cfg).eval()
    source = torch.randn(2, 8000)
    padding = torch.zeros(2, 8000, dtype=torch.bool)
    padding[1, 6000:] = True
    out = model.encode(source, padding, return_hidden_states=True, return_features=True)
    T = model.feature_encoder.output_lengths(8000)
    assert out.x.shape == (2, T, 48) and out.features.shape == (2, T, 32)
    assert out.padding_mask.shape == (2, T) and out.padding_mask[1].sum() == T - model.feature_encoder.output_lengths(6000)
    assert out.time_mask is None
    assert len(out.hidden_states) == cfg.transformer.num_layers + 1
    assert all(h.shape == (2, T, 48) for h in out.hidden_states)
    assert torch.equal(out.hidden_states[-1], out.x)  # the last state is the output
    plain = model.encode(source, padding)
    assert torch.equal(plain.x, out.x) and plain.hidden_states is None and plain.features is None
    # Layer i's output is layer i applied to state i-1 (the layers are really the ones listed).
    attn_free = model.encode(source[:1], return_hidden_states=True).hidden_states
    layer1 = model.encoder.layers[1](F.pad(attn_free[1], (0, 0, 0, -T % 2)), None)[:, :T]
    if not layer_norm_first:
        assert torch.allclose(layer1, attn_free[2], atol=1e-6)


def test_encode_does_not_mask_by_default_and_syncs_nothing():
    model = tiny_model()
    model.cfg.transformer.layerdrop = 0.0  # its draw is a CPU float(), counted below
    source, padding = torch.randn(3, 7000), torch.zeros(3, 7000, dtype=torch.bool)
    padding[2, 5000:] = True
    for mode in (model.eval, model.train):
        mode()
        with _HostSyncCounter() as counter:
            out = model.encode(source, padding, return_hidden_states=True, return_features=True)
            masked = model.encode(source, padding, mask=True, generator=torch.Generator().manual_seed(0))
        assert counter.calls == [] and out.time_mask is None and masked.time_mask.any()
    model.eval()
    assert torch.equal(model.encode(source).x, model.encode(source).x)


def test_pretraining_modules_can_be_removed():
    model = tiny_model()
    model.remove_pretraining_modules()
    assert not any(k.startswith(("quantizer", "project_q", "final_proj")) for k in model.state_dict())
    assert model.encode(torch.randn(1, 4000)).x.shape[-1] == 48
    with pytest.raises(RuntimeError, match="pretraining modules were removed"):
        model(torch.randn(1, 4000), temperature=2.0)
