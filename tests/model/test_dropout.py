"""The CPU dropout (wav2vec2/model/dropout.py): the mask's drop probability, and forward and
backward equal to x * keep / (1 - p) with the mask it drew."""

from __future__ import annotations

import pytest
import torch

from wav2vec2.model.dropout import Dropout, draw_keep_mask_


def test_keep_mask_drops_with_probability_p_in_both_halves_of_each_draw() -> None:
    torch.manual_seed(1)
    for p in (0.05, 0.1, 0.5):
        keep = draw_keep_mask_(torch.empty(1000, 4000, dtype=torch.uint8), p)
        assert set(keep.unique().tolist()) <= {0, 1}
        quantised = round(p * 32768) / 32768
        # 2M decisions per half: the standard error of the rate is < 3.6e-4
        for half in (keep[:, 0::2], keep[:, 1::2]):
            assert abs((1 - half.double().mean().item()) - quantised) < 2e-3
        assert abs(quantised - p) <= 0.5 / 32768
    # successive draws differ (the mask is not a fixed pattern)
    a = draw_keep_mask_(torch.empty(64, 64, dtype=torch.uint8), 0.5)
    b = draw_keep_mask_(torch.empty(64, 64, dtype=torch.uint8), 0.5)
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="even"):
        draw_keep_mask_(torch.empty(3, 5, dtype=torch.uint8), 0.1)


@pytest.mark.parametrize("shape", [(4, 50, 30), (3, 7, 5)])  # odd element count: padded draw
def test_forward_and_backward_scale_kept_units_and_zero_the_rest(shape) -> None:
    torch.manual_seed(2)
    x = (torch.rand(shape) + 0.5).requires_grad_()  # no zeros, so out == 0 marks a drop
    drop = Dropout(0.2).train()
    out = drop(x)
    keep = out != 0
    torch.testing.assert_close(out, x * keep / 0.8)
    assert 0.1 < 1 - keep.double().mean().item() < 0.3
    grad = torch.randn(shape)
    out.backward(grad)
    torch.testing.assert_close(x.grad, grad * keep / 0.8)


def test_like_nn_dropout_in_eval_at_p_zero_and_under_a_seed() -> None:
    x = torch.randn(8, 16)
    assert Dropout(0.3).eval()(x) is x and Dropout(0.0).train()(x) is x
    assert isinstance(Dropout(0.3), torch.nn.Dropout) and Dropout(0.3).p == 0.3
    torch.manual_seed(3)
    a = Dropout(0.3).train()(x)
    torch.manual_seed(3)
    b = Dropout(0.3).train()(x)
    assert torch.equal(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert Dropout(0.3).train()(x.bfloat16()).dtype == torch.bfloat16
