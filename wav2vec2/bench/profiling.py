"""`profile`: where one BASE update of ours spends its time (`--profile-batch` x
`--profile-seconds`, `--profile-precision`), and which host syncs its forward makes.

How: after a warm-up update (which also creates the Adam state), `torch.profiler` records one
update whose phases (forward + loss, backward, optimizer step + zero_grad) are marked with
`record_function`; it prints the time per phase and the `--top` ops by self CPU time. Then a
TorchFunctionMode watches a training forward + backward for calls in `wav2vec2/` that read a
tensor's value on the host (`host_syncs`): on CUDA each one stalls the queue.

(Named `profiling`, not `profile`: `fairseq_worker.py` is run by path, which puts this
directory on sys.path, where a `profile.py` would shadow the standard library's.)
"""

from __future__ import annotations

import argparse
import os
import traceback

import torch
from torch.overrides import TorchFunctionMode
from torch.profiler import ProfilerActivity, profile, record_function

from wav2vec2.bench.common import (
    PACKAGE_DIR,
    ROOT,
    SAMPLE_RATE,
    autocast,
    optimizer,
    print_env,
    row,
    setup,
    sync,
)
from wav2vec2.bench.updates import bench_config
from wav2vec2.model.losses import pretraining_loss
from wav2vec2.model.wav2vec2 import Wav2Vec2Model

_SYNC_OPS = {"item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__", "nonzero"}
_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))


def _in_model_code(filename: str) -> bool:
    """A frame of the package under test: in wav2vec2/, but not this benchmark's own code."""
    path = os.path.abspath(filename)
    return path.startswith(PACKAGE_DIR + os.sep) and not path.startswith(_BENCH_DIR + os.sep)


def host_syncs(fn) -> list[str]:
    """Calls inside wav2vec2/ that bring a tensor's value to the host while `fn` runs:
    .item(), .tolist(), .cpu(), float()/int()/bool() of a tensor, nonzero or indexing with a
    bool mask (a data-dependent shape). Returns "op at file:line [device]" strings; on a CPU tensor they cost no device
    sync, on CUDA each one waits for the queue."""
    found: list[str] = []

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if name in ("__getitem__", "__setitem__", "index_put_", "masked_select"):  # bool index
                index = args[1] if len(args) > 1 else None
                indices = index if isinstance(index, tuple) else (index,)
                if any(getattr(i, "dtype", None) == torch.bool for i in indices):
                    name = f"{name}[bool mask]"
            if name.split("[")[0] in _SYNC_OPS or name.endswith("[bool mask]"):
                # The innermost frame in the model code is the call site to report.
                for frame in reversed(traceback.extract_stack()[:-1]):
                    if _in_model_code(frame.filename):
                        dev = args[0].device if args and hasattr(args[0], "device") else "?"
                        where = os.path.relpath(frame.filename, ROOT)
                        found.append(f"{name} at {where}:{frame.lineno} [{dev}]: {frame.line}")
                        break
            return func(*args, **(kwargs or {}))

    with Watch():
        fn()
    return found


def bench_profile(args: argparse.Namespace) -> None:
    """torch.profiler over one BASE update of ours (2 x 4 s by default): top ops by self
    time, time per phase, and the host syncs of a training forward."""
    device = setup(args)
    B, seconds = args.profile_batch, args.profile_seconds
    print_env(args, f"profile: one BASE update of ours, {B} x {seconds:g} s, {args.profile_precision}")
    cfg = bench_config()
    torch.manual_seed(0)
    model = Wav2Vec2Model(cfg).to(device).train()
    opt = optimizer(model.parameters())
    source = torch.randn(B, round(seconds * SAMPLE_RATE), device=device)
    gen = torch.Generator(device=device).manual_seed(0)

    def update():
        with record_function("## forward + loss"), autocast(device, args.profile_precision):
            loss = pretraining_loss(model(source, temperature=2.0, generator=gen), cfg.loss).total
        with record_function("## backward"):
            loss.backward()
        with record_function("## optimizer step + zero_grad"):
            opt.step()
            opt.zero_grad(set_to_none=True)

    update()  # warm-up (and Adam state)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        update()
        sync(device)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"total self CPU time {total / 1e6:.2f} s")
    for e in events:
        if e.key.startswith("## "):  # the phases marked in update()
            print(f"  {e.key[3:]:30} {e.cpu_time_total / 1e6:6.2f} s")
            row("profile", e.key[3:], "ours", args.profile_precision, seconds=e.cpu_time_total / 1e6)
    print(f"top {args.top} ops by self CPU time:")
    print(f"  {'op':42} {'self s':>7} {'share':>6} {'calls':>6}")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        share = e.self_cpu_time_total / total
        print(f"  {e.key[:42]:42} {e.self_cpu_time_total / 1e6:7.2f} {share:6.1%} {e.count:6d}")
        row("profile", e.key, "ours", args.profile_precision, self_cpu_s=e.self_cpu_time_total / 1e6,
            share=share, calls=e.count)

    def forward():
        with autocast(device, args.profile_precision):
            pretraining_loss(model(source, temperature=2.0, generator=gen), cfg.loss).total.backward()
        opt.zero_grad(set_to_none=True)

    syncs = host_syncs(forward)
    print(f"host reads of tensor values in wav2vec2/ during a training forward + backward: {len(syncs)}")
    for s in sorted(set(syncs)):
        print(f"  {syncs.count(s)} x {s}")
        row("profile", "host sync", "ours", None, where=s, count=syncs.count(s))
