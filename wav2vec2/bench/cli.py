"""The benchmark's command line (`scripts/bench.py`, `python -m wav2vec2.bench`): one
subcommand per section, its flags, and `--json PATH` to write every result row at the end.

Three internal commands are dispatched before argparse, so `--help` does not list them (users
took them for sections): `_memory_child` (one `memory` row in a fresh process),
`_align_child` (one aligner of the `align` section in a fresh process) and `_fairseq_worker`
(the fairseq worker; the benchmark itself runs `fairseq_worker.py` by path, since the fairseq
interpreter may lack this package).
"""

from __future__ import annotations

import argparse
import os
import sys

import wav2vec2.bench
from wav2vec2.bench import align as align_section
from wav2vec2.bench import fairseq_worker
from wav2vec2.bench.common import ROWS, write_rows
from wav2vec2.bench.ctc import bench_ctc
from wav2vec2.bench.data import bench_data
from wav2vec2.bench.fsdp_memory import PRESETS, bench_fsdp_memory
from wav2vec2.bench.fsdp_plan import SHAPES, bench_fsdp_plan
from wav2vec2.bench.gpu import bench_gpu
from wav2vec2.bench.mask import bench_mask
from wav2vec2.bench.memory import bench_memory, child_main
from wav2vec2.bench.profiling import bench_profile
from wav2vec2.bench.scaling import bench_scaling
from wav2vec2.bench.shards import bench_shards
from wav2vec2.bench.train import bench_train

INTERNAL_COMMANDS = {"_memory_child": child_main, "_fairseq_worker": fairseq_worker.main,
                     "_align_child": align_section.child_main}


