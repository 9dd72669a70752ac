"""`align`: forced alignment of real speech with a CTC model: boundary errors, time and peak
memory, for recordings of `--minutes` each, against ctc-segmentation (PyPI) on the same
emissions, and torchaudio's `forced_align` when an interpreter that has it is given
(`--torchaudio-python`; torchaudio pins its own torch, so it lives in another environment).

How:
- Recordings: the prompts of `--prompts` manifests, trimmed to their speech, end to end with
  pauses of 0.5-2 s (`align_data.py`), one line of text per prompt; their true starts and ends
  are known.
- Emissions: computed once per recording by the windowed inference `scripts/align.py` uses
  (30 s windows, 5 s context) and timed: the "emissions" column. `--base-seconds` also times
  a BASE-sized model's emissions on that much audio (random weights: the time is the same).
- Each aligner then runs on the saved emissions in a fresh process (`_align_child`), which
  reports its seconds and its peak RSS above the RSS it had with the emissions loaded (the
  aligner's own memory): the kernel's peak is reset once everything is imported and loaded
  (/proc/self/clear_refs), so import-time peaks do not count. Ours is the exact search up to
  64 MiB of backpointers, lanes of a band above; ctc-segmentation is its `prepare_token_list`
  + `ctc_segmentation` + `determine_utterance_segments`, with our tokens.
- Boundary error: |aligned - true| start and end of every prompt, median and 95th percentile.
  ctc-segmentation cuts utterances in the pause between them by design (up to 0.5 s away
  from the speech).
- Imperfect text (the first recording): the text lacks every 5th prompt and has 3 lines the
  audio does not: the errors of the lines in both, and how many of the 3 are reported.
- torchaudio: its `forced_align` on the same emissions and targets (without wildcards, which
  it has no jumps for) against our exact search: frames on the same label, and both scores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from wav2vec2.bench.align_data import concatenate, load_prompts
from wav2vec2.bench.common import PACKAGE_DIR, ROOT, print_env, row, rss_mb, setup
from wav2vec2.config import base
from wav2vec2.data.labels import BLANK, Dictionary
from wav2vec2.infer.align import AlignOptions, align_logits, emissions_of
from wav2vec2.infer.align_text import prepare_text
from wav2vec2.infer.audio import AudioFile
from wav2vec2.infer.recognizer import Recognizer, load_recognizer
from wav2vec2.infer.transcribe import frame_logits
from wav2vec2.infer.viterbi import backtrack, best_ends, ctc_graph, viterbi_forward
from wav2vec2.model.ctc import Wav2Vec2Ctc

IMPLS = ("ours", "ctc-segmentation")
TORCHAUDIO_WORKER = os.path.join(PACKAGE_DIR, "bench", "torchaudio_worker.py")


def bench_align(args: argparse.Namespace) -> None:
    """Boundary errors, time and memory of forced alignment, ours against the peers."""
    setup(args)
    print_env(args, f"align: {', '.join(f'{m:g} min' for m in args.minutes)} of prompts with known pauses, "
                    f"model {args.model}")
    rec = load_recognizer(args.model, dictionary=args.dictionary)
    frame = rec.model.cfg.feature_encoder.hop / rec.sample_rate
    prompts = load_prompts(args.prompts, rec.sample_rate)
    print(f"{len(prompts)} prompts ({sum(len(p.speech) for p in prompts) / rec.sample_rate / 60:.1f} min of speech)")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="wav2vec2-bench-align-"))
    work.mkdir(parents=True, exist_ok=True)
    rec.dictionary.save(work / "dict.ltr.txt")
    print(f"{'audio':>7} {'impl':17} {'align s':>8} {'RTF':>8} {'vs emis':>8} {'peak MB':>8} "
          f"{'start err med/p95 ms':>21} {'end err med/p95 ms':>19} {'found':>6}")
    for minutes in args.minutes:
        name = f"{minutes:g}min"
        recording = concatenate(prompts, minutes * 60, rec.sample_rate, seed=args.seed)
        duration = len(recording.wav) / rec.sample_rate
        sf.write(work / f"{name}.wav", recording.wav, rec.sample_rate, subtype="FLOAT")
        (work / f"{name}.txt").write_text("".join(line + "\n" for line in recording.lines), encoding="utf-8")
        t0 = time.perf_counter()
        with AudioFile(work / f"{name}.wav", sample_rate=rec.sample_rate, normalize=rec.normalize) as audio:
            logits = frame_logits(rec, audio)  # (T, V)
        emission_seconds = time.perf_counter() - t0
        np.save(work / f"{name}.logits.npy", logits.numpy())
        print(f"{minutes:6g}m {'emissions':17} {emission_seconds:8.2f} {emission_seconds / duration:8.4f} "
              f"{'':>8} {'':>8}   ({len(logits)} frames, {len(recording.lines)} lines)")
        row("align", name, "emissions", "fp32", audio_s_per_s=duration / emission_seconds, seconds=emission_seconds,
            real_time_factor=emission_seconds / duration)
        for impl in IMPLS:
            result = _child(impl, work, name, frame, args)
            if result is None:
                continue
            errors = _boundary_errors(result["spans"], recording.truth)
            share = result["seconds"] / emission_seconds
            own = result["peak_mb"] - result["loaded_mb"]
            print(f"{minutes:6g}m {impl:17} {result['seconds']:8.2f} {result['seconds'] / duration:8.4f} "
                  f"{share:8.1%} {own:8.0f} {errors['start_median'] * 1e3:10.0f} / {errors['start_p95'] * 1e3:<8.0f}"
                  f"{errors['end_median'] * 1e3:8.0f} / {errors['end_p95'] * 1e3:<8.0f}"
                  f"{errors['found']:4d}/{len(recording.truth)}")
            row("align", name, impl, "fp32", peak_mem_mb=result["peak_mb"], aligner_mem_mb=own,
                seconds=result["seconds"], real_time_factor=result["seconds"] / duration,
                share_of_emissions=share, **errors)
        if minutes == args.minutes[0]:
            _imperfect(args, work, name, frame, prompts, recording, duration)
        if args.torchaudio_python and minutes <= args.torchaudio_max_minutes:
            _compare_torchaudio(args, work, name, logits, recording.lines, rec.dictionary, duration)
    if args.base_seconds:
        _time_base_emissions(args, work, rec.sample_rate)


def _imperfect(args: argparse.Namespace, work: Path, name: str, frame: float, prompts, recording,
               duration: float) -> None:
    """The same recording with a text that lacks every 5th prompt (untranscribed speech) and
    has 3 lines that are not in the audio: the errors of the lines in both, and how many of
    the 3 are reported missing (not found, or flagged by their score)."""
    said = set(recording.lines)
    extra = [p.text for p in prompts if p.text not in said][:3]
    keep = [k for k in range(len(recording.lines)) if k % 5 != 4]
    lines: list[str] = []
    for n, k in enumerate(keep):
        lines.append(recording.lines[k])
        if n in (2, 6, 10) and extra:
            lines.append(extra.pop())
    (work / f"{name}.imperfect.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    truth = iter(recording.truth[k] for k in keep)
    kept = set(recording.lines[k] for k in keep)
    for impl in IMPLS:
        result = _child(impl, work, name, frame, args, text=f"{name}.imperfect.txt")
        if result is None:
            continue
        spans = [(s, next(truth) if line in kept else None) for line, s in zip(lines, result["spans"])]
        truth = iter(recording.truth[k] for k in keep)
        errors = _boundary_errors([s for s, t in spans if t], [t for s, t in spans if t])
        missing = [s for s, t in spans if t is None]
        caught = sum(s[0] is None or s[2] < AlignOptions.min_score for s in missing)
        print(f"{'':7} {impl + ' (imperfect)':17} {result['seconds']:8.2f} {'':>8} {'':>8} {'':>8} "
              f"{errors['start_median'] * 1e3:10.0f} / {errors['start_p95'] * 1e3:<8.0f}"
              f"{errors['end_median'] * 1e3:8.0f} / {errors['end_p95'] * 1e3:<8.0f}"
              f"{errors['found']:4d}/{len(keep)}  lines not in the audio reported: {caught}/{len(missing)}")
        row("align", f"{name} imperfect", impl, "fp32", seconds=result["seconds"], extra_lines=len(missing),
            extra_lines_reported=caught, untranscribed_prompts=len(recording.lines) - len(keep), **errors)


def _boundary_errors(spans: list, truth: list[tuple[float, float]]) -> dict:
    found = [(s, t) for s, t in zip(spans, truth) if s[0] is not None]
    start = np.abs([s[0] - t[0] for s, t in found])
    end = np.abs([s[1] - t[1] for s, t in found])
    return dict(start_median=float(np.median(start)), start_p95=float(np.percentile(start, 95)),
                end_median=float(np.median(end)), end_p95=float(np.percentile(end, 95)),
                start_bias=float(np.mean([s[0] - t[0] for s, t in found])),
                end_bias=float(np.mean([s[1] - t[1] for s, t in found])), found=len(found))


def _child(impl: str, work: Path, name: str, frame: float, args: argparse.Namespace, *,
           text: str | None = None) -> dict | None:
    """One aligner on the saved emissions, in a fresh interpreter (`-m` from ROOT: this package)."""
    cmd = [sys.executable, "-m", "wav2vec2.bench", "_align_child", "--impl", impl, "--work-dir", str(work),
           "--name", name, "--text", text or f"{name}.txt", "--frame", str(frame), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("@@")]
    if not lines:
        print(f"{'':7} {impl:17} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        return None
    return json.loads(lines[0][2:])


def child_main(argv: list[str]) -> None:
    """`_align_child --impl IMPL --work-dir DIR --name NAME --frame SECONDS`: align DIR/NAME's
    emissions and lines, print "@@" + {"seconds", "peak_mb", "loaded_mb", "spans"}."""
    parser = argparse.ArgumentParser(prog="bench.py _align_child", description="one aligner run (internal)")
    parser.add_argument("--impl", required=True, choices=IMPLS)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--name", required=True, help="the emissions: DIR/NAME.logits.npy")
    parser.add_argument("--text", help="the lines, in DIR (default NAME.txt)")
    parser.add_argument("--frame", type=float, default=0.02)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    logits = torch.from_numpy(np.load(work / f"{args.name}.logits.npy"))  # (T, V)
    lines = (work / (args.text or f"{args.name}.txt")).read_text(encoding="utf-8").splitlines()
    dictionary = Dictionary.load(work / "dict.ltr.txt")
    if args.impl == "ctc-segmentation":
        import ctc_segmentation  # noqa: F401 - imported before the peak is reset, as torch is
    loaded = rss_mb()
    reset_peak_rss()
    t0 = time.perf_counter()
    if args.impl == "ours":
        text = prepare_text(lines, dictionary, unknown="skip")
        alignment = align_logits(logits, text, frame_seconds=args.frame, options=AlignOptions(unknown="skip"))
        spans = [(x.start, x.end, x.score) for x in alignment.lines]
    else:
        spans = _ctc_segmentation(logits, lines, dictionary, args.frame)
    seconds = time.perf_counter() - t0
    print("@@" + json.dumps({"seconds": seconds, "peak_mb": peak_rss_since_reset(), "loaded_mb": loaded,
                             "spans": spans}), flush=True)


def reset_peak_rss() -> None:
    """Make the kernel's peak RSS (VmHWM) the current RSS, so the peak that follows is the
    aligner's, not the imports' (Linux >= 4.0: /proc/self/clear_refs "5")."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_since_reset() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM"))


