"""The frozen, layer-weighted upstream (SUPERB's protocol): the weighted sum is a sum of the
encoder's own hidden states, and frozen means frozen."""

from __future__ import annotations

import pytest
import torch

from wav2vec2.config import tiny
from wav2vec2.model.classifier import Wav2Vec2Classifier
from wav2vec2.model.ctc import Wav2Vec2Ctc
from wav2vec2.model.upstream import WeightedLayerSum


def _cfg(*, layer_sum: bool = True, freeze: bool = False, layers: list[int] | None = None):
    cfg = tiny()
    cfg.transformer.num_layers = 3
    cfg.upstream.layer_sum, cfg.upstream.freeze = layer_sum, freeze
    cfg.upstream.layers = layers or []
    return cfg


def _audio(B: int = 2, L: int = 4000) -> torch.Tensor:
    return torch.randn(B, L, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("state", [0, 1, 2, 3])
def test_one_hot_weights_pick_that_hidden_state(state: int) -> None:
    torch.manual_seed(0)
    model = Wav2Vec2Ctc(_cfg(), vocab_size=5).eval()
    with torch.no_grad():
        model.layer_sum.weights.fill_(-1e4)  # exp(-1e4 - 0) underflows to 0: softmax is one-hot
        model.layer_sum.weights[state] = 0.0
        got = model.upstream(_audio())
        want = model.wav2vec2.encode(_audio(), return_hidden_states=True).hidden_states[state]
    assert torch.equal(got.layer_weights, torch.nn.functional.one_hot(torch.tensor(state), 4).float())
    assert torch.equal(got.x, want)


def test_zero_initialised_weights_average_the_selected_states() -> None:
    torch.manual_seed(0)
    model = Wav2Vec2Ctc(_cfg(layers=[1, 3]), vocab_size=5).eval()
    assert torch.equal(model.layer_sum.weights, torch.zeros(2))
    with torch.no_grad():
        got = model.upstream(_audio()).x
        states = model.wav2vec2.encode(_audio(), return_hidden_states=True).hidden_states
    torch.testing.assert_close(got, (states[1] + states[3]) / 2)
    assert len(states) == 4  # the input of each of the 3 layers, and the output: L + 1


def test_the_weighted_sum_follows_the_softmax() -> None:
    g = torch.Generator().manual_seed(0)
    states = [torch.randn(2, 5, 3, generator=g) for _ in range(3)]
    module = WeightedLayerSum(3)
    with torch.no_grad():
        module.weights.copy_(torch.tensor([0.5, -1.0, 2.0]))
    out, weights = module(states)
    w = torch.exp(torch.tensor([0.5, -1.0, 2.0]))
    w = w / w.sum()
    torch.testing.assert_close(weights, w)
    torch.testing.assert_close(out, sum(wi * s for wi, s in zip(w, states)))


def test_bad_layer_selection_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"model.upstream.layers=\[0, 4\].*0..3"):
        Wav2Vec2Ctc(_cfg(layers=[0, 4]), vocab_size=5)
    with pytest.raises(ValueError, match="distinct"):
        Wav2Vec2Ctc(_cfg(layers=[1, 1]), vocab_size=5)


def _noisy(cfg):
    """Everything that could make a training-mode encoder random, turned up."""
    cfg.transformer.dropout = cfg.transformer.attention_dropout = cfg.transformer.activation_dropout = 0.5
    cfg.transformer.layerdrop = 0.5
    cfg.dropout_input = 0.5
    cfg.masking.mask_prob, cfg.masking.mask_len, cfg.masking.channel_prob = 0.5, 2, 0.5
    return cfg


@pytest.mark.parametrize("make", [lambda c: Wav2Vec2Ctc(c, vocab_size=5),
                                  lambda c: Wav2Vec2Classifier(c, num_classes=3)], ids=["ctc", "classifier"])
def test_a_frozen_upstream_gets_no_gradient_and_no_randomness(make) -> None:
    torch.manual_seed(0)
    model = make(_noisy(_cfg(freeze=True))).train()
    assert model.training and not model.wav2vec2.training  # stays in eval mode under a training head
    assert not any(p.requires_grad for p in model.wav2vec2.parameters())
    g = torch.Generator()
    runs = []
    for seed in (1, 2):  # other masks, dropout and LayerDrop draws, if any reached the encoder
        torch.manual_seed(seed)
        g.manual_seed(seed)
        out = model.upstream(_audio(), generator=g)
        runs.append(out.x.detach())
        out.x.sum().backward()
    assert torch.equal(runs[0], runs[1])
    with torch.no_grad():
        assert torch.equal(runs[0], model.eval().upstream(_audio()).x)
    assert all(p.grad is None for p in model.wav2vec2.parameters())
    assert model.layer_sum.weights.grad is not None and model.layer_sum.weights.grad.abs().sum() > 0


def test_an_unfrozen_upstream_still_trains_and_masks() -> None:
    """The control of the test above: the same model without `freeze` is random in training
    mode and gets gradients, so that test would see it."""
    torch.manual_seed(0)
    model = Wav2Vec2Ctc(_noisy(_cfg(freeze=False)), vocab_size=5).train()
    outs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        out = model.upstream(_audio(), generator=torch.Generator().manual_seed(seed))
        outs.append(out.x.detach())
        out.x.sum().backward()
    assert not torch.equal(outs[0], outs[1])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.wav2vec2.parameters())


def test_the_cache_gives_each_utterance_its_states_alone_and_skips_the_upstream_after() -> None:
    cfg = _cfg(freeze=True)
    cfg.feature_encoder.mode, cfg.feature_encoder.conv_bias = "layer_norm", True
    torch.manual_seed(0)
    plain = Wav2Vec2Classifier(cfg, num_classes=3).eval()
    cfg.upstream.cache = True
    cached = Wav2Vec2Classifier(cfg, num_classes=3).eval()
    cached.load_state_dict(plain.state_dict())
    source, padding = _audio(2, 6000), torch.zeros(2, 6000, dtype=torch.bool)
    padding[1, 4100:] = True
    calls = []
    original = cached.wav2vec2.encode
    cached.wav2vec2.encode = lambda *a, **k: calls.append(1) or original(*a, **k)
    with torch.no_grad():
        first = cached(source, padding).logits
        again = cached(source, padding).logits
        alone = torch.cat([plain(source[:1]).logits, plain(source[1:, :4100]).logits])
    assert len(calls) == 2  # one pass per utterance, none the second time
    assert torch.equal(first, again)
    torch.testing.assert_close(first, alone, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="needs model.upstream.freeze"):
        unfrozen = _cfg(freeze=False)
        unfrozen.upstream.cache = True
        Wav2Vec2Ctc(unfrozen, vocab_size=5)
