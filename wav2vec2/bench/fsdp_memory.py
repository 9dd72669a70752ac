"""`fsdp-memory`: peak memory per rank of BASE and LARGE pretraining updates under DDP and
FSDP2, measured on CPU with gloo (two ranks by default).

How: for each size and strategy, `--ranks` processes are spawned (fresh: no row inherits
another's heap); each joins a gloo group, builds the model (fp32, LayerDrop off so every rank
runs every layer), wraps it as the trainer does (`train.sharding.ParallelModel`), builds the
trainer's optimizer and runs two updates (forward, loss, backward, Adam step: the moments
exist after the first) on its own `--batch` x `--seconds` of audio, one thread each. It reports:
- states: the parameters and Adam moments it holds, counted tensor by tensor (a DTensor's
  local shard under FSDP2; gradients are freed by `zero_grad`);
- built: its RSS after building the whole model (before sharding);
- after: its RSS after the second update, once `malloc_trim` has handed freed heap back to the
  system, i.e. about what is live;
- peak: getrusage's peak RSS over the process's life. On a CPU this is the backward's high
  water (activations, gradients, allocator slack), which sharding divides little at these
  sizes: read `states` and `after` for what FSDP2 saves, 16 bytes per parameter under DDP
  (plus its gradient buckets) against 16 / ranks.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import tempfile

import torch
import torch.multiprocessing as mp

from wav2vec2.bench.common import SAMPLE_RATE, peak_memory_mb, row, rss_mb
from wav2vec2.bench.updates import bench_inputs
from wav2vec2.config import OptimConfig, base, large, tiny
from wav2vec2.model.losses import pretraining_loss
from wav2vec2.model.wav2vec2 import Wav2Vec2Model
from wav2vec2.train import distributed as dist_utils
from wav2vec2.train.optim import build_optimizer
from wav2vec2.train.sharding import ParallelModel

PRESETS = {"BASE": base, "LARGE": large, "TINY": tiny}  # TINY: the tests


def _rank(rank: int, world: int, port: int, size: str, strategy: str, batch: int, seconds: float,
          out_dir: str) -> None:
    """One rank's measurement, written to `out_dir/{rank}.json`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    info = dist_utils.init_distributed(backend="gloo", device="cpu")
    cfg = PRESETS[size]()
    cfg.transformer.layerdrop = 0.0
    torch.manual_seed(0)
    model = Wav2Vec2Model(cfg).train()
    built = rss_mb()
    parallel = ParallelModel(model, info, strategy=strategy, precision="fp32", find_unused_parameters=False)
    optimizer = build_optimizer(model, OptimConfig())
    source, mask, negatives, _ = bench_inputs(cfg, batch, int(seconds * SAMPLE_RATE), info.device, seed=rank)
    generator = torch.Generator().manual_seed(rank)
    for _ in range(2):
        out = parallel.module(source, temperature=2.0, generator=generator, time_mask=mask,
                              negative_indices=negatives)
        pretraining_loss(out, cfg.loss).total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = peak_memory_mb(info.device)
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so RSS is what is live
    result = {"peak_mb": peak, "built_mb": built, "after_mb": rss_mb(), "states_mb": _states_mb(model, optimizer),
              "parameters": sum(p.numel() for p in model.parameters())}
    with open(os.path.join(out_dir, f"{rank}.json"), "w") as f:
        json.dump(result, f)
    dist_utils.barrier()
    dist_utils.destroy()


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # a DTensor's shard on this rank


def _states_mb(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """What this rank holds of the parameters, their gradients (none after zero_grad) and
    Adam's moments, counted tensor by tensor."""
    tensors = [_local(p) for p in model.parameters()]
    tensors += [_local(v) for state in optimizer.state.values() for v in state.values()
                if isinstance(v, torch.Tensor) and v.dim() > 0]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def measure(size: str, strategy: str, *, ranks: int, batch: int, seconds: float, port: int) -> list[dict]:
    """Each rank's {peak_mb, built_mb, after_mb, parameters} for one size and strategy."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_rank, args=(ranks, port, size, strategy, batch, seconds, out_dir), nprocs=ranks, join=True)
        results = []
        for r in range(ranks):
            with open(os.path.join(out_dir, f"{r}.json")) as f:
                results.append(json.load(f))
        return results


def bench_fsdp_memory(args: argparse.Namespace) -> list[dict]:
    print(f"{args.ranks} gloo ranks on CPU, fp32, {args.batch} x {args.seconds:g} s per rank, two updates, "
          "one thread per rank")
    print(f"{'model':6} {'strategy':8} {'params':>7} {'states MB':>9} {'built MB':>9} {'after MB':>9} {'peak MB':>8}"
          "  (max over ranks)")
    out = []
    for k, size in enumerate(args.sizes):
        for j, strategy in enumerate(args.strategies):
            ranks = measure(size, strategy, ranks=args.ranks, batch=args.batch, seconds=args.seconds,
                            port=args.port + 2 * k + j)
            worst = {key: max(r[key] for r in ranks) for key in ("peak_mb", "built_mb", "after_mb", "states_mb")}
            params = ranks[0]["parameters"]
            print(f"{size:6} {strategy:8} {params / 1e6:6.1f}M {worst['states_mb']:9.0f} {worst['built_mb']:9.0f} "
                  f"{worst['after_mb']:9.0f} "
                  f"{worst['peak_mb']:8.0f}")
            out.append(row("fsdp-memory", f"{size} {strategy}", strategy, "fp32", peak_mem_mb=worst["peak_mb"],
                           built_mb=worst["built_mb"], after_mb=worst["after_mb"], states_mb=worst["states_mb"],
                           ranks=args.ranks,
                           per_rank_peak_mb=[r["peak_mb"] for r in ranks]))
    return out
