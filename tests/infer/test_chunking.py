"""Windows tile the file's frames exactly: with a purely local model (the layer-norm feature
encoder: every frame depends only on its 400 samples) the stitched frames equal one pass."""

from __future__ import annotations

import pytest
import torch

from wav2vec2.config import FeatureEncoderConfig
from wav2vec2.infer.chunking import plan_windows, run_in_windows

PAPER = FeatureEncoderConfig()  # hop 320, receptive field 400
from wav2vec2.model.feature_encoder import ConvFeatureEncoder


@pytest.mark.parametrize("num_samples", [399, 400, 720, 16_000, 48_321, 100_000])
@pytest.mark.parametrize(("window", "context"), [(1, 0), (7, 3), (50, 20), (1000, 0)])
def test_cores_tile_every_frame_once(num_samples: int, window: int, context: int) -> None:
    windows = plan_windows(num_samples, PAPER, window_frames=window, context_frames=context)
    total = PAPER.num_frames(num_samples)
    covered = [w.first_frame + i for w in windows for i in range(w.keep_to - w.keep_from)]
    assert covered == list(range(total))
    for w in windows:
        assert w.start % 320 == 0 and 0 <= w.start < w.end <= num_samples
        computed = PAPER.num_frames(w.end - w.start)
        assert 0 <= w.keep_from < w.keep_to <= computed
        assert w.keep_from <= context and computed - w.keep_to <= context


def test_a_local_model_in_windows_equals_one_pass() -> None:
    torch.manual_seed(0)
    cfg = FeatureEncoderConfig(conv_dims=[16] * 7, mode="layer_norm", conv_bias=True)
    encoder = ConvFeatureEncoder(cfg).eval()
    encoder.reset_parameters()
    wav = torch.randn(37_777)
    with torch.no_grad():
        full = encoder(wav.unsqueeze(0)).transpose(1, 2)[0]  # (T, C)

        def fn(x: torch.Tensor) -> torch.Tensor:
            return encoder(x).transpose(1, 2)  # (1, C, T) -> (1, T, C)

        done = []
        stitched = run_in_windows(fn, lambda a, b: wav[a:b], len(wav), cfg, window_frames=13, context_frames=2,
                                  progress=done.append)
    assert stitched.shape == full.shape == (encoder.output_lengths(len(wav)), 16)
    torch.testing.assert_close(stitched, full, rtol=1e-5, atol=1e-5)
    assert done[-1] == len(wav) and done == sorted(done)


def test_a_model_with_another_hop_is_caught() -> None:
    with pytest.raises(ValueError, match="frame arithmetic"):
        run_in_windows(lambda x: torch.zeros(1, 3, 2), lambda a, b: torch.zeros(b - a), 16_000, PAPER,
                       window_frames=10, context_frames=2)
