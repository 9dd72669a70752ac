"""`gpu`: the GPU check, one JSON object, written before any GPU ran this code.

On one CUDA GPU (under 5 minutes) it reports:
- the device, torch, CUDA and cuDNN versions;
- SDPA: which backends (flash, efficient, cudnn, math) run forward and backward on the
  model's real attention shapes in bf16, without and with the padding mask fine-tuning uses,
  each restricted to that backend alone (`sdpa_kernel`), and which attention ops ran in one
  real pretraining update, read from the profiler (what the default dispatch picked);
- a BASE pretraining update in bf16 at the recipe's crop (5 x 15.6 s: `data.max_tokens`
  1.4M over `data.max_sample_size` 250k), a BASE CTC update (4 x 15.6 s, frozen CNN, the
  recipes' masks) and a batched transcription (8 x 10 s) in bf16: audio-s/s, MFU (analytical
  FLOPs, `wav2vec2.model.flops`, over the device's dense bf16 peak from `PEAK_BF16_TFLOPS`,
  else the GEMM measured here) and peak memory;
- a one-GPU `torchrun` NCCL run of the tiny preset (bf16, deterministic kernels) stopped at
  a checkpoint and resumed, against the same run uninterrupted: every logged value must be
  identical (`resume_exact`);
- every Python warning raised on the way, and those the torchrun runs printed.

Without CUDA it runs the same steps on the CPU at tiny sizes (the tiny model, gloo), and says
so (`"device": "cpu"`, `note`): CI keeps the path from rotting (tests/bench/test_gpu.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from wav2vec2.bench.common import ROOT, SAMPLE_RATE, autocast, gemm_peak, peak_memory_mb, release_memory, row, sync
from wav2vec2.bench.ctc import CTC_VOCAB, CtcUpdate, ctc_bench_config
from wav2vec2.bench.updates import OursUpdate, bench_config, bench_inputs
from wav2vec2.config import ModelConfig, tiny
from wav2vec2.data import write_manifest, write_synthetic_corpus
from wav2vec2.model.ctc import Wav2Vec2Ctc
from wav2vec2.model.flops import ctc_update_flops, train_flops, transcribe_flops
from wav2vec2.model.wav2vec2 import Wav2Vec2Model

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, matched in
# order against `torch.cuda.get_device_name` (an H100 SXM names itself "H100 80GB HBM3").
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
    ("A10G", 70.0), ("A10", 125.0), ("A6000", 155.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0),
)
RECIPE_CROP = 250_000  # BASE pretraining: data.max_sample_size
RECIPE_BATCH = 1_400_000 // RECIPE_CROP  # data.max_tokens per GPU over the crop: 5 utterances
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
ATTENTION_OPS = {"_scaled_dot_product_flash_attention_for_cpu": "flash (cpu)",
                 "_scaled_dot_product_flash_attention": "flash", "_scaled_dot_product_efficient_attention": "efficient",
                 "_scaled_dot_product_cudnn_attention": "cudnn", "_scaled_dot_product_attention_math": "math"}
TIMING = ("time", "audio_sec_per_sec", "data_wait_sec", "mfu")  # logged keys that differ between runs
BASE_GPU_SIZES = dict(pretrain=(RECIPE_BATCH, RECIPE_CROP), ctc=(4, 249_600), transcribe=(8, 160_000), reps=5)
TINY_CPU_SIZES = dict(pretrain=(2, 64_000), ctc=(2, 64_000), transcribe=(4, 64_000), reps=3)


def peak_flops(device: torch.device) -> tuple[float, str]:
    """The device's dense bf16 peak (FLOP/s) and where it comes from: the table by name, else
    the best 8192^3 (CPU: 1024^3) bf16 matmul measured now."""
    measured = gemm_peak(device, torch.bfloat16, n=8192 if device.type == "cuda" else 1024, reps=4)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_BF16_TFLOPS:
            if key in name:
                return tflops * 1e12, f"data sheet ({key}: {tflops:g} TFLOP/s); measured GEMM {measured / 1e12:.0f}"
    return measured, "measured bf16 GEMM (no data-sheet figure for this device)"


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


def sdpa_backends(cfg: ModelConfig, batch: int, num_samples: int, device: torch.device) -> dict:
    """Which SDPA backends run forward + backward on the model's attention shapes in bf16,
    each alone: "ok" or the error with the reasons torch warned of (these warnings stay here,
    out of the run's list). Without a mask (cropped pretraining batches) and with the
    additive (B, 1, 1, T) padding mask of padded batches (fine-tuning)."""
    t = cfg.transformer
    T = cfg.feature_encoder.num_frames(num_samples)
    T += -T % t.required_seq_len_multiple
    shape = (batch, t.num_heads, T, t.embed_dim // t.num_heads)
    pad = torch.zeros(batch, 1, 1, T, device=device, dtype=torch.bfloat16)
    pad[0, ..., T - T // 4:] = float("-inf")  # the first utterance a quarter shorter
    out: dict = {"shape_bhtd": list(shape), "dropout_p": t.attention_dropout}
    for case, mask in (("no_mask", None), ("padding_mask", pad)):
        out[case] = {}
        for name, backend in BACKENDS.items():
            q, k, v = (torch.randn(shape, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
            with warnings.catch_warnings(record=True) as why:
                warnings.simplefilter("always")
                try:
                    with sdpa_kernel([backend]):
                        F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                       dropout_p=t.attention_dropout).sum().backward()
                    sync(device)
                    out[case][name] = "ok"
                except RuntimeError as e:
                    reasons = "; ".join(dict.fromkeys(str(w.message).split(" (Triggered")[0] for w in why))
                    out[case][name] = _first_line(e) + (f" [{reasons}]" if reasons else "")
    return out


def attention_ops_of_an_update(update) -> list[str]:
    """The SDPA kernels one real update dispatched to, read from the profiler's op names;
    none on the CPU's dropout path (`model/cpu_attention.py`), which is not SDPA."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        update()
    names = {e.key.removeprefix("aten::") for e in prof.key_averages()}
    return sorted({label for op, label in ATTENTION_OPS.items() if op in names})


def _no_sdpa(device: torch.device) -> str:
    return "no SDPA op: the CPU dropout path (cpu_attention.py)" if device.type == "cpu" else "no SDPA op seen"


def timed(fn, device: torch.device, reps: int) -> tuple[float, float]:
    """Median seconds of `reps` calls after one warm-up, and the peak memory (MB) meanwhile:
    CUDA's allocator peak, reset first; on the CPU the process's peak RSS so far."""
    fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        seconds.append(time.perf_counter() - t0)
    return float(np.median(seconds)), peak_memory_mb(device)


def _figures(what: str, batch: int, num_samples: int, seconds: float, mem: float, flops: float, peak: float) -> dict:
    audio = batch * num_samples / SAMPLE_RATE
    return {"what": what, "batch": f"{batch} x {num_samples / SAMPLE_RATE:g} s", "seconds": _sig(seconds),
            "audio_s_per_s": _sig(audio / seconds), "tflops_per_s": _sig(flops / seconds / 1e12),
            "mfu": _sig(flops / seconds / peak), "peak_mem_mb": round(mem, 1)}


def _sig(x: float) -> float:
    return float(f"{x:.4g}")


def model_sections(cfg: ModelConfig, ctc_cfg: ModelConfig, sizes: dict, device: torch.device, peak: float) -> dict:
    """The pretraining update, CTC update and transcription, bf16, timed; the SDPA report."""
    out: dict = {}
    B, L = sizes["pretrain"]
    out["sdpa"] = sdpa_backends(cfg, B, L, device)
    torch.manual_seed(0)
    inputs = bench_inputs(cfg, B, L, device)
    update = OursUpdate(cfg, Wav2Vec2Model(cfg).state_dict(), inputs, device, "bf16")
    out["sdpa"]["ran_in_pretrain_update"] = attention_ops_of_an_update(update) or [_no_sdpa(device)]
    s, mem = timed(update, device, sizes["reps"])
    out["pretrain_update"] = _figures("pretraining update: forward, loss, backward, AdamW (bf16 autocast)",
                                      B, L, s, mem, train_flops(cfg, B, L, inputs[3]), peak)
    del update, inputs
    release_memory()

    state = Wav2Vec2Ctc(ctc_cfg, vocab_size=CTC_VOCAB).state_dict()
    gen = torch.Generator().manual_seed(1)
    for key, train in (("ctc_update", True), ("transcribe", False)):
        B, L = sizes["ctc" if train else "transcribe"]
        source = torch.randn(B, L, generator=gen).to(device)
        lengths = torch.full((B,), int(15 * L / SAMPLE_RATE))  # ~15 letters per second
        targets = torch.randint(4, CTC_VOCAB, (B, int(lengths.max())), generator=gen)
        step = CtcUpdate("ours", ctc_cfg, state, source, targets.to(device), lengths.to(device), train=train)

        def bf16_step(step=step):
            with autocast(device, "bf16"):
                return step()

        s, mem = timed(bf16_step, device, sizes["reps"])
        out["sdpa"][f"ran_in_{key}"] = attention_ops_of_an_update(bf16_step) or [_no_sdpa(device)]
        flops = (ctc_update_flops(ctc_cfg, B, L, CTC_VOCAB) if train else transcribe_flops(ctc_cfg, B, L, CTC_VOCAB))
        what = ("CTC update: frozen CNN, the recipes' masks, AdamW (bf16 autocast)" if train
                else "batched greedy transcription, eval, no grad (bf16 autocast)")
        out[key] = _figures(what, B, L, s, mem, flops, peak)
        del step
        release_memory()
    return out


def tiny_configs() -> tuple[ModelConfig, ModelConfig]:
    """The CPU stand-ins: tiny with LayerDrop 0 for pretraining, and with a frozen CNN for CTC."""
    cfg, ctc_cfg = tiny(), tiny()
    cfg.transformer.layerdrop = ctc_cfg.transformer.layerdrop = 0.0
    ctc_cfg.feature_encoder.grad_mult = 0.0
    return cfg, ctc_cfg


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def _train_rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if not any(k.endswith(t) for t in TIMING)} for r in _rows(run_dir)]


