"""What every section of the benchmark shares, defined once.

- The run's environment line (device, torch, threads, transformers), printed above every table.
- The timing protocol: one warm-up per implementation, then rounds of timed updates with the
  order rotated each round, so load drifts on a shared machine hit every implementation alike.
- MFU: an analytical FLOP count of one pretraining forward per component (`model_flops`, from
  `wav2vec2.model.flops`, which the training log shares; an update is 3 forwards), over the
  GEMM peak measured at the start of the same run.
- Peak memory: getrusage maxrss on CPU, `torch.cuda.max_memory_allocated` on GPU.
- Result rows: every measurement is one `row(...)`; `--json PATH` writes them all at the end.
- The optimizer, device sync and heap release come from `fairseq_worker.py`, which must run
  without this package and shares them with every implementation timed here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time

import torch

import wav2vec2
from wav2vec2.bench.fairseq_worker import optimizer, peak_rss_mb, release_memory, sync
from wav2vec2.files import atomic_write
from wav2vec2.model.flops import conv_block_steps, model_flops, train_flops

__all__ = [
    "PACKAGE_DIR", "ROOT", "ROWS", "SAMPLE_RATE", "autocast", "conv_block_steps", "gemm_peak", "model_flops",
    "optimizer", "peak_memory_mb", "peaks", "print_env", "release_memory", "row", "rss_mb", "setup", "sync",
    "time_rounds", "train_flops", "write_rows",
]

SAMPLE_RATE = 16000
PACKAGE_DIR = os.path.dirname(os.path.abspath(wav2vec2.__file__))  # the wav2vec2/ being run
ROOT = os.path.dirname(PACKAGE_DIR)  # the checkout (or site-packages) that holds it


# ----------------------------------------------------------------------------- result rows
ROWS: list[dict] = []  # every measurement of this run, for --json


def row(section: str, name: str, impl: str, precision: str | None, *, audio_s_per_s=None,
        mfu=None, peak_mem_mb=None, **extra) -> dict:
    """Record one measurement; the keys every row has come first, then the section's own."""
    record = dict(section=section, name=name, impl=impl, precision=precision,
                  audio_s_per_s=audio_s_per_s, mfu=mfu, peak_mem_mb=peak_mem_mb, **extra)
    ROWS.append(record)
    return record


def write_rows(path: str, env: str | None) -> None:
    """Every row of the run, each with the environment line, as one JSON list."""
    atomic_write(path, json.dumps([{**r, "env": env} for r in ROWS], indent=2))


# ----------------------------------------------------------------------------- environment
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def setup(args: argparse.Namespace) -> torch.device:
    """Threads and device for the run; keeps the line every table carries in `args.env_line`."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{cpu_name()}, {os.cpu_count()} cores"
    try:
        import transformers

        hf_version = transformers.__version__
    except ImportError:
        hf_version = "not installed"
    args.env_line = (f"device={device} ({name}), torch {torch.__version__}, threads={torch.get_num_threads()}, "
                     f"transformers {hf_version}")
    return device


def print_env(args: argparse.Namespace, title: str) -> None:
    print(f"\n== {title} ==\n{args.env_line}")


def autocast(device: torch.device, precision: str):
    """bf16 autocast for "bf16", nothing for "fp32"."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- timing
def time_rounds(impls: dict, device: torch.device, *, rounds: int, reps: int) -> dict[str, list[float]]:
    """Seconds per update: one warm-up each, then `rounds` rounds of `reps` timed updates per
    implementation, the order rotated each round so load drifts hit all of them alike.
    An implementation that returns a float (the fairseq worker) timed itself: that is used."""
    names = list(impls)
    for fn in impls.values():
        fn()
        release_memory()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for _ in range(reps):
                sync(device)
                t0 = time.perf_counter()
                inner = impls[name]()
                sync(device)
                times[name].append(inner if isinstance(inner, float) else time.perf_counter() - t0)
                release_memory()
    return times


# ----------------------------------------------------------------------------- FLOPs and MFU
def gemm_peak(device: torch.device, dtype: torch.dtype, *, n: int = 2048, reps: int = 6) -> float:
    """FLOP/s of the best of `reps` n x n matmuls: the ceiling MFU is measured against."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    best = math.inf
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peaks(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """The fp32 and bf16 GEMM peaks, measured once per run (kept in `args.peaks`, so `all`
    divides every section by the same ceiling) and recorded as rows."""
    if getattr(args, "peaks", None) is None:
        args.peaks = {"fp32": gemm_peak(device, torch.float32), "bf16": gemm_peak(device, torch.bfloat16)}
        print(f"GEMM peak (2048^3 matmul, best of 6): fp32 {args.peaks['fp32'] / 1e9:.0f} GFLOP/s, "
              f"bf16 {args.peaks['bf16'] / 1e9:.0f} GFLOP/s")
        for p, v in args.peaks.items():
            row("peak", f"gemm 2048 {p}", "torch", p, gflops=v / 1e9)
    return args.peaks


# ----------------------------------------------------------------------------- memory
def rss_mb() -> float:
    """This process's resident set now (statm's second field is in pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA memory allocated on a GPU, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()
