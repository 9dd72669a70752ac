"""Benchmarks of a wav2vec 2.0 training update against transformers and fairseq, in one run.

    python scripts/bench.py train    [--quick | --full] [--precision fp32 bf16]
    python scripts/bench.py mask     # span mask + negatives, B=8 T=781, vs transformers' NumPy
    python scripts/bench.py memory   # peak RSS of one BASE update, fresh process per row
    python scripts/bench.py scaling  [--full]   # audio-s/s against utterance length
    python scripts/bench.py profile  # top ops of one BASE update; host syncs in the forward
    python scripts/bench.py all      [--quick | --full]   # train, mask, memory, scaling
    python scripts/bench.py data     [--seconds 1800] [--workers 0 1 2]

Every model section runs one full training update of the BASE pretraining model (12 layers):
forward, loss, backward, Adam step, zero_grad. The peers get the same weights, the same audio,
the same time mask and (transformers) the same negatives, the same thread count, and run
alternately in one process: transformers' `Wav2Vec2ForPreTraining` with eager and with SDPA
attention (the faster one is the "best peer"), and fairseq 0.12.2's `Wav2Vec2Model` when an
interpreter with fairseq is given (`--fairseq-python`, or fairseq importable here). LayerDrop is
set to 0 so every update does the same work. Throughput is audio-seconds per second (median
of the timed updates); MFU is an analytical FLOP count (`model_flops`) per second over the
GEMM peak measured at the start of the same run. `--json PATH` writes one row per
measurement. Needs the `bench` extra (transformers).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

# One GPU training BASE consumes ~1,600 audio-seconds/s (fairseq recipe, A100-class); a
# loader below that per GPU from a few workers is a bug to chase.
GPU_AUDIO_SECONDS_PER_S = 1600.0
SAMPLE_RATE = 16000
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS: list[dict] = []  # every measurement, for --json


def _row(section: str, name: str, impl: str, precision: str | None, *, audio_s_per_s=None,
         mfu=None, peak_mem_mb=None, **extra) -> dict:
    row = dict(section=section, name=name, impl=impl, precision=precision,
               audio_s_per_s=audio_s_per_s, mfu=mfu, peak_mem_mb=peak_mem_mb, **extra)
    ROWS.append(row)
    return row


def _write_bench_corpus(root: str, *, total_seconds: float, seed: int) -> dict[str, str]:
    """Same speech-like utterances (8-16 s, LibriSpeech-like) as FLAC and WAV; returns manifests."""
    import soundfile as sf

    from wav2vec2.data import build_manifest, synth_utterance

    manifests = {ext: os.path.join(root, f"m_{ext}", "train.tsv") for ext in ("flac", "wav")}
    if all(os.path.exists(m) for m in manifests.values()):  # reuse a kept --corpus-dir
        return manifests
    rng = np.random.default_rng(seed)
    written, i = 0.0, 0
    while written < total_seconds:
        n = int(rng.uniform(8.0, 16.0) * 16000)
        wav = synth_utterance(n, sample_rate=16000, rng=rng)
        for ext in ("flac", "wav"):
            path = os.path.join(root, ext, f"spk{i % 10}", f"utt{i:05d}.{ext}")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            sf.write(path, wav, 16000, subtype="PCM_16")
        written, i = written + n / 16000, i + 1
    for ext in ("flac", "wav"):
        build_manifest(os.path.join(root, ext), os.path.join(root, f"m_{ext}"), exts=[ext], valid_percent=0)
    return manifests


def _baseline(manifest: str) -> dict:
    """Read every file with soundfile in one process: the ceiling for one core."""
    import soundfile as sf

    from wav2vec2.data import read_manifest

    root, entries = read_manifest(manifest)
    start, samples = time.perf_counter(), 0
    for rel, _ in entries:
        samples += len(sf.read(os.path.join(root, rel), dtype="float32")[0])
    elapsed = time.perf_counter() - start
    return {"read_s_per_s": samples / 16000 / elapsed, "delivered_s_per_s": samples / 16000 / elapsed}


def _loader(manifest: str, *, num_workers: int, max_tokens: int, max_sample_size: int) -> dict:
    """One epoch through the real pipeline: dataset -> token-budget sampler -> DataLoader."""
    from wav2vec2.data import RawAudioDataset, TokenBudgetBatchSampler, build_dataloader

    ds = RawAudioDataset(manifest, max_sample_size=max_sample_size)
    sampler = TokenBudgetBatchSampler(ds.sizes, max_tokens=max_tokens, seed=1)
    loader = build_dataloader(ds, sampler, seed=1, num_workers=num_workers)
    start, read, delivered = time.perf_counter(), 0, 0
    for batch in loader:
        read += int(ds.lengths[batch["id"].numpy()].sum())  # whole files are decoded
        delivered += batch["source"].numel()  # after crop-to-shortest
    elapsed = time.perf_counter() - start  # includes worker start-up, as a real epoch does
    return {"read_s_per_s": read / 16000 / elapsed, "delivered_s_per_s": delivered / 16000 / elapsed}


def bench_data(args: argparse.Namespace) -> dict:
    """Audio-seconds per second: plain soundfile reads vs the loader with 0..N workers."""
    with tempfile.TemporaryDirectory() as tmp:
        root = args.corpus_dir or tmp
        t0 = time.perf_counter()
        manifests = _write_bench_corpus(root, total_seconds=args.seconds, seed=0)
        print(f"corpus: {args.seconds:.0f} s of 16 kHz audio per format, written in {time.perf_counter() - t0:.0f} s")
        results = {}
        print(f"{'format':6} {'reader':14} {'read audio-s/s':>15} {'delivered':>10} {'per worker':>11}")
        for fmt, manifest in manifests.items():
            _baseline(manifest)  # warm the page cache so all runs read from memory
            rows = {"soundfile loop": _baseline(manifest)}
            for w in args.workers:
                rows[f"loader w={w}"] = _loader(
                    manifest, num_workers=w, max_tokens=args.max_tokens, max_sample_size=args.max_sample_size
                )
            for name, r in rows.items():
                w = int(name.split("=")[1]) if "=" in name else 0
                per = f"{r['read_s_per_s'] / w:11.0f}" if w else f"{'':11}"
                print(f"{fmt:6} {name:14} {r['read_s_per_s']:15.0f} {r['delivered_s_per_s']:10.0f} {per}")
                _row("data", f"{fmt} {name}", "ours", None, audio_s_per_s=r["read_s_per_s"],
                     delivered_s_per_s=r["delivered_s_per_s"])
            results[fmt] = rows
        print(f"(one GPU needs ~{GPU_AUDIO_SECONDS_PER_S:.0f} audio-s/s; {os.cpu_count()} CPU cores here)")
    return results


# ----------------------------------------------------------------------------- environment
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _setup(args: argparse.Namespace):
    """Threads and device for the run; prints the line every table carries."""
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{_cpu_name()}, {os.cpu_count()} cores"
    try:
        import transformers

        hf_version = transformers.__version__
    except ImportError:
        hf_version = "not installed"
    args.env_line = (f"device={device} ({name}), torch {torch.__version__}, threads={torch.get_num_threads()}, "
                     f"transformers {hf_version}")
    return device


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _print_env(args: argparse.Namespace, title: str) -> None:
    print(f"\n== {title} ==\n{args.env_line}")


# ----------------------------------------------------------------------------- FLOPs
def model_flops(cfg, batch: int, num_samples: int, num_masked: int) -> dict[str, float]:
    """Analytical FLOPs of one pretraining *forward* (a multiply-add = 2 FLOPs), per component.

    Counts the matrix products only (convolutions, linears, attention's QK^T and AV, the
    quantizer's codebook product, the logits' dot products): norms, activations, softmax and
    dropout are a few FLOPs per element and left out, as torch's FlopCounterMode does.
    A training update costs 3x the forward (backward = 2 products per forward product), less
    the first conv's input gradient (audio needs none), which is negligible (C_in = 1).
    """
    fe, t, q = cfg.feature_encoder, cfg.transformer, cfg.quantizer
    B, D, Fd = batch, t.embed_dim, cfg.final_dim or t.embed_dim
    out: dict[str, float] = {}
    # CNN: a Conv1d costs 2 * C_in * C_out * k per output step.
    length, c_in, cnn = num_samples, 1, 0.0
    for c_out, k, s in zip(fe.conv_dims, fe.conv_kernels, fe.conv_strides):
        length = (length - k) // s + 1
        cnn += 2 * B * length * c_in * c_out * k
        c_in = c_out
    out["cnn"] = cnn
    C, T = c_in, length
    if cfg.crop_seq_to_multiple > 1:
        T -= T % cfg.crop_seq_to_multiple
    Tp = T + (-T % t.required_seq_len_multiple)  # the layers see T padded to the multiple
    M, K = num_masked, cfg.num_negatives
    vq = q.codebook_dim or Fd
    proj = (2 * B * T * C * D if C != D else 0) + 2 * B * M * vq * Fd + 2 * B * M * D * Fd
    out["projections"] = proj  # post_extract_proj, project_q, final_proj
    # Grouped positional conv, pad k/2 both sides: T+1 output steps for an even kernel.
    out["pos_conv"] = 2 * B * (T + 1 - t.conv_pos % 2) * D * (D // t.conv_pos_groups) * t.conv_pos
    L = t.num_layers
    out["attention_proj"] = L * 4 * 2 * B * Tp * D * D  # q, k, v, out
    out["attention_scores"] = L * 2 * 2 * B * Tp * Tp * D  # QK^T and AV over all heads
    out["ffn"] = L * 2 * 2 * B * Tp * D * t.ffn_dim
    G, V = q.num_codebooks, q.num_entries
    hidden = C * q.hidden_factor
    logits_in = [C] + [hidden] * (q.depth - 1)
    logits_out = [hidden] * (q.depth - 1) + [G * V]
    qproj = sum(2 * B * M * i * o for i, o in zip(logits_in, logits_out))
    out["quantizer"] = qproj + 2 * B * M * V * vq  # logits MLP + one-hot x codebook per group
    out["logits"] = 2 * B * M * (1 + K) * Fd  # context . candidate, as one batched product
    return out


def train_flops(cfg, batch: int, num_samples: int, num_masked: int) -> float:
    return 3.0 * sum(model_flops(cfg, batch, num_samples, num_masked).values())


def gemm_peak(device, dtype, *, n: int = 2048, reps: int = 6) -> float:
    """FLOP/s of the best of `reps` n x n matmuls: the ceiling MFU is measured against."""
    import torch

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    best = math.inf
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _peaks(args, device) -> dict[str, float]:
    import torch

    if getattr(args, "peaks", None) is None:
        args.peaks = {"fp32": gemm_peak(device, torch.float32), "bf16": gemm_peak(device, torch.bfloat16)}
        print(f"GEMM peak (2048^3 matmul, best of 6): fp32 {args.peaks['fp32'] / 1e9:.0f} GFLOP/s, "
              f"bf16 {args.peaks['bf16'] / 1e9:.0f} GFLOP/s")
        for p, v in args.peaks.items():
            _row("peak", f"gemm 2048 {p}", "torch", p, gflops=v / 1e9)
    return args.peaks


# ----------------------------------------------------------------------------- one update
def bench_config(layerdrop: float = 0.0):
    """BASE with LayerDrop off, so every update does the same work (timing, not training)."""
    from wav2vec2.config import base

    cfg = base()
    cfg.transformer.layerdrop = layerdrop
    return cfg


def _inputs(cfg, batch: int, num_samples: int, device, seed: int = 0):
    """Audio, a time mask and negatives shared by every implementation."""
    import torch

    from wav2vec2.model.feature_encoder import ConvFeatureEncoder
    from wav2vec2.model.masking import compute_span_mask
    from wav2vec2.model.wav2vec2 import sample_negatives

    gen = torch.Generator().manual_seed(seed)
    source = torch.randn(batch, num_samples, generator=gen)
    T = ConvFeatureEncoder(cfg.feature_encoder).output_lengths(num_samples)
    m = cfg.masking
    mask = compute_span_mask((batch, T), mask_prob=m.mask_prob, mask_len=m.mask_len,
                             min_masks=m.min_masks, generator=gen)
    M = int(mask[0].sum())
    negs = sample_negatives(batch, M, cfg.num_negatives, generator=gen)
    return source.to(device), mask.to(device), negs.to(device), M


def _autocast(device, precision: str):
    import contextlib

    import torch

    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def optimizer(params):
    """The optimizer every implementation gets, so the comparison is of the models: the fused
    AdamW this project's trainer uses (and transformers' Trainer defaults to). fairseq's own
    CPU Adam is a per-tensor Python loop, which would only make it slower."""
    import torch

    return torch.optim.AdamW(params, lr=1e-6, weight_decay=0.01, fused=True)


class OursUpdate:
    """This project: forward, loss, backward, Adam, zero_grad."""

    def __init__(self, cfg, state_dict, inputs, device, precision: str) -> None:
        import torch

        from wav2vec2.model.wav2vec2 import Wav2Vec2Model

        self.cfg, self.device, self.precision = cfg, device, precision
        with torch.device("meta"):
            self.model = Wav2Vec2Model(cfg)
        self.model.load_state_dict({k: v.clone() for k, v in state_dict.items()}, assign=True)
        self.model.to(device).train()
        self.opt = optimizer(self.model.parameters())
        self.source, self.mask, self.negs, _ = inputs
        self.gen = torch.Generator(device=device).manual_seed(0)

    def __call__(self) -> float:
        from wav2vec2.model.losses import pretraining_loss

        with _autocast(self.device, self.precision):
            out = self.model(self.source, temperature=2.0, generator=self.gen, time_mask=self.mask,
                             negative_indices=self.negs)
            loss = pretraining_loss(out, self.cfg.loss).total
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss


class HFUpdate:
    """transformers' Wav2Vec2ForPreTraining with our weights, mask and negatives."""

    def __init__(self, cfg, state_dict, inputs, device, precision: str, attn: str) -> None:
        import torch
        from transformers import Wav2Vec2ForPreTraining

        from wav2vec2.interop.hf import config_to_hf, negatives_to_hf, state_dict_to_hf

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
        with _autocast(self.device, self.precision):
            loss = self.model(self.source, mask_time_indices=self.mask,
                              sampled_negative_indices=self.negs).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss


class FairseqUpdate:
    """fairseq's Wav2Vec2Model in a worker process (`--fairseq-python`, its own venv), driven
    step by step over a pipe so it alternates with the others. Same weights, audio and time
    mask; fairseq draws its own negatives (it takes no indices), the same amount of work."""

    def __init__(self, python: str, cfg, state_dict, inputs, device, precision: str, threads: int,
                 memory: bool = False) -> None:
        import torch

        from wav2vec2.interop.fairseq import config_to_fairseq, state_dict_to_fairseq

        self.tmp = tempfile.NamedTemporaryFile(suffix=".pt", delete=False)
        self.tmp.close()
        source, mask, _, _ = inputs
        torch.save({"cfg": config_to_fairseq(cfg),
                    "state_dict": state_dict_to_fairseq(state_dict, cfg) if state_dict else None,
                    "source": source.cpu(), "mask": mask.cpu(),
                    "feature_penalty_weight": cfg.loss.feature_penalty_weight,
                    "diversity_weight": cfg.loss.diversity_weight}, self.tmp.name)
        cmd = [python, os.path.abspath(__file__), "_fairseq_worker", "--input", self.tmp.name,
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


def _fairseq_worker(args: argparse.Namespace) -> None:
    """Runs in the fairseq interpreter: build, load, then one update per "step" line."""
    import dataclasses

    import torch
    import torch.nn.functional as F
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
        import resource

        update()
        update()
        print("@@" + json.dumps({"note": note, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}),
              flush=True)
        return
    print("@@" + json.dumps({"note": note}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        _sync(device)
        t0 = time.perf_counter()
        update()
        _sync(device)
        seconds = time.perf_counter() - t0
        release_memory()
        print("@@" + json.dumps({"seconds": seconds}), flush=True)


def _fairseq_python(args: argparse.Namespace) -> tuple[str | None, str]:
    """The interpreter that imports fairseq, and a note on why fairseq is skipped if none."""
    candidates = [args.fairseq_python] if args.fairseq_python else [sys.executable]
    for python in candidates:
        probe = subprocess.run(
            [python, "-c", "from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Model; import fairseq; "
             "print(fairseq.__version__)"], capture_output=True, text=True)
        if probe.returncode == 0:
            return python, f"fairseq {probe.stdout.strip().splitlines()[-1]} ({python})"
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
    return None, (f"fairseq skipped: it does not import with {candidates[0]} ({last}). fairseq 0.12.2 "
                  "needs Python <= 3.10 or a patched copy (see docs/performance.md); pass --fairseq-python")


def _impls(args, cfg, state_dict, inputs, device, precision: str) -> dict:
    impls = {"ours": OursUpdate(cfg, state_dict, inputs, device, precision)}
    for attn in ("eager", "sdpa"):
        impls[f"transformers-{attn}"] = HFUpdate(cfg, state_dict, inputs, device, precision, attn)
    if args.fairseq_py:
        impls["fairseq"] = FairseqUpdate(args.fairseq_py, cfg, state_dict, inputs, device, precision, args.threads)
    return impls


def release_memory() -> None:
    """Give freed heap back to the OS between updates (not timed), so two processes that
    each peaked at several GB (ours and the fairseq worker) do not hold it at once."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def _time_rounds(impls: dict, device, *, rounds: int, reps: int) -> dict[str, list[float]]:
    """Seconds per update: one warm-up each, then `rounds` rounds of `reps` timed updates per
    implementation, the order rotated each round so load drifts hit all of them alike."""
    names = list(impls)
    for fn in impls.values():
        fn()
        release_memory()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for _ in range(reps):
                _sync(device)
                t0 = time.perf_counter()
                inner = impls[name]()
                _sync(device)
                times[name].append(inner if isinstance(inner, float) else time.perf_counter() - t0)
                release_memory()
    return times


# ----------------------------------------------------------------------------- train
def bf16_loss_gap(cfg, state_dict, inputs, device) -> tuple[float, float]:
    """Our pretraining loss on the benchmark batch in fp32 and under bf16 autocast, same
    weights, mask and negatives, in eval mode (no dropout, hard codes): bf16's accuracy check."""
    import torch

    from wav2vec2.model.losses import pretraining_loss
    from wav2vec2.model.wav2vec2 import Wav2Vec2Model

    model = Wav2Vec2Model(cfg)
    model.load_state_dict(state_dict)
    model.to(device).eval()
    source, mask, negs, _ = inputs
    losses = []
    for precision in ("fp32", "bf16"):
        with torch.no_grad(), _autocast(device, precision):
            out = model(source, temperature=2.0, time_mask=mask, negative_indices=negs)
            losses.append(float(pretraining_loss(out, cfg.loss).total))
    return losses[0], losses[1]


def train_targets(med: dict[str, dict[str, float]], mfu: dict[str, float], *, long_crop: bool) -> list[str]:
    """Issue #11's targets for one batch, from the median seconds per update `med[precision][impl]`
    and our MFU per precision: each line says met, or by how much it is missed."""
    lines = []

    def check(what: str, value: float, goal: float, unit: str = "x") -> None:
        verdict = "met" if value >= goal else f"MISSED by {goal - value:.2f}{unit}"
        lines.append(f"  target {what} >= {goal:g}{unit}: {value:.2f}{unit}, {verdict}")

    def best(times: dict[str, float], prefix: str) -> float | None:
        peers = [t for n, t in times.items() if n.startswith(prefix)]
        return min(peers) if peers else None

    fp32, bf16 = med.get("fp32"), med.get("bf16")
    if fp32:
        hf, fs = best(fp32, "transformers"), best(fp32, "fairseq")
        if hf:
            check("fp32 vs transformers", hf / fp32["ours"], 1.5)
        if fs:
            check("fp32 vs fairseq", fs / fp32["ours"], 1.25)
        if long_crop:
            check("fp32 MFU", 100 * mfu["fp32"], 60, unit="%")
    if bf16:
        hf, fs = best(bf16, "transformers"), best(bf16, "fairseq")
        if fp32 and best(fp32, "transformers"):
            check("bf16 vs transformers fp32", best(fp32, "transformers") / bf16["ours"], 3.0)
        if hf:
            check("bf16 vs transformers bf16", hf / bf16["ours"], 1.5)
        if fs:
            check("bf16 vs fairseq bf16 (ahead)", fs / bf16["ours"], 1.0)
    return lines


def _batches(args) -> list[tuple[int, float]]:
    return [(2, 4.0), (4, 15.6)] if args.full else [(2, 4.0)]


def bench_train(args: argparse.Namespace) -> None:
    """One BASE update, ours vs transformers (eager, SDPA) vs fairseq, fp32 and bf16 autocast."""
    import torch

    from wav2vec2.model.wav2vec2 import Wav2Vec2Model

    device = _setup(args)
    _print_env(args, "train: one BASE update (forward, backward, Adam step, zero_grad)")
    args.fairseq_py, fs_note = _fairseq_python(args)
    print(fs_note)
    peaks = _peaks(args, device)
    cfg = bench_config()
    torch.manual_seed(0)
    state_dict = Wav2Vec2Model(cfg).state_dict()
    print(f"median of {args.rounds} rounds x {args.reps} timed updates after 1 warm-up; LayerDrop 0; "
          "ratio = ours / peer (> 1: ours faster)")
    hdr = f"{'batch':>10} {'prec':5} {'impl':20} {'s/update':>9} {'audio-s/s':>9} {'TFLOP/upd':>9} {'MFU':>6} {'ours/this':>9}"
    for batch, seconds in _batches(args):
        samples = int(round(seconds * SAMPLE_RATE))
        inputs = _inputs(cfg, batch, samples, device)
        flops = train_flops(cfg, batch, samples, inputs[3])
        audio = batch * samples / SAMPLE_RATE
        if "bf16" in args.precision:
            fp32_loss, bf16_loss = bf16_loss_gap(cfg, state_dict, inputs, device)
            gap = abs(bf16_loss - fp32_loss) / abs(fp32_loss)
            print(f"{batch} x {seconds:g} s, ours, one batch in eval mode: loss fp32 {fp32_loss:.4f}, "
                  f"bf16 autocast {bf16_loss:.4f}, relative gap {gap:.2e} (target <= 1e-2)")
            _row("train", f"{batch}x{seconds:g}s", "ours", "bf16", loss_fp32=fp32_loss, loss_bf16=bf16_loss,
                 loss_relative_gap=gap)
            release_memory()
        medians: dict[str, dict[str, float]] = {}
        our_mfu: dict[str, float] = {}
        for precision in args.precision:
            impls = _impls(args, cfg, state_dict, inputs, device, precision)
            times = _time_rounds(impls, device, rounds=args.rounds, reps=args.reps)
            notes = {n: f.note for n, f in impls.items() if isinstance(f, FairseqUpdate)}
            for f in impls.values():
                if isinstance(f, FairseqUpdate):
                    f.close()
            del impls
            med = {n: float(np.median(ts)) for n, ts in times.items()}
            medians[precision], our_mfu[precision] = med, flops / med["ours"] / peaks[precision]
            hf_best = min(("transformers-eager", "transformers-sdpa"), key=med.get)
            print(hdr)
            for name, t in med.items():
                mfu = flops / t / peaks[precision]
                ratio = med[name] / med["ours"]
                label = name + (" *" if name == hf_best else "")
                print(f"{f'{batch} x {seconds:g} s':>10} {precision:5} {label:20} {t:9.2f} {audio / t:9.2f} "
                      f"{flops / 1e12:9.3f} {mfu:6.1%} {ratio:9.2f}")
                _row("train", f"{batch}x{seconds:g}s", name, precision, audio_s_per_s=audio / t, mfu=mfu,
                     seconds_per_update=t, spread=[min(times[name]), max(times[name])],
                     ratio_ours_over_this=ratio, note=notes.get(name))
            for name, note in notes.items():
                print(f"  {name}: {note}")
            best_peer = min((n for n in med if n != "ours"), key=med.get)
            print(f"  * fastest transformers mode; best peer: {best_peer}, ours / best peer = "
                  f"{med[best_peer] / med['ours']:.2f}")
        targets = train_targets(medians, our_mfu, long_crop=seconds >= 15)
        print("\n".join(targets))
        _row("train", f"{batch}x{seconds:g}s", "ours", None, targets=[t.strip() for t in targets])


# ----------------------------------------------------------------------------- ctc
def ctc_bench_config():
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

    def __init__(self, impl: str, cfg, state_dict, source, targets, target_lengths, *, train: bool) -> None:
        import torch

        from wav2vec2.interop.hf import ctc_config_to_hf, ctc_state_dict_to_hf
        from wav2vec2.model.ctc import Wav2Vec2Ctc

        self.impl, self.cfg, self.train = impl, cfg, train
        self.source, self.targets, self.target_lengths = source, targets, target_lengths
        if impl == "ours":
            self.model = Wav2Vec2Ctc(cfg, vocab_size=CTC_VOCAB)
            self.model.load_state_dict(state_dict)
        else:
            from transformers import Wav2Vec2ForCTC

            hf_cfg = ctc_config_to_hf(cfg, vocab_size=CTC_VOCAB)
            hf_cfg._attn_implementation = impl.split("-")[1]
            self.model = Wav2Vec2ForCTC(hf_cfg)
            self.model.load_state_dict(ctc_state_dict_to_hf(state_dict, cfg))
            self.model.freeze_feature_encoder()
        self.model.to(source.device).train(train)
        self.opt = optimizer(p for p in self.model.parameters() if p.requires_grad) if train else None
        self.gen = torch.Generator(device=source.device).manual_seed(0)

    def __call__(self):
        import torch

        from wav2vec2.infer.decode import greedy_ctc
        from wav2vec2.model.ctc import ctc_loss_sum

        if not self.train:
            with torch.no_grad():
                if self.impl == "ours":
                    out = self.model(self.source)
                    return greedy_ctc(out.logits, out.lengths)
                return greedy_ctc(self.model(self.source).logits)
        if self.impl == "ours":
            out = self.model(self.source, generator=self.gen)
            loss = ctc_loss_sum(out.logits, out.lengths, self.targets, self.target_lengths)
        else:
            labels = self.targets.masked_fill(
                torch.arange(self.targets.shape[1], device=self.targets.device) >= self.target_lengths[:, None], -100)
            loss = self.model(self.source, labels=labels).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss


CTC_VOCAB = 32  # letters, apostrophe, word boundary and the 4 specials of dict.ltr.txt


def bench_ctc(args: argparse.Namespace) -> None:
    """One CTC fine-tuning update (frozen CNN, the recipes' masks) and batched greedy
    transcription of BASE: ours vs transformers' Wav2Vec2ForCTC with the same weights."""
    import torch

    from wav2vec2.model.ctc import Wav2Vec2Ctc

    device = _setup(args)
    _print_env(args, "ctc: a BASE CTC fine-tuning update and batched greedy transcription, fp32")
    cfg = ctc_bench_config()
    torch.manual_seed(0)
    state_dict = Wav2Vec2Ctc(cfg, vocab_size=CTC_VOCAB).state_dict()
    print(f"median of {args.rounds} rounds x {args.reps} after 1 warm-up; ratio = ours / peer (> 1: ours faster)")
    print(f"{'what':28} {'impl':20} {'s/batch':>8} {'audio-s/s':>9} {'RTF':>7} {'ours/this':>9}")
    for what, batch, seconds, train in (("update 4 x 15.6 s", 4, 15.6, True),
                                        ("transcribe 8 x 10 s", 8, 10.0, False)):
        gen = torch.Generator().manual_seed(1)
        samples = int(round(seconds * SAMPLE_RATE))
        source = torch.randn(batch, samples, generator=gen).to(device)
        target_lengths = torch.full((batch,), int(15 * seconds))  # ~15 letters per second
        targets = torch.randint(4, CTC_VOCAB, (batch, int(target_lengths.max())), generator=gen)
        impls = {name: CtcUpdate(name, cfg, state_dict, source, targets.to(device), target_lengths.to(device),
                                 train=train)
                 for name in ("ours", "transformers-eager", "transformers-sdpa")}
        times = _time_rounds(impls, device, rounds=args.rounds, reps=args.reps)
        del impls
        release_memory()
        med = {n: float(np.median(ts)) for n, ts in times.items()}
        audio = batch * seconds
        for name, t in med.items():
            ratio = t / med["ours"]
            print(f"{what:28} {name:20} {t:8.2f} {audio / t:9.2f} {t / audio:7.3f} {ratio:9.2f}")
            _row("ctc", what, name, "fp32", audio_s_per_s=audio / t, seconds_per_batch=t,
                 real_time_factor=t / audio, ratio_ours_over_this=ratio)


# ----------------------------------------------------------------------------- mask
def bench_mask(args: argparse.Namespace) -> None:
    """Span mask + negatives for B=8, T=781 (a 15.6 s crop): ours on the device vs transformers'
    NumPy functions on the host plus the copy of their result to the device."""
    import torch
    from transformers.models.wav2vec2 import modeling_wav2vec2 as hf_w2v

    from wav2vec2.model.masking import compute_span_mask
    from wav2vec2.model.wav2vec2 import sample_negatives

    device = _setup(args)
    _print_env(args, "mask: span mask + negatives, B=8 T=781 K=100")
    B, T, K = 8, 781, 100
    gen = torch.Generator(device=device).manual_seed(0)

    def ours():
        m = compute_span_mask((B, T), mask_prob=0.65, mask_len=10, min_masks=2, generator=gen, device=device)
        M = int(m[0].sum())  # the one host sync: M sets the negatives' shape
        return sample_negatives(B, M, K, generator=gen, device=device)

    def theirs():
        m = hf_w2v._compute_mask_indices((B, T), mask_prob=0.65, mask_length=10, min_masks=2)
        n = hf_w2v._sample_negative_indices((B, T), K, mask_time_indices=m)
        return torch.from_numpy(m).to(device), torch.from_numpy(n).to(device)

    def ours_mask():
        compute_span_mask((B, T), mask_prob=0.65, mask_len=10, min_masks=2, generator=gen, device=device)
        _sync(device)

    def theirs_mask():
        torch.from_numpy(hf_w2v._compute_mask_indices((B, T), mask_prob=0.65, mask_length=10,
                                                      min_masks=2)).to(device)

    m_np = hf_w2v._compute_mask_indices((B, T), mask_prob=0.65, mask_length=10, min_masks=2)
    M = int(m_np[0].sum())

    def ours_negs():
        sample_negatives(B, M, K, generator=gen, device=device)
        _sync(device)

    def theirs_negs():
        torch.from_numpy(hf_w2v._sample_negative_indices((B, T), K, mask_time_indices=m_np)).to(device)

    print(f"{'what':18} {'ours ms':>8} {'transformers ms':>15} {'ratio':>6}")
    for what, a, b in (("mask + negatives", ours, theirs), ("span mask", ours_mask, theirs_mask),
                       ("negatives", ours_negs, theirs_negs)):
        for fn in (a, b):
            fn()
        ta, tb = [], []
        for _ in range(args.mask_reps):
            for fn, ts in ((a, ta), (b, tb)):
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                ts.append(time.perf_counter() - t0)
        ma, mb = float(np.median(ta)), float(np.median(tb))
        print(f"{what:18} {ma * 1e3:8.2f} {mb * 1e3:15.2f} {mb / ma:6.2f}")
        _row("mask", what, "ours", None, ms=ma * 1e3, ratio_theirs_over_ours=mb / ma)
        _row("mask", what, "transformers-numpy", None, ms=mb * 1e3)


# ----------------------------------------------------------------------------- memory
def _memory_child(args: argparse.Namespace) -> None:
    """Fresh process: build one implementation, run two updates (Adam state exists after the
    first), print peak RSS (or peak CUDA memory) and the RSS after building."""
    import resource

    import torch

    from wav2vec2.model.wav2vec2 import Wav2Vec2Model

    device = _setup(args)
    cfg = bench_config()
    cfg.transformer.activation_checkpointing = args.impl == "ours+ckpt"
    cfg.feature_encoder.activation_checkpointing = args.impl == "ours+ckpt"
    torch.manual_seed(0)
    state_dict = Wav2Vec2Model(cfg).state_dict()
    samples = int(round(args.seconds * SAMPLE_RATE))
    inputs = _inputs(cfg, args.batch, samples, device)
    if args.impl.startswith("ours"):
        fn = OursUpdate(cfg, state_dict, inputs, device, args.precision)
    else:
        fn = HFUpdate(cfg, state_dict, inputs, device, args.precision, args.impl.split("-")[1])
    del state_dict
    built = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fn()
    fn()
    _sync(device)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("@@" + json.dumps({"peak_mb": peak, "built_mb": built}), flush=True)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_memory(args: argparse.Namespace) -> None:
    device = _setup(args)
    _print_env(args, f"memory: peak of one BASE update, {args.mem_batch} x {args.mem_seconds:g} s, "
                     "fresh process per row")
    args.fairseq_py, fs_note = _fairseq_python(args)
    kind = "peak CUDA memory allocated" if device.type == "cuda" else "peak RSS (getrusage maxrss)"
    print(f"{kind}; 'after build' = RSS with the model built, before the first update")
    impls = ["ours", "ours+ckpt", "transformers-eager", "transformers-sdpa"]
    results = {}
    for precision in args.precision:
        print(f"{'impl':20} {'prec':5} {'peak MB':>8} {'after build':>11} {'peak - build':>12}")
        for impl in impls:
            cmd = [sys.executable, os.path.abspath(__file__), "_memory_child", "--impl", impl,
                   "--batch", str(args.mem_batch), "--seconds", str(args.mem_seconds), "--precision", precision,
                   "--threads", str(args.threads), "--device", str(device)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in res.stdout.splitlines() if x.startswith("@@")]
            if not line:
                print(f"{impl:20} failed: {res.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(line[0][2:])
            results[(impl, precision)] = r["peak_mb"]
            print(f"{impl:20} {precision:5} {r['peak_mb']:8.0f} {r['built_mb']:11.0f} {r['peak_mb'] - r['built_mb']:12.0f}")
            _row("memory", f"{args.mem_batch}x{args.mem_seconds:g}s", impl, precision, peak_mem_mb=r["peak_mb"],
                 built_mb=r["built_mb"])
        if args.fairseq_py:
            inputs = _inputs(bench_config(), args.mem_batch, int(round(args.mem_seconds * SAMPLE_RATE)), device)
            f = FairseqUpdate(args.fairseq_py, bench_config(), None, inputs, device, precision, args.threads,
                              memory=True)
            f.close()
            peak = f.first["maxrss_mb"]
            print(f"{'fairseq':20} {precision:5} {peak:8.0f} {'':>11} {'':>12}  ({f.note})")
            _row("memory", f"{args.mem_batch}x{args.mem_seconds:g}s", "fairseq", precision, peak_mem_mb=peak,
                 note=f.note)
        ours, ck = results.get(("ours", precision)), results.get(("ours+ckpt", precision))
        if ours and ck:
            print(f"activation checkpointing: peak {ck:.0f} MB vs {ours:.0f} MB = {1 - ck / ours:.0%} less")
    if not args.fairseq_py:
        print(fs_note)


# ----------------------------------------------------------------------------- scaling
def bench_scaling(args: argparse.Namespace) -> None:
    """Audio-s/s against utterance length at a fixed batch: attention's T^2 term grows."""
    import torch

    from wav2vec2.model.wav2vec2 import Wav2Vec2Model

    device = _setup(args)
    lengths = [2.0, 4.0, 8.0, 15.6] + ([30.0] if args.full else [])
    _print_env(args, f"scaling: one BASE update, batch {args.scale_batch}, lengths {lengths} s")
    peaks = _peaks(args, device)
    cfg = bench_config()
    torch.manual_seed(0)
    state_dict = Wav2Vec2Model(cfg).state_dict()
    print(f"median of {args.scale_reps} timed updates after 1 warm-up, impls alternating")
    print(f"{'length':>7} {'prec':5} {'impl':20} {'audio-s/s':>9} {'GFLOP/audio-s':>13} {'attn share':>10} {'MFU':>6}")
    for precision in args.scale_precision:
        for seconds in lengths:
            samples = int(round(seconds * SAMPLE_RATE))
            inputs = _inputs(cfg, args.scale_batch, samples, device)
            parts = model_flops(cfg, args.scale_batch, samples, inputs[3])
            flops = 3 * sum(parts.values())
            audio = args.scale_batch * seconds
            impls = {"ours": OursUpdate(cfg, state_dict, inputs, device, precision)}
            for attn in args.scale_peers:
                impls[f"transformers-{attn}"] = HFUpdate(cfg, state_dict, inputs, device, precision, attn)
            times = _time_rounds(impls, device, rounds=args.scale_reps, reps=1)
            del impls
            for name, ts in times.items():
                t = float(np.median(ts))
                mfu = flops / t / peaks[precision]
                share = parts["attention_scores"] / sum(parts.values())
                print(f"{seconds:6.1f}s {precision:5} {name:20} {audio / t:9.2f} {flops / audio / 1e9:13.1f} "
                      f"{share:10.1%} {mfu:6.1%}")
                _row("scaling", f"{args.scale_batch}x{seconds:g}s", name, precision, audio_s_per_s=audio / t,
                     mfu=mfu, gflop_per_audio_s=flops / audio / 1e9, attention_scores_share=share)


# ----------------------------------------------------------------------------- profile
_SYNC_OPS = {"item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__", "nonzero"}


def host_syncs(fn) -> list[str]:
    """Calls inside wav2vec2/ that bring a tensor's value to the host while `fn` runs:
    .item(), .tolist(), .cpu(), float()/int()/bool() of a tensor, nonzero or indexing with a
    bool mask (a data-dependent shape). Returns "op at file:line [device]" strings; on a CPU tensor they cost no device
    sync, on CUDA each one waits for the queue."""
    import traceback

    import torch
    from torch.overrides import TorchFunctionMode

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
                for frame in reversed(traceback.extract_stack()[:-1]):
                    if f"{os.sep}wav2vec2{os.sep}" in frame.filename and "scripts" not in frame.filename:
                        dev = args[0].device if args and hasattr(args[0], "device") else "?"
                        where = os.path.relpath(frame.filename, REPO)
                        found.append(f"{name} at {where}:{frame.lineno} [{dev}]: {frame.line}")
                        break
            return func(*args, **(kwargs or {}))

    with Watch():
        fn()
    return found


def bench_profile(args: argparse.Namespace) -> None:
    """torch.profiler over one BASE update of ours (2 x 4 s by default): top ops by self
    time, time per phase, and the host syncs of a training forward."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from wav2vec2.model.losses import pretraining_loss
    from wav2vec2.model.wav2vec2 import Wav2Vec2Model

    device = _setup(args)
    B, seconds = args.profile_batch, args.profile_seconds
    _print_env(args, f"profile: one BASE update of ours, {B} x {seconds:g} s, {args.profile_precision}")
    cfg = bench_config()
    torch.manual_seed(0)
    model = Wav2Vec2Model(cfg).to(device).train()
    opt = optimizer(model.parameters())
    source = torch.randn(B, round(seconds * 16_000), device=device)
    gen = torch.Generator(device=device).manual_seed(0)

    def update():
        with record_function("## forward + loss"), _autocast(device, args.profile_precision):
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
        _sync(device)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"total self CPU time {total / 1e6:.2f} s")
    for e in events:
        if e.key.startswith("## "):
            print(f"  {e.key[3:]:30} {e.cpu_time_total / 1e6:6.2f} s")
            _row("profile", e.key[3:], "ours", args.profile_precision, seconds=e.cpu_time_total / 1e6)
    print(f"top {args.top} ops by self CPU time:")
    print(f"  {'op':42} {'self s':>7} {'share':>6} {'calls':>6}")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        share = e.self_cpu_time_total / total
        print(f"  {e.key[:42]:42} {e.self_cpu_time_total / 1e6:7.2f} {share:6.1%} {e.count:6d}")
        _row("profile", e.key, "ours", args.profile_precision, self_cpu_s=e.self_cpu_time_total / 1e6,
             share=share, calls=e.count)

    def forward():
        with _autocast(device, args.profile_precision):
            pretraining_loss(model(source, temperature=2.0, generator=gen), cfg.loss).total.backward()
        opt.zero_grad(set_to_none=True)

    syncs = host_syncs(forward)
    print(f"host reads of tensor values in wav2vec2/ during a training forward + backward: {len(syncs)}")
    for s in sorted(set(syncs)):
        print(f"  {syncs.count(s)} x {s}")
        _row("profile", "host sync", "ours", None, where=s, count=syncs.count(s))


# ----------------------------------------------------------------------------- main
def bench_all(args: argparse.Namespace) -> None:
    for fn in (bench_train, bench_mask, bench_memory, bench_scaling):
        fn(args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default="cpu", help="cpu or cuda")
        p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for every impl")
        p.add_argument("--json", default=None, help="also write the result rows to this file")

    def model_args(p: argparse.ArgumentParser) -> None:
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
        common(p)
        model_args(p)
        p.add_argument("--profile-precision", default="fp32", choices=["fp32", "bf16"])
        p.add_argument("--profile-batch", type=int, default=2)
        p.add_argument("--profile-seconds", type=float, default=4.0)
        p.add_argument("--top", type=int, default=20)
        p.set_defaults(func=fn)

    data = sub.add_parser("data", help="data loader throughput vs a plain soundfile loop")
    data.add_argument("--seconds", type=float, default=1800.0, help="audio per format to generate")
    data.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    data.add_argument("--max-tokens", type=int, default=1_400_000, help="BASE recipe budget")
    data.add_argument("--max-sample-size", type=int, default=250_000, help="BASE recipe crop")
    data.add_argument("--corpus-dir", default=None, help="keep the generated corpus here")
    data.add_argument("--json", default=None, help="also write results to this file")
    data.set_defaults(func=bench_data)

    # Internal: a fresh process for one memory row, and the fairseq worker.
    child = sub.add_parser("_memory_child")
    worker = sub.add_parser("_fairseq_worker")
    for p in (child, worker):
        p.add_argument("--device", default="cpu")
        p.add_argument("--threads", type=int, default=os.cpu_count())
        p.add_argument("--precision", default="fp32")
    child.add_argument("--impl", required=True)
    child.add_argument("--batch", type=int, default=2)
    child.add_argument("--seconds", type=float, default=4.0)
    child.set_defaults(func=_memory_child)
    worker.add_argument("--input", required=True)
    worker.add_argument("--memory", action="store_true")
    worker.set_defaults(func=_fairseq_worker)

    args = parser.parse_args(argv)
    ROWS.clear()
    args.func(args)
    if getattr(args, "json", None):
        env = getattr(args, "env_line", None)
        with open(args.json, "w") as f:
            json.dump([{**r, "env": env} for r in ROWS], f, indent=2)


if __name__ == "__main__":
    main()