def torchrun_smoke(device: torch.device, work: Path, peak: float, updates: int = 6) -> dict:
    """The tiny preset under `torchrun --nproc_per_node=1` (NCCL on CUDA, gloo on CPU), bf16,
    deterministic kernels: `updates` updates straight, and the same stopped at half (with its
    checkpoint) then rerun to resume. Every logged value but the timings must agree between
    the two. `peak` (FLOP/s) goes to `logging.peak_tflops`: the log's MFU, run for real."""
    corpus = work / "corpus"
    entries = write_synthetic_corpus(corpus / "audio", num_files=24, min_seconds=0.5, max_seconds=1.5)
    write_manifest(corpus / "train.tsv", str(corpus / "audio"), entries[:20])
    write_manifest(corpus / "valid.tsv", str(corpus / "audio"), entries[20:])
    backend = "nccl" if device.type == "cuda" else "gloo"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
               CUBLAS_WORKSPACE_CONFIG=":4096:8", OMP_NUM_THREADS="1")
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
            "--module", "wav2vec2.train.cli", "--config-name", "tiny", f"data.manifest_dir={corpus}",
            f"optim.max_update={updates}", f"checkpoint.save_every={updates // 2}", "train.validate_every=3",
            "logging.tensorboard=false", f"distributed.backend={backend}", f"train.device={device.type}",
            "precision.dtype=bf16", "train.deterministic=true", f"logging.peak_tflops={peak / 1e12:.6g}"]
    out: dict = {"backend": backend, "updates": updates, "command": " ".join(["python", *base[1:], "run_dir=..."]),
                 "runs": []}
    stderr = []
    t0 = time.perf_counter()
    for name, extra in (("straight", []), ("stopped", [f"train.stop_at_update={updates // 2}"]), ("resumed", [])):
        run_dir = work / ("straight" if name == "straight" else "resumed")
        proc = subprocess.run([*base, f"run_dir={run_dir}", *extra], capture_output=True, text=True, env=env,
                              timeout=600)
        stderr.append(proc.stderr)
        out["runs"].append({"run": name, "returncode": proc.returncode})
        if proc.returncode != 0:
            out["error"] = proc.stderr.strip().splitlines()[-5:]
            break
    out["seconds"] = round(time.perf_counter() - t0, 1)
    if "error" not in out:
        a, b = _train_rows(work / "straight"), _train_rows(work / "resumed")
        out["checkpoint_written"] = (work / "resumed" / "checkpoint_last.pt").is_file()
        out["rows"] = len(a)
        out["resume_exact"] = a == b and len(a) > 0
        if a != b:
            out["first_difference"] = next(([x, y] for x, y in zip(a, b) if x != y), [len(a), len(b)])
        out["train_losses"] = [r["loss"] for r in a if r["split"] == "train"]
        last = [r for r in _rows(work / "straight") if r["split"] == "train"][-1]
        out["logged_last_row"] = {k: last.get(k) for k in ("audio_sec_per_sec", "device_audio_sec_per_sec", "mfu")}
    # What the runs printed as warnings (rank 0 logs "WARNING:"; Python's warnings "...Warning:").
    out["warnings"] = sorted({line.strip()[:300] for text in stderr for line in text.splitlines()
                              if re.search(r"Warning\b|WARNING", line)})
    return out