def _ctc_segmentation(logits: torch.Tensor, lines: list[str], dictionary: Dictionary, frame: float) -> list:
    """ctc-segmentation's utterance spans of `lines`, with this project's tokens (no wildcard)."""
    from ctc_segmentation import (CtcSegmentationParameters, ctc_segmentation, determine_utterance_segments,
                                  prepare_token_list)

    config = CtcSegmentationParameters(char_list=dictionary.symbols, blank=BLANK, index_duration=frame)
    text = prepare_text(lines, dictionary, unknown="skip", wildcard=False)
    tokens = [np.array([text.tokens[k] for w in text.words if w.line == i for k in w.tokens], dtype=np.int64)
              for i in range(len(text.lines))]
    ground_truth, begins = prepare_token_list(config, tokens)
    lpz = logits.float().log_softmax(dim=-1).numpy()
    timings, char_probs, _ = ctc_segmentation(config, lpz, ground_truth)
    segments = determine_utterance_segments(config, begins, char_probs, timings, text.lines)
    return [(float(a), float(b), float(np.exp(score))) for a, b, score in segments]


def _compare_torchaudio(args: argparse.Namespace, work: Path, name: str, logits: torch.Tensor, lines: list[str],
                        dictionary: Dictionary, duration: float) -> None:
    """torchaudio's forced_align and our exact search on the same targets: agreement, time, memory."""
    text = prepare_text(lines, dictionary, unknown="skip", wildcard=False)
    targets = np.array(text.tokens, dtype=np.int64)
    np.save(work / f"{name}.targets.npy", targets)
    cmd = [args.torchaudio_python, TORCHAUDIO_WORKER, "--logits", str(work / f"{name}.logits.npy"),
           "--targets", str(work / f"{name}.targets.npy"), "--out", str(work / f"{name}.torchaudio.npy"),
           "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = [x for x in proc.stdout.splitlines() if x.startswith("@@")]
    if not found:
        print(f"{'':7} {'torchaudio':17} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        return
    result = json.loads(found[0][2:])
    theirs = np.load(work / f"{name}.torchaudio.npy")  # (T,) label per frame
    emissions = emissions_of(logits, 0.0)[None]  # (1, T, C)
    graph = ctc_graph([text.tokens], blank=BLANK, pad_column=logits.shape[1] + 1)
    lengths = torch.tensor([len(logits)])
    t0 = time.perf_counter()
    forward = viterbi_forward(emissions, lengths, graph)
    ends, score = best_ends(forward.alpha, forward.lo, graph)
    path = backtrack(forward, graph, lengths, ends)[0]
    ours_seconds = time.perf_counter() - t0
    labels = graph.labels[0][torch.from_numpy(path)].numpy()  # (T,) label per frame
    same = float((labels == theirs).mean())
    their_score = float(emissions[0].gather(1, torch.from_numpy(theirs)[:, None]).sum())
    print(f"{'':7} {'torchaudio':17} {result['seconds']:8.2f} {result['seconds'] / duration:8.4f} {'':>8} "
          f"{result['peak_mb'] - result['loaded_mb']:8.0f}   same label on {same:.2%} of frames; path score "
          f"theirs {their_score:.3f}, ours {float(score[0]):.3f} (exact search {ours_seconds:.2f} s)")
    row("align", name, "torchaudio", "fp32", peak_mem_mb=result["peak_mb"],
        aligner_mem_mb=result["peak_mb"] - result["loaded_mb"], seconds=result["seconds"],
        real_time_factor=result["seconds"] / duration, frames_same_label=same, score_theirs=their_score,
        score_ours=float(score[0]), ours_exact_seconds=ours_seconds, torchaudio_version=result.get("version"))


def _time_base_emissions(args: argparse.Namespace, work: Path, sample_rate: int) -> None:
    """Emissions of a BASE-sized CTC model (random weights) on the first `--base-seconds`."""
    torch.manual_seed(0)
    model = Wav2Vec2Ctc(base(), vocab_size=32).eval()
    rec = Recognizer(model, Dictionary.from_symbols([chr(ord("A") + i) for i in range(28)]), normalize=False,
                     sample_rate=sample_rate, source="BASE, random weights")
    wav, _ = sf.read(work / f"{args.minutes[0]:g}min.wav", dtype="float32")
    head = wav[:int(args.base_seconds * sample_rate)]
    sf.write(work / "base.wav", head, sample_rate, subtype="FLOAT")
    audio_seconds = len(head) / sample_rate
    with AudioFile(work / "base.wav", sample_rate=sample_rate) as audio:
        t0 = time.perf_counter()
        frame_logits(rec, audio)
        seconds = time.perf_counter() - t0
    rtf = seconds / audio_seconds
    print(f"BASE-sized model (95M parameters): emissions of {audio_seconds:.0f} s in {seconds:.1f} s "
          f"(RTF {rtf:.3f}; {rtf * 60:.0f} min an hour at that rate)")
    row("align", f"{audio_seconds:g}s", "emissions-base", "fp32", seconds=seconds, real_time_factor=rtf)
