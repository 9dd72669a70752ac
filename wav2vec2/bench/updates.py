"""One training update of the BASE pretraining model, per implementation: the builders that
`train`, `memory` and `scaling` time (and `profile` takes its config from).

Each update is forward, loss, backward, AdamW step and zero_grad, built from the same
weights, audio, time mask and (transformers) negatives:
- `OursUpdate`: this project's `Wav2Vec2Model` and `pretraining_loss`.
- `HFUpdate`: transformers' `Wav2Vec2ForPreTraining`, eager or SDPA attention, our weights,
  mask and negatives converted with `wav2vec2.interop.hf`.
- `FairseqUpdate`: fairseq 0.12.2 in `fairseq_worker.py` under its own interpreter, driven step
  by step over a pipe so it alternates with the others in-process.
LayerDrop is 0 (`bench_config`), so every update does the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

from wav2vec2.bench import fairseq_worker
from wav2vec2.bench.common import autocast, optimizer
from wav2vec2.config import ModelConfig, base
from wav2vec2.interop.fairseq import config_to_fairseq, state_dict_to_fairseq
from wav2vec2.interop.hf import config_to_hf, negatives_to_hf, state_dict_to_hf
from wav2vec2.model.losses import pretraining_loss
from wav2vec2.model.masking import compute_span_mask
from wav2vec2.model.wav2vec2 import Wav2Vec2Model, sample_negatives


def bench_config(layerdrop: float = 0.0) -> ModelConfig:
    """BASE with LayerDrop off, so every update does the same work (timing, not training)."""
    cfg = base()
    cfg.transformer.layerdrop = layerdrop
    return cfg


def bench_inputs(cfg: ModelConfig, batch: int, num_samples: int, device: torch.device, seed: int = 0):
    """Audio (B, L), a time mask (B, T), negatives (B, M, K) and M, the masked frames per
    utterance: shared by every implementation."""
    gen = torch.Generator().manual_seed(seed)
    source = torch.randn(batch, num_samples, generator=gen)
    T = cfg.feature_encoder.num_frames(num_samples)
    m = cfg.masking
    mask = compute_span_mask((batch, T), mask_prob=m.mask_prob, mask_len=m.mask_len,
                             min_masks=m.min_masks, generator=gen)
    M = int(mask[0].sum())  # the span mask masks the same count in every row
    negs = sample_negatives(batch, M, cfg.num_negatives, generator=gen)
    return source.to(device), mask.to(device), negs.to(device), M


class OursUpdate:
    """This project: forward, loss, backward, Adam, zero_grad."""

    def __init__(self, cfg: ModelConfig, state_dict, inputs, device: torch.device, precision: str) -> None:
        self.cfg, self.device, self.precision = cfg, device, precision
        with torch.device("meta"):
            self.model = Wav2Vec2Model(cfg)
        self.model.load_state_dict({k: v.clone() for k, v in state_dict.items()}, assign=True)
        self.model.to(device).train()
        self.opt = optimizer(self.model.parameters())
        self.source, self.mask, self.negs, _ = inputs
        self.gen = torch.Generator(device=device).manual_seed(0)

    def __call__(self):
        with autocast(self.device, self.precision):
            out = self.model(self.source, temperature=2.0, generator=self.gen, time_mask=self.mask,
                             negative_indices=self.negs)
            loss = pretraining_loss(out, self.cfg.loss).total
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss


class HFUpdate:
    """transformers' Wav2Vec2ForPreTraining with our weights, mask and negatives."""

    def __init__(self, cfg: ModelConfig, state_dict, inputs, device: torch.device, precision: str,
                 attn: str) -> None:
        from transformers import Wav2Vec2ForPreTraining

        self.device, self.precision = device, precision
        hf_cfg = config_to_hf(cfg)
        hf_cfg._attn_implementation = attn
        with torch.device("meta"):
            self.model = Wav2Vec2ForPreTraining(hf_cfg)
        hf_state = {k: v.clone() for k, v in state_dict_to_hf(state_dict, cfg).items()}  # own copy
        self.model.load_state_dict(hf_state, strict=True, assign=True)
        self.model.to(device).train()
        self.opt = optimizer(self.model.parameters())
        self.source, self.mask, negs, _ = inputs
        self.negs = negatives_to_hf(self.mask, negs)

    def __call__(self):
        with autocast(self.device, self.precision):
            loss = self.model(self.source, mask_time_indices=self.mask,
                              sampled_negative_indices=self.negs).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss


class FairseqUpdate:
    """fairseq's Wav2Vec2Model in a worker process (`--fairseq-python`, its own venv), driven
    step by step over a pipe so it alternates with the others. Same weights, audio and time
    mask; fairseq draws its own negatives (it takes no indices), the same amount of work.
    The inputs cross in a torch.save file; replies are "@@" JSON lines (`fairseq_worker.py`)."""

    def __init__(self, python: str, cfg: ModelConfig, state_dict, inputs, device: torch.device, precision: str,
                 threads: int, memory: bool = False) -> None:
        self.tmp = tempfile.NamedTemporaryFile(suffix=".pt", delete=False)
        self.tmp.close()
        source, mask, _, _ = inputs
        torch.save({"cfg": config_to_fairseq(cfg),
                    "state_dict": state_dict_to_fairseq(state_dict, cfg) if state_dict else None,
                    "source": source.cpu(), "mask": mask.cpu(),
                    "feature_penalty_weight": cfg.loss.feature_penalty_weight,
                    "diversity_weight": cfg.loss.diversity_weight}, self.tmp.name)
        # By path: that interpreter may not have this package, and the worker does not need it.
        cmd = [python, os.path.abspath(fairseq_worker.__file__), "--input", self.tmp.name,
               "--precision", precision, "--threads", str(threads), "--device", str(device)]
        if memory:
            cmd.append("--memory")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     stderr=subprocess.DEVNULL)
        self.first = self._read()  # sent once built (with --memory: after two updates)
        self.note = self.first["note"]

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        raise RuntimeError(f"fairseq worker exited with {self.proc.wait()}")

    def __call__(self) -> float:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return self._read()["seconds"]  # timed inside the worker

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):  # the --memory worker has exited already
            pass
        self.proc.wait()
        os.unlink(self.tmp.name)


def find_fairseq_python(args: argparse.Namespace) -> tuple[str | None, str]:
    """The interpreter that imports fairseq (`--fairseq-python`, else this one), and a note:
    its fairseq version, or why fairseq is skipped."""
    python = args.fairseq_python or sys.executable
    probe = subprocess.run(
        [python, "-c", "from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Model; import fairseq; "
         "print(fairseq.__version__)"], capture_output=True, text=True)
    if probe.returncode == 0:
        return python, f"fairseq {probe.stdout.strip().splitlines()[-1]} ({python})"
    last = (probe.stderr.strip().splitlines() or ["?"])[-1]
    return None, (f"fairseq skipped: it does not import with {python} ({last}). fairseq 0.12.2 "
                  "needs Python <= 3.10 or a patched copy (see docs/performance.md); pass --fairseq-python")


def all_updates(args: argparse.Namespace, cfg: ModelConfig, state_dict, inputs, device: torch.device,
                precision: str) -> dict:
    """Ours, transformers eager and SDPA, and fairseq when `args.fairseq_py` found one."""
    impls = {"ours": OursUpdate(cfg, state_dict, inputs, device, precision)}
    for attn in ("eager", "sdpa"):
        impls[f"transformers-{attn}"] = HFUpdate(cfg, state_dict, inputs, device, precision, attn)
    if args.fairseq_py:
        impls["fairseq"] = FairseqUpdate(args.fairseq_py, cfg, state_dict, inputs, device, precision, args.threads)
    return impls