def bench_gpu(args: argparse.Namespace) -> None:
    """The GPU check (see the module docstring): one JSON object on stdout."""
    t0 = time.perf_counter()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench.py gpu --device cuda: torch sees no CUDA device")
    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    torch.set_num_threads(args.threads)
    result: dict = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "threads": torch.get_num_threads(),
    }
    if not cuda:
        result["note"] = ("no CUDA device: the same steps on the CPU at tiny sizes (tiny model, gloo), "
                          "so the path keeps working; the figures say nothing about a GPU. peak_mem_mb is "
                          "the process's peak RSS so far, not per section")
    cfg, ctc_cfg = (bench_config(), ctc_bench_config()) if cuda else tiny_configs()
    result["model"] = "BASE (LayerDrop 0)" if cuda else "tiny (LayerDrop 0)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peak, source = peak_flops(device)
        result["peak_bf16_tflops"], result["peak_source"] = round(peak / 1e12, 3), source
        result.update(model_sections(cfg, ctc_cfg, BASE_GPU_SIZES if cuda else TINY_CPU_SIZES, device, peak))
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
            result["torchrun"] = torchrun_smoke(device, Path(work), peak)
    result["warnings"] = sorted({f"{w.category.__name__}: {str(w.message)[:300]} ({Path(w.filename).name}:{w.lineno})"
                                 for w in caught})
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    row("gpu", "gpu check", "ours", "bf16", audio_s_per_s=result["pretrain_update"]["audio_s_per_s"],
        mfu=result["pretrain_update"]["mfu"], peak_mem_mb=result["pretrain_update"]["peak_mem_mb"], check=result)
    args.env_line = f"device={result['device']}, torch {result['torch']}, cuda {result['cuda']}"
    print(json.dumps(result, indent=2))
