"""The benchmark's CTC section (`wav2vec2.bench.ctc.CtcUpdate`) runs both implementations on
the same weights: one fine-tuning update changes the trained weights and not the frozen CNN,
and transcription returns one label sequence per utterance, equal between the two."""

from __future__ import annotations

import torch

from wav2vec2.bench.ctc import CTC_VOCAB, CtcUpdate
from wav2vec2.config import tiny
from wav2vec2.model.ctc import Wav2Vec2Ctc


def test_ctc_update_and_transcription_run_for_ours_and_transformers() -> None:
    cfg = tiny()
    cfg.feature_encoder.grad_mult = 0.0
    cfg.transformer.layerdrop = 0.0
    torch.manual_seed(0)
    state = Wav2Vec2Ctc(cfg, vocab_size=CTC_VOCAB).state_dict()
    source = torch.randn(2, 16_000)
    targets = torch.randint(4, CTC_VOCAB, (2, 12))
    lengths = torch.tensor([12, 9])
    texts = {}
    for impl in ("ours", "transformers-eager"):
        update = CtcUpdate(impl, cfg, state, source, targets, lengths, train=True)
        before = {k: v.clone() for k, v in update.model.state_dict().items()}
        loss = update()
        assert torch.isfinite(loss)
        after = update.model.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed and not any("feature_extractor" in k or "feature_encoder" in k for k in changed), impl
        texts[impl] = CtcUpdate(impl, cfg, state, source, targets, lengths, train=False)()
        assert len(texts[impl]) == 2
    assert texts["ours"] == texts["transformers-eager"]  # same weights, eval mode: same labels


def test_bf16_transcription_runs_under_autocast_for_both() -> None:
    """The bf16 rows time what they say: each implementation's forward meets bf16 matmuls."""
    cfg = tiny()
    torch.manual_seed(0)
    state = Wav2Vec2Ctc(cfg, vocab_size=CTC_VOCAB).state_dict()
    source = torch.randn(2, 16_000)
    targets, lengths = torch.randint(4, CTC_VOCAB, (2, 12)), torch.tensor([12, 9])
    for impl in ("ours", "transformers-sdpa"):
        run = CtcUpdate(impl, cfg, state, source, targets, lengths, train=False, precision="bf16")
        seen = []
        hook = run.model.register_forward_hook(lambda _m, _i, out: seen.append(
            (out.logits if hasattr(out, "logits") else out[0]).dtype))
        assert len(run()) == 2
        hook.remove()
        assert seen == [torch.bfloat16], impl
