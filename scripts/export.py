#!/usr/bin/env python
"""Export a CTC model for devices: an ONNX graph + JSON sidecar, optionally an int8 copy
and an ExecuTorch program.

    python scripts/export.py runs/ft/checkpoint_best.pt --onnx out/asr.onnx
    python scripts/export.py runs/ft/checkpoint_best.pt --onnx out/asr.onnx --int8   # + out/asr.int8.onnx
    python scripts/export.py hf_ctc_dir --onnx asr.onnx
    python scripts/export.py fairseq_ctc.pt --dictionary dict.ltr.txt --onnx asr.onnx
    python scripts/export.py runs/ft/checkpoint_best.pt --pte out/asr.pte   # needs the executorch extra

MODEL is a CTC model the loader reads (this project's, fairseq's with --dictionary, a
transformers directory). The graph is checked against the PyTorch model on a few seconds of
synthetic audio (max |logit difference|; for --int8, how many frames' argmax agree with
fp32). Run it with `python scripts/onnx_transcribe.py out/asr.onnx a.wav` (numpy, soundfile
and onnxruntime only). The graph and the sidecar are described in
`wav2vec2/interop/onnx.py`, the .pte in `wav2vec2/interop/pte.py`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from wav2vec2.infer.recognizer import Recognizer
from wav2vec2.interop.load import load_model
from wav2vec2.interop.onnx import INSTALL_HINT, export_onnx, quantize_onnx, sidecar_path
from wav2vec2.interop.pte import export_pte


def _check_audio(rec) -> np.ndarray:
    """2.5 s of a tone in noise, normalised as the model wants. Shape: (L,) float32."""
    rng = np.random.default_rng(0)
    n = int(2.5 * rec.sample_rate)
    t = np.arange(n) / rec.sample_rate
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
    if rec.normalize:
        audio = ((audio - audio.mean()) / np.sqrt(audio.var() + 1e-5)).astype(np.float32)
    return audio


def _check(rec, onnx_path: Path, int8_path: Path | None) -> None:
    import onnxruntime as ort

    audio = _check_audio(rec)
    n = len(audio)
    feeds = {"waveform": audio[None, :], "lengths": np.array([n], dtype=np.int64)}
    expected = rec(torch.from_numpy(audio)[None]).logits[0].cpu().numpy()
    fp32 = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0][0]
    print(f"check: max |onnx - torch| logit difference {np.abs(fp32 - expected).max():.2e} "
          f"over {expected.shape[0]} frames")
    if int8_path is not None:
        int8 = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0][0]
        agree = (int8.argmax(-1) == fp32.argmax(-1)).mean()
        print(f"check: int8 argmax agrees with fp32 on {100 * agree:.1f}% of frames, "
              f"max |int8 - fp32| {np.abs(int8 - fp32).max():.2e}")


def _check_pte(rec, pte_path: Path) -> None:
    from executorch.runtime import Runtime

    audio = _check_audio(rec)
    expected = rec(torch.from_numpy(audio)[None]).logits[0].cpu().numpy()
    method = Runtime.get().load_program(str(pte_path)).load_method("forward")
    logits, _ = method.execute([torch.from_numpy(audio)[None], torch.tensor([len(audio)])])
    print(f"check: max |pte - torch| logit difference {np.abs(logits[0].numpy() - expected).max():.2e} "
          f"over {expected.shape[0]} frames")


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:.2f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a CTC checkpoint of this project, a transformers directory, "
                                      "or a fairseq checkpoint (with --dictionary)")
    parser.add_argument("--onnx", type=Path, default=None, help="where to write the graph (sidecar: NAME.onnx.json beside)")
    parser.add_argument("--int8", action="store_true", help="also write a dynamic-int8 copy, NAME.int8.onnx")
    parser.add_argument("--pte", type=Path, default=None,
                        help="also (or only) write an ExecuTorch/XNNPACK program here, batch 1 (needs executorch)")
    parser.add_argument("--pte-max-seconds", type=float, default=60.0, help="longest input the .pte takes")
    parser.add_argument("--dictionary", default=None, help="dict.ltr.txt of a fairseq checkpoint")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--no-check", action="store_true", help="skip comparing the exported logits with PyTorch's")
    args = parser.parse_args(argv)
    if args.onnx is None and args.pte is None:
        parser.error("say what to write: --onnx and/or --pte")
    if args.int8 and args.onnx is None:
        parser.error("--int8 quantises the ONNX graph: give --onnx")
    try:
        model = load_model(args.model, dictionary=args.dictionary)
        rec = Recognizer.from_loaded(model)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.onnx is not None:
        try:
            import onnx  # noqa: F401 - what the exporter, int8 and the check need, before any work
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as err:
            print(f"error: --onnx needs {err.name}: {INSTALL_HINT}", file=sys.stderr)
            return 1
        start = time.perf_counter()
        onnx_path = export_onnx(model, args.onnx, opset=args.opset)
        print(f"wrote {onnx_path} ({_size(onnx_path)}) and {sidecar_path(onnx_path)} "
              f"in {time.perf_counter() - start:.1f} s")
        int8_path = None
        if args.int8:
            int8_path = quantize_onnx(onnx_path, onnx_path.with_suffix(".int8.onnx"))
            print(f"wrote {int8_path} ({_size(int8_path)}) and {sidecar_path(int8_path)}")
        if not args.no_check:
            _check(rec, onnx_path, int8_path)
    if args.pte is not None:
        start = time.perf_counter()
        try:
            pte_path = export_pte(model, args.pte, max_seconds=args.pte_max_seconds)
        except ImportError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"wrote {pte_path} ({_size(pte_path)}) and {sidecar_path(pte_path)} "
              f"in {time.perf_counter() - start:.1f} s")
        if not args.no_check:
            _check_pte(rec, pte_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
