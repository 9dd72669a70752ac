"""Activation checkpointing (`transformer.activation_checkpointing`,
`feature_encoder.activation_checkpointing`) changes memory, not math:
the same seed gives a bit-identical loss and bit-identical gradients with it on and off,
with every dropout and LayerDrop active, and leaves torch's global RNG where it would be."""

from __future__ import annotations

import copy

import torch

import pytest

from wav2vec2.config import tiny
from wav2vec2.model.losses import pretraining_loss
from wav2vec2.model.wav2vec2 import Wav2Vec2Model


def _step(model: Wav2Vec2Model, source: torch.Tensor) -> tuple[torch.Tensor, dict, torch.Tensor]:
    torch.manual_seed(123)  # dropout and LayerDrop draw from the global RNG
    gen = torch.Generator().manual_seed(7)  # masking, negatives, Gumbel noise
    out = model(source, temperature=2.0, generator=gen)
    loss = pretraining_loss(out, model.cfg.loss).total
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, torch.get_rng_state()


@pytest.mark.parametrize("where", ["transformer", "feature_encoder", "both"])
def test_checkpointing_is_bit_identical(where):
    cfg = tiny()
    cfg.feature_encoder.dropout = 0.1  # so the conv blocks' recompute must replay the RNG too
    cfg.transformer.num_layers = 4
    cfg.transformer.dropout = cfg.transformer.attention_dropout = 0.1
    cfg.transformer.activation_dropout = 0.1
    cfg.transformer.layerdrop = 0.3  # with seed 123, some layers run and some are skipped
    torch.manual_seed(0)
    plain = Wav2Vec2Model(cfg).train()
    ckpt_cfg = copy.deepcopy(cfg)
    ckpt_cfg.transformer.activation_checkpointing = where in ("transformer", "both")
    ckpt_cfg.feature_encoder.activation_checkpointing = where in ("feature_encoder", "both")
    checkpointed = Wav2Vec2Model(ckpt_cfg).train()
    checkpointed.load_state_dict(plain.state_dict())
    source = torch.randn(3, 17_000, generator=torch.Generator().manual_seed(1))

    loss_a, grads_a, rng_a = _step(plain, source)
    loss_b, grads_b, rng_b = _step(checkpointed, source)

    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name
    assert torch.equal(rng_a, rng_b)  # the recompute does not advance the global RNG


def _saved_bytes(cfg, run) -> int:
    """Bytes the autograd graph keeps for the backward while `run(model)` executes."""
    torch.manual_seed(0)
    model = Wav2Vec2Model(cfg).train()
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run(model)
    return total[0]


@pytest.mark.parametrize("where", ["transformer", "feature_encoder"])
def test_checkpointing_saves_activations(where):
    """With checkpointing, the autograd graph keeps fewer saved tensors (bytes)."""
    cfg = tiny()
    cfg.transformer.layerdrop = 0.0
    if where == "transformer":
        def run(model):
            model.encoder(torch.randn(2, 200, cfg.transformer.embed_dim))
    else:
        def run(model):
            model.feature_encoder(torch.randn(2, 16_000))
    saved = {}
    for on in (False, True):
        getattr(cfg, where).activation_checkpointing = on
        saved[on] = _saved_bytes(cfg, run)
    assert saved[True] < 0.5 * saved[False]
