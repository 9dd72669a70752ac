"""`memory`: peak memory of one BASE update (`--mem-batch` x `--mem-seconds`), per
implementation: ours, ours with activation checkpointing of the Transformer layers and the
conv blocks (`ours+ckpt`), transformers eager and SDPA, and fairseq when it is available.

How: each row runs in a fresh process (the internal `_memory_child` command, or the fairseq
worker with `--memory`), so no row inherits another's heap. The process builds one
implementation, runs two updates (the Adam state exists after the first) and reports its peak:
getrusage maxrss on CPU, `torch.cuda.max_memory_allocated` on GPU, plus the RSS right after
building ("after build") so the update's own share shows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

from wav2vec2.bench.common import (
    ROOT,
    SAMPLE_RATE,
    peak_memory_mb,
    print_env,
    row,
    rss_mb,
    setup,
    sync,
)
from wav2vec2.bench.updates import FairseqUpdate, HFUpdate, OursUpdate, bench_config, bench_inputs, find_fairseq_python
from wav2vec2.model.wav2vec2 import Wav2Vec2Model

IMPLS = ["ours", "ours+ckpt", "transformers-eager", "transformers-sdpa"]


def measure_in_this_process(args: argparse.Namespace) -> None:
    """The child's work: build `args.impl`, two updates, print "@@" + {"peak_mb", "built_mb"}."""
    device = setup(args)
    cfg = bench_config()
    cfg.transformer.activation_checkpointing = args.impl == "ours+ckpt"
    cfg.feature_encoder.activation_checkpointing = args.impl == "ours+ckpt"
    torch.manual_seed(0)
    state_dict = Wav2Vec2Model(cfg).state_dict()
    samples = int(round(args.seconds * SAMPLE_RATE))
    inputs = bench_inputs(cfg, args.batch, samples, device)
    if args.impl.startswith("ours"):
        fn = OursUpdate(cfg, state_dict, inputs, device, args.precision)
    else:
        fn = HFUpdate(cfg, state_dict, inputs, device, args.precision, args.impl.split("-")[1])
    del state_dict
    built = rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fn()
    fn()
    sync(device)
    print("@@" + json.dumps({"peak_mb": peak_memory_mb(device), "built_mb": built}), flush=True)


def child_main(argv: list[str]) -> None:
    """`_memory_child --impl IMPL [--batch B --seconds S --precision P --threads N --device D]`."""
    parser = argparse.ArgumentParser(prog="bench.py _memory_child",
                                     description="one memory row in this process (internal)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--impl", required=True, choices=IMPLS)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0)
    measure_in_this_process(parser.parse_args(argv))


def run_child(impl: str, precision: str, args: argparse.Namespace, device: torch.device) -> subprocess.CompletedProcess:
    """One row in a fresh interpreter. `-m` from ROOT runs the very package this process
    imported, whichever checkout or install that is."""
    cmd = [sys.executable, "-m", "wav2vec2.bench", "_memory_child", "--impl", impl,
           "--batch", str(args.mem_batch), "--seconds", str(args.mem_seconds), "--precision", precision,
           "--threads", str(args.threads), "--device", str(device)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)


def bench_memory(args: argparse.Namespace) -> None:
    """Peak memory per implementation and precision, a fresh process per row."""
    device = setup(args)
    print_env(args, f"memory: peak of one BASE update, {args.mem_batch} x {args.mem_seconds:g} s, "
                    "fresh process per row")
    args.fairseq_py, fs_note = find_fairseq_python(args)
    kind = "peak CUDA memory allocated" if device.type == "cuda" else "peak RSS (getrusage maxrss)"
    print(f"{kind}; 'after build' = RSS with the model built, before the first update")
    name = f"{args.mem_batch}x{args.mem_seconds:g}s"
    results = {}
    for precision in args.precision:
        print(f"{'impl':20} {'prec':5} {'peak MB':>8} {'after build':>11} {'peak - build':>12}")
        for impl in IMPLS:
            res = run_child(impl, precision, args, device)
            line = [x for x in res.stdout.splitlines() if x.startswith("@@")]
            if not line:
                print(f"{impl:20} failed: {res.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(line[0][2:])
            results[(impl, precision)] = r["peak_mb"]
            print(f"{impl:20} {precision:5} {r['peak_mb']:8.0f} {r['built_mb']:11.0f} {r['peak_mb'] - r['built_mb']:12.0f}")
            row("memory", name, impl, precision, peak_mem_mb=r["peak_mb"], built_mb=r["built_mb"])
        if args.fairseq_py:
            inputs = bench_inputs(bench_config(), args.mem_batch, int(round(args.mem_seconds * SAMPLE_RATE)), device)
            f = FairseqUpdate(args.fairseq_py, bench_config(), None, inputs, device, precision, args.threads,
                              memory=True)
            f.close()
            peak = f.first["maxrss_mb"]
            print(f"{'fairseq':20} {precision:5} {peak:8.0f} {'':>11} {'':>12}  ({f.note})")
            row("memory", name, "fairseq", precision, peak_mem_mb=peak, note=f.note)
        ours, ck = results.get(("ours", precision)), results.get(("ours+ckpt", precision))
        if ours and ck:
            print(f"activation checkpointing: peak {ck:.0f} MB vs {ours:.0f} MB = {1 - ck / ours:.0%} less")
    if not args.fairseq_py:
        print(fs_note)
