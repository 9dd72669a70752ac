"""The utterance classification head: mean pooling over the unpadded frames only."""

from __future__ import annotations

import pytest
import torch

from wav2vec2.config import tiny
from wav2vec2.model.classifier import Wav2Vec2Classifier, mean_over_frames


def test_mean_pooling_never_reads_padded_frames() -> None:
    x = torch.randn(2, 5, 3)
    padding = torch.tensor([[False, False, False, True, True], [False] * 5])
    x[0, 3:] = float("nan")  # whatever a padded frame holds
    pooled = mean_over_frames(x, padding)
    torch.testing.assert_close(pooled[0], x[0, :3].mean(dim=0))
    torch.testing.assert_close(pooled[1], x[1].mean(dim=0))
    torch.testing.assert_close(mean_over_frames(x[1:], None), x[1:].mean(dim=1))


@pytest.mark.parametrize("layer_sum", [False, True])
def test_a_padded_batch_gives_each_utterance_its_logits_alone(layer_sum: bool) -> None:
    cfg = tiny()
    # The layer-norm encoder normalises each frame on its own; BASE's GroupNorm normalises
    # over time, padding included, so its features (not the pooling) depend on the padding.
    cfg.feature_encoder.mode, cfg.feature_encoder.conv_bias = "layer_norm", True
    cfg.upstream.layer_sum = cfg.upstream.freeze = True if layer_sum else False
    torch.manual_seed(0)
    model = Wav2Vec2Classifier(cfg, num_classes=4).eval()
    lengths = [4000, 6400, 9001]
    g = torch.Generator().manual_seed(0)
    wavs = [torch.randn(n, generator=g) for n in lengths]
    source = torch.zeros(3, max(lengths))
    padding = torch.ones(3, max(lengths), dtype=torch.bool)
    for i, w in enumerate(wavs):
        source[i, : len(w)], padding[i, : len(w)] = w, False
    with torch.no_grad():
        batch = model(source, padding).logits
        alone = torch.cat([model(w[None]).logits for w in wavs])
    torch.testing.assert_close(batch, alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(alone[0], alone[1])  # the utterances do get different logits


def test_fewer_than_two_classes_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least 2 classes"):
        Wav2Vec2Classifier(tiny(), num_classes=1)