def bench_all(args: argparse.Namespace) -> None:
    """train, mask, memory and scaling in one run (one GEMM peak for all)."""
    for fn in (bench_train, bench_mask, bench_memory, bench_scaling):
        fn(args)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for every impl")
    p.add_argument("--json", default=None, help="also write the result rows to this file")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    """Every model section takes every section's flags, so `all` can pass them on."""
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="full", action="store_false", help="2 x 4 s only (default)")
    size.add_argument("--full", dest="full", action="store_true",
                      help="also 4 x 15.6 s in train (~11 GB, ~40 s an update) and 30 s in scaling")
    p.set_defaults(full=False)
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--reps", type=int, default=2, help="timed updates per impl per round")
    p.add_argument("--fairseq-python", default=os.environ.get("FAIRSEQ_PYTHON"),
                   help="an interpreter whose environment imports fairseq (default: this one)")
    p.add_argument("--mask-reps", type=int, default=40)
    p.add_argument("--mem-batch", type=int, default=2)
    p.add_argument("--mem-seconds", type=float, default=4.0)
    p.add_argument("--scale-batch", type=int, default=2)
    p.add_argument("--scale-reps", type=int, default=3)
    p.add_argument("--scale-precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    p.add_argument("--scale-peers", nargs="*", default=[], choices=["eager", "sdpa"],
                   help="transformers attention modes to time beside ours")
    p.add_argument("--profile-precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--profile-batch", type=int, default=2)
    p.add_argument("--profile-seconds", type=float, default=4.0)
    p.add_argument("--top", type=int, default=20)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=wav2vec2.bench.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, help_ in (
        ("train", bench_train, "one BASE update: ours vs transformers vs fairseq, fp32 and bf16"),
        ("mask", bench_mask, "span mask + negatives vs transformers' NumPy path"),
        ("memory", bench_memory, "peak memory of one BASE update, with and without checkpointing"),
        ("scaling", bench_scaling, "throughput against utterance length"),
        ("profile", bench_profile, "top ops of one BASE update and host syncs in the forward"),
        ("ctc", bench_ctc, "a CTC fine-tuning update and batched greedy transcription vs transformers"),
        ("all", bench_all, "train, mask, memory and scaling"),
    ):
        # "model" was this section's name before it timed a whole update.
        p = sub.add_parser(name, help=help_, aliases=["model"] if name == "train" else [])
        _add_common(p)
        _add_model_args(p)
        p.set_defaults(func=fn)

    data = sub.add_parser("data", help="data loader throughput vs a plain soundfile loop")
    data.add_argument("--seconds", type=float, default=1800.0, help="audio per format to generate")
    data.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    data.add_argument("--max-tokens", type=int, default=1_400_000, help="BASE recipe budget")
    data.add_argument("--max-sample-size", type=int, default=250_000, help="BASE recipe crop")
    data.add_argument("--corpus-dir", default=None, help="keep the generated corpus here")
    data.add_argument("--json", default=None, help="also write results to this file")
    data.set_defaults(func=bench_data)

    shards = sub.add_parser("shards", help="loader throughput and open/seek calls: tar shards vs one file per "
                                           "utterance, per worker")
    shards.add_argument("--seconds", type=float, default=600.0, help="audio per format to generate")
    shards.add_argument("--min-seconds", type=float, default=8.0, help="shortest utterance")
    shards.add_argument("--max-seconds", type=float, default=16.0, help="longest utterance")
    shards.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    shards.add_argument("--shard-mb", type=float, default=4.0, help="shard size (real corpora: 256+)")
    shards.add_argument("--shuffle-buffer", type=int, default=10_000, help="data.shuffle_buffer")
    shards.add_argument("--max-tokens", type=int, default=1_400_000, help="BASE recipe budget")
    shards.add_argument("--max-sample-size", type=int, default=250_000, help="BASE recipe crop")
    shards.add_argument("--corpus-dir", default=None, help="keep the generated corpus and shards here")
    shards.add_argument("--json", default=None, help="also write results to this file")
    shards.set_defaults(func=bench_shards)

    plan = sub.add_parser("fsdp-plan", help="on paper: peak memory per GPU of 1B/2B/7B pretraining under DDP "
                                            "and FSDP2, with and without activation checkpointing")
    plan.add_argument("--sizes", nargs="+", default=["1B", "2B", "7B"], choices=list(SHAPES))
    plan.add_argument("--gpus", type=int, default=8)
    plan.add_argument("--card-gb", type=float, default=80.0)
    plan.add_argument("--frames", type=int, default=3750, help="frames per GPU (1.2M samples: 3,750)")
    plan.add_argument("--json", default=None, help="also write results to this file")
    plan.set_defaults(func=bench_fsdp_plan)

    fsdp_mem = sub.add_parser("fsdp-memory", help="measured: peak memory per rank of BASE and LARGE updates under "
                                                  "DDP and FSDP2, gloo ranks on CPU")
    fsdp_mem.add_argument("--sizes", nargs="+", default=["BASE", "LARGE"], choices=list(PRESETS))
    fsdp_mem.add_argument("--strategies", nargs="+", default=["ddp", "fsdp"], choices=["ddp", "fsdp"])
    fsdp_mem.add_argument("--ranks", type=int, default=2)
    fsdp_mem.add_argument("--batch", type=int, default=2)
    fsdp_mem.add_argument("--seconds", type=float, default=2.0)
    fsdp_mem.add_argument("--port", type=int, default=29533, help="first rendezvous port (one per row)")
    fsdp_mem.add_argument("--json", default=None, help="also write results to this file")
    fsdp_mem.set_defaults(func=bench_fsdp_memory)

    align = sub.add_parser("align", help="forced alignment of real speech: boundary errors, time and memory, "
                                         "vs ctc-segmentation and torchaudio")
    align.add_argument("--model", required=True, help="a CTC model (anything scripts/align.py takes)")
    align.add_argument("--dictionary", help="dict.ltr.txt of a fairseq checkpoint")
    align.add_argument("--prompts", nargs="+", required=True,
                       help="manifests DIR/subset.tsv (with .wrd or .ltr) whose utterances are laid end to end")
    align.add_argument("--minutes", type=float, nargs="+", default=[1.0, 60.0], help="recording lengths")
    align.add_argument("--seed", type=int, default=0)
    align.add_argument("--torchaudio-python", help="an interpreter with torchaudio, for its forced_align")
    align.add_argument("--torchaudio-max-minutes", type=float, default=10.0,
                       help="longest recording given to torchaudio (T x S bytes of backpointers)")
    align.add_argument("--base-seconds", type=float, default=0.0,
                       help="also time a BASE-sized model's emissions on this much audio")
    align.add_argument("--work-dir", help="keep the recordings and emissions here (default: a temporary dir)")
    align.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    align.add_argument("--device", default="cpu")
    align.add_argument("--json", default=None, help="also write the result rows to this file")
    align.set_defaults(func=align_section.bench_align)

    gpu = sub.add_parser("gpu", help="the GPU check: BASE bf16 updates and transcription, SDPA backends, a torchrun "
                                     "NCCL run with resume, warnings; one JSON object (without CUDA: tiny on CPU)")
    gpu.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                     help="auto: the first CUDA GPU if there is one, else the CPU")
    gpu.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    gpu.add_argument("--json", default=None, help="also write the object (as a result row) to this file")
    gpu.set_defaults(func=bench_gpu)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in INTERNAL_COMMANDS:
        INTERNAL_COMMANDS[argv[0]](argv[1:])
        return
    args = build_parser().parse_args(argv)
    ROWS.clear()
    args.func(args)
    if args.json:
        write_rows(args.json, getattr(args, "env_line", None))
