"""`ctc`: one CTC fine-tuning update of BASE with the recipes' values (4 x 15.6 s) and one
batched greedy transcription (8 x 10 s), ours against transformers' `Wav2Vec2ForCTC` (eager
and SDPA attention) with the same weights, fp32; transcription also in bf16 (autocast, what
`scripts/transcribe.py --precision bf16` runs), ours and transformers' SDPA alike.

How: the update is forward with the recipes' time and channel masks (CNN frozen), CTC loss on
random transcripts of ~15 letters per second, backward, AdamW, zero_grad; transcription is
eval mode, no grad, argmax and collapse. The implementations alternate over `--rounds` x
`--reps` after a warm-up (`common.time_rounds`); the medians give seconds per batch,
audio-s/s, real-time factor and the ratio ours / peer.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from wav2vec2.bench.common import SAMPLE_RATE, autocast, optimizer, print_env, release_memory, row, setup, time_rounds
from wav2vec2.bench.updates import bench_config
from wav2vec2.config import ModelConfig
from wav2vec2.infer.decode import greedy_ctc
from wav2vec2.interop.hf import ctc_config_to_hf, ctc_state_dict_to_hf
from wav2vec2.model.ctc import Wav2Vec2Ctc, ctc_loss_sum

CTC_VOCAB = 32  # letters, apostrophe, word boundary and the 4 specials of dict.ltr.txt


def ctc_bench_config() -> ModelConfig:
    """BASE with the CTC recipes' fine-tuning values (configs/ctc.yaml), LayerDrop 0."""
    cfg = bench_config()
    cfg.feature_encoder.grad_mult = 0.0  # frozen CNN
    t = cfg.transformer
    t.dropout, t.attention_dropout, t.activation_dropout = 0.0, 0.0, 0.1
    cfg.dropout_input = cfg.dropout_features = 0.0
    m = cfg.masking
    m.mask_prob, m.mask_len, m.channel_prob, m.channel_len = 0.65, 10, 0.5, 64
    return cfg


class CtcUpdate:
    """One CTC fine-tuning update (forward with masks, loss, backward, AdamW, zero_grad), or with
    `train=False` one batched greedy transcription (eval, no grad, argmax + collapse)."""

    def __init__(self, impl: str, cfg: ModelConfig, state_dict, source, targets, target_lengths, *,
                 train: bool, precision: str = "fp32") -> None:
        self.impl, self.cfg, self.train, self.precision = impl, cfg, train, precision
        self.source, self.targets, self.target_lengths = source, targets, target_lengths
        if impl == "ours":
            self.model = Wav2Vec2Ctc(cfg, vocab_size=CTC_VOCAB)
            self.model.load_state_dict(state_dict)
        else:
            from transformers import Wav2Vec2ForCTC

            hf_cfg = ctc_config_to_hf(cfg, vocab_size=CTC_VOCAB)
            hf_cfg._attn_implementation = impl.split("-")[1]  # "transformers-sdpa" -> "sdpa"
            self.model = Wav2Vec2ForCTC(hf_cfg)
            self.model.load_state_dict(ctc_state_dict_to_hf(state_dict, cfg))
            self.model.freeze_feature_encoder()
        self.model.to(source.device).train(train)
        self.opt = optimizer(p for p in self.model.parameters() if p.requires_grad) if train else None
        self.gen = torch.Generator(device=source.device).manual_seed(0)

    def __call__(self):
        if not self.train:
            with torch.no_grad(), autocast(self.source.device, self.precision):
                if self.impl == "ours":
                    out = self.model(self.source)
                    return greedy_ctc(out.logits, out.lengths)
                return greedy_ctc(self.model(self.source).logits)
        if self.impl == "ours":
            out = self.model(self.source, generator=self.gen)
            loss = ctc_loss_sum(out.logits, out.lengths, self.targets, self.target_lengths)
        else:
            # transformers reads padding in the labels as -100: (B, S) with positions >= length masked.
            labels = self.targets.masked_fill(
                torch.arange(self.targets.shape[1], device=self.targets.device) >= self.target_lengths[:, None], -100)
            loss = self.model(self.source, labels=labels).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss


def bench_ctc(args: argparse.Namespace) -> None:
    """One CTC fine-tuning update (frozen CNN, the recipes' masks) and batched greedy
    transcription of BASE: ours vs transformers' Wav2Vec2ForCTC with the same weights."""
    device = setup(args)
    print_env(args, "ctc: a BASE CTC fine-tuning update and batched greedy transcription, fp32")
    cfg = ctc_bench_config()
    torch.manual_seed(0)
    state_dict = Wav2Vec2Ctc(cfg, vocab_size=CTC_VOCAB).state_dict()
    print(f"median of {args.rounds} rounds x {args.reps} after 1 warm-up; ratio = ours / peer (> 1: ours faster)")
    print(f"{'what':28} {'impl':24} {'s/batch':>8} {'audio-s/s':>9} {'RTF':>7} {'ours/this':>9}")
    for what, batch, seconds, train in (("update 4 x 15.6 s", 4, 15.6, True),
                                        ("transcribe 8 x 10 s", 8, 10.0, False)):
        gen = torch.Generator().manual_seed(1)
        samples = int(round(seconds * SAMPLE_RATE))
        source = torch.randn(batch, samples, generator=gen).to(device)
        target_lengths = torch.full((batch,), int(15 * seconds))  # ~15 letters per second
        targets = torch.randint(4, CTC_VOCAB, (batch, int(target_lengths.max())), generator=gen)
        runs = [("ours", "fp32"), ("transformers-eager", "fp32"), ("transformers-sdpa", "fp32")]
        if not train:
            runs += [("ours", "bf16"), ("transformers-sdpa", "bf16")]
        impls = {name if precision == "fp32" else f"{name} bf16":
                 CtcUpdate(name, cfg, state_dict, source, targets.to(device), target_lengths.to(device), train=train,
                           precision=precision)
                 for name, precision in runs}
        times = time_rounds(impls, device, rounds=args.rounds, reps=args.reps)
        del impls
        release_memory()
        med = {n: float(np.median(ts)) for n, ts in times.items()}
        audio = batch * seconds
        for name, t in med.items():
            precision = "bf16" if name.endswith(" bf16") else "fp32"
            ratio = t / med["ours" if precision == "fp32" else "ours bf16"]  # against ours in the same precision
            print(f"{what:28} {name:24} {t:8.2f} {audio / t:9.2f} {t / audio:7.3f} {ratio:9.2f}")
            row("ctc", what, name.split()[0], precision, audio_s_per_s=audio / t, seconds_per_batch=t,
                real_time_factor=t / audio, ratio_ours_over_this=ratio)
