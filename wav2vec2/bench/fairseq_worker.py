"""fairseq's side of the benchmark: a process that builds fairseq 0.12.2's `Wav2Vec2Model` with
our weights, audio and time mask, then runs one training update (forward, fairseq's criterion,
backward, AdamW, zero_grad) per "step" line on stdin and prints how long it took.

It runs under ANOTHER interpreter (`--fairseq-python`: fairseq 0.12.2 needs Python <= 3.10 or
a patched copy), where this package may not be installed. So it is run by path and imports
only the standard library, torch and fairseq. For the same reason it holds the torch-only
pieces every implementation must share with it (the optimizer, the device sync, the heap
release between updates, the peak-RSS read): `common.py` takes them from here, so the peers
and fairseq cannot drift apart.

Protocol with `updates.FairseqUpdate`, the parent:
  in:   `--input FILE`, a torch.save dict: cfg (fairseq's `Wav2Vec2Config` fields),
        state_dict (fairseq's names) or None for fresh weights, source (B, L) float,
        mask (B, T) bool, feature_penalty_weight, diversity_weight.
  out:  lines "@@" + JSON on stdout. Once built: {"note"}; then {"seconds"} per "step" line;
        any other line (the parent sends "quit") ends the process. With `--memory`: two
        updates, then {"note", "maxrss_mb"}, and exit.

Run by path, this directory comes first on sys.path: no module beside this one may share a
name with a module torch or fairseq imports (hence `profiling.py`, not `profile.py`).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import json
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------- shared with common.py
def optimizer(params):
    """The optimizer every implementation gets, so the comparison is of the models: the fused
    AdamW this project's trainer uses (and transformers' Trainer defaults to). fairseq's own
    CPU Adam is a per-tensor Python loop, which would only make it slower."""
    return torch.optim.AdamW(params, lr=1e-6, weight_decay=0.01, fused=True)


def sync(device) -> None:
    """Wait for the device's queue, so a timer around an update measures the update."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory() -> None:
    """Give freed heap back to the OS between updates (not timed), so two processes that
    each peaked at several GB (ours and the fairseq worker) do not hold it at once."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def peak_rss_mb() -> float:
    """This process's peak resident set so far (getrusage maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- the worker
def _emit(message: dict) -> None:
    print("@@" + json.dumps(message), flush=True)


def run(args: argparse.Namespace) -> None:
    """Build, load, then one update per "step" line (see the module docstring)."""
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = torch.load(args.input)
    known = {f.name for f in dataclasses.fields(Wav2Vec2Config)}
    fcfg = {k: v for k, v in data["cfg"].items() if k in known}
    fcfg["latent_temp"] = tuple(fcfg["latent_temp"])
    model = Wav2Vec2Model(Wav2Vec2Config(**fcfg))
    if data["state_dict"] is not None:
        model.load_state_dict(data["state_dict"], strict=True)
    model.to(device).train()
    source, mask = data["source"].to(device), data["mask"].to(device)
    note = "autocast"
    if args.precision == "bf16":
        try:  # fairseq's autocast path; fall back to casting the whole model, as its --bf16 does
            with torch.autocast(device.type, dtype=torch.bfloat16):
                model(source, mask_indices=mask)["x"].float().sum().backward()
        except Exception as e:  # noqa: BLE001 - any failure means: use the whole-model cast
            note = f"whole model in bf16 (autocast fails: {type(e).__name__})"
            model.bfloat16()
            source = source.bfloat16()
        model.zero_grad(set_to_none=True)
    opt = optimizer(model.parameters())

    def update() -> None:
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if note == "autocast" and \
            args.precision == "bf16" else torch.autocast(device.type, enabled=False)
        with ctx:
            out = model(source, mask_indices=mask)
            logits = model.get_logits(out).float()  # (B*M, 1+K), as fairseq's criterion
            n = logits.shape[0]
            loss = F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=device), reduction="sum")
            loss = loss + data["diversity_weight"] * n * (out["num_vars"] - out["prob_perplexity"]) / out["num_vars"]
            loss = loss + data["feature_penalty_weight"] * n * out["features_pen"].float()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if args.memory:
        update()
        update()
        _emit({"note": note, "maxrss_mb": peak_rss_mb()})
        return
    _emit({"note": note})
    for line in sys.stdin:
        if line.strip() != "step":
            break
        sync(device)
        t0 = time.perf_counter()
        update()
        sync(device)
        seconds = time.perf_counter() - t0
        release_memory()
        _emit({"seconds": seconds})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fairseq worker of the wav2vec2 benchmark (internal)")
    parser.add_argument("--input", required=True, help="the torch.save file the parent wrote")
    parser.add_argument("--memory", action="store_true", help="two updates, report peak RSS, exit")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--precision", default="fp32")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
