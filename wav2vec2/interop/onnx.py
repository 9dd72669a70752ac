"""A recogniser for devices: a CTC model (any the loader reads) as an ONNX graph (waveform ->
CTC logits), an int8 copy of it, and a JSON sidecar that tells a torch-free runner
(`scripts/onnx_transcribe.py`) everything else: the vocabulary, the blank, the word
delimiter, the sample rate, whether to normalise, the frame hop.

    export_onnx(load_model("runs/ft/checkpoint_best.pt"), "asr.onnx")  # + asr.onnx.json
    quantize_onnx("asr.onnx", "asr.int8.onnx")                         # + asr.int8.onnx.json

The graph (opset 18, one file, weights inside):

    inputs   waveform (B, L) float32, already normalised if the sidecar says so
             lengths  (B,)   int64, unpadded samples of each row (L for a single utterance)
    outputs  logits        (B, T, V) float32; at padded frames the blank is certain
             frame_lengths (B,)      int64

B and L are dynamic (L >= the sidecar's `min_samples`, two frames). Padded batches give what
the PyTorch model gives with the same padding mask; note that the BASE feature encoder's
GroupNorm averages over time, padding included, so there a padded row is not the same as
that utterance alone (the runner decodes one file at a time).

What the export changes, on a copy (the model is untouched), and why:

- `transformer.required_seq_len_multiple` is set to 1. `ContextNetwork.forward` branches in
  Python on `pad = -T % multiple` (`if pad:`), a value of the symbolic frame count:
  torch.export turns it into a guard on T's parity. With an even-T example torch 2.13's
  export fails (it even crashes formatting the violation: "Cannot create Dim with
  inconsistent min=0, max=-oo"); with an odd T torch.onnx retries and traces the padding
  branch, which only works by luck. The padding only adds keys masked with finfo.min, whose
  softmax weight is exactly 0, so 1 computes the same logits (the tests compare against the
  unmodified model).
- The positional conv's weight norm (a `parametrizations.weight_norm`) is folded into a
  plain weight: it exports either way, but folded the graph does not recompute
  g * v / ||v|| on every call.
- eval mode, fp32, CPU, no gradients: dropout, LayerDrop (a host-side `float(torch.rand(()))`
  that no graph can hold, only drawn in training) and masking are off.

ExecuTorch (`.pte` for phones) is `executorch.py` beside this file, with the same module,
copy and sidecar.

Shapes: B batch, L samples, T frames, V vocabulary size.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from wav2vec2.data.labels import BLANK, EOS, PAD, WORD_BOUNDARY
from wav2vec2.files import atomic_output, atomic_write
from wav2vec2.interop.loaded import LoadedModel
from wav2vec2.model.ctc import Wav2Vec2Ctc

OPSET = 18
"""ONNX opset: 17 brought LayerNormalization; 18 is what onnxruntime builds of the last few
years (mobile included) all run."""
SIDECAR_FORMAT = "wav2vec2-ctc"
INSTALL_HINT = "pip install -e '.[export]' (the export extra: onnx, onnxscript, onnxruntime)"
NORMALIZE_EPS = 1e-5
"""The waveform is normalised as `F.layer_norm(x, x.shape)`: (x - mean) / sqrt(var + eps)."""


class ExportableCtc(nn.Module):
    """(waveform, lengths) -> (logits, frame_lengths) around a frozen copy of a CTC model.

    Shape: waveform (B, L) float32, lengths (B,) int64 -> logits (B, T, V), frame_lengths (B,).
    """

    def __init__(self, model: Wav2Vec2Ctc) -> None:
        super().__init__()
        self.model = export_copy(model)

    def forward(self, waveform: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        samples = torch.arange(waveform.shape[1], device=waveform.device)
        padding_mask = samples[None, :] >= lengths[:, None]  # (B, L), True = pad
        out = self.model(waveform, padding_mask)
        return out.logits, out.lengths


def export_copy(model: Wav2Vec2Ctc) -> Wav2Vec2Ctc:
    """A copy of `model` that torch.export traces for any length (module docstring)."""
    model = copy.deepcopy(model).float().cpu().eval().requires_grad_(False)
    model.wav2vec2.encoder.cfg.required_seq_len_multiple = 1  # a copied cfg: the original keeps 2
    pos_conv = model.wav2vec2.encoder.pos_conv
    if parametrize.is_parametrized(pos_conv.conv, "weight"):
        pos_conv.conv = _folded_conv(pos_conv.conv)
    return model


def _folded_conv(conv: nn.Conv1d) -> nn.Conv1d:
    """A plain Conv1d holding the weight a weight-norm parametrization computes. Not
    `remove_parametrizations` on the copy: a deepcopy shares the original's injected
    `ParametrizedConv1d` class, and removing the parametrization deletes the `weight`
    property from that class, breaking the original module too."""
    plain = nn.Conv1d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                      bias=conv.bias is not None, padding_mode=conv.padding_mode)
    with torch.no_grad():
        plain.weight.copy_(conv.weight)
        if conv.bias is not None:
            plain.bias.copy_(conv.bias)
    return plain.requires_grad_(False)


def min_samples(model: Wav2Vec2Ctc) -> int:
    """The shortest input the graph takes: two frames. torch.export cannot prove that the
    1-frame case follows the same code path (size-1 dims broadcast), so it is excluded."""
    encoder = model.wav2vec2.feature_encoder
    return encoder.receptive_field + encoder.cfg.hop


def export_onnx(model: LoadedModel, path: str | os.PathLike, *, opset: int = OPSET,
                dynamic: bool = True, example_samples: int | None = None) -> Path:
    """Write a CTC `model` as an ONNX graph to `path` and its sidecar to `<path>.json`.

    `dynamic=False` fixes the graph to one utterance of `example_samples` (default: one
    second), for runtimes that want static shapes. Returns `path`.
    """
    path = Path(path)
    model.require_dictionary()
    module = ExportableCtc(model.build()).eval()
    shortest = min_samples(module.model)
    if dynamic:
        num_samples = example_samples or 2 * model.sample_rate
        # A batch of 2 with one padded row: batch 1 would be specialised (0/1 specialisation),
        # and the padding mask is traced as tensor ops either way.
        waveform = torch.randn(2, num_samples)
        lengths = torch.tensor([num_samples, max(shortest, num_samples * 3 // 4)])
        batch = torch.export.Dim("batch", min=1)
        length = torch.export.Dim("length", min=shortest)
        dynamic_shapes: tuple | None = ({0: batch, 1: length}, {0: batch})
    else:
        num_samples = example_samples or model.sample_rate
        if num_samples < shortest:
            raise ValueError(f"example_samples must be at least {shortest} (two frames), got {num_samples}")
        waveform = torch.randn(1, num_samples)
        lengths = torch.tensor([num_samples])
        dynamic_shapes = None
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), _quiet_exporters(), atomic_output(path) as tmp:
        # torch.export first, on its own: torch.onnx.export would retry a failed capture with
        # other strategies and shapes refined from the error, which can quietly trace a graph
        # that holds for the example only.
        program = torch.export.export(module, (waveform, lengths), dynamic_shapes=dynamic_shapes)
        torch.onnx.export(
            program, (waveform, lengths), str(tmp), dynamo=True, opset_version=opset,
            input_names=["waveform", "lengths"], output_names=["logits", "frame_lengths"],
            external_data=False, verbose=False,
        )
    write_sidecar(path, sidecar(model, module.model, opset=opset, dynamic=dynamic,
                                fixed_samples=None if dynamic else num_samples))
    return path


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Silence what the exporters say on every call and nobody can act on: torch.onnx's
    "torchvision is not installed" per torchvision op, pytree's LeafSpec FutureWarning, and
    onnxruntime's advice (on the root logger) to pre-process before quantising, and
    torchao's GPU kernels that a CPU machine cannot load (imported by executorch). Errors pass."""
    names = ["", "torch.onnx._internal.exporter._registration", "torch.utils._pytree", "torchao",
             "torchao.kernel.intmm"]  # "" is the root logger; torchao's: executorch's import, no GPU kernels
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def sidecar(model: LoadedModel, built: Wav2Vec2Ctc, **extra) -> dict:
    """What a runner needs besides the graph (of `built`, the exported copy of `model`), as
    plain JSON values."""
    encoder = built.wav2vec2.feature_encoder
    return {
        "format": SIDECAR_FORMAT,
        "version": 1,
        "inputs": {"waveform": "(B, L) float32", "lengths": "(B,) int64 unpadded samples"},
        "outputs": {"logits": "(B, T, V) float32", "frame_lengths": "(B,) int64"},
        "symbols": list(model.require_dictionary().symbols),
        "blank": BLANK,
        "not_text": sorted({BLANK, PAD, EOS}),
        "word_delimiter": WORD_BOUNDARY,
        "sample_rate": model.sample_rate,
        "normalize": bool(model.normalize),
        "normalize_eps": NORMALIZE_EPS,
        "frame_hop": encoder.cfg.hop,
        "receptive_field": encoder.receptive_field,
        "min_samples": min_samples(built),
        "source": model.path,
        **extra,
    }


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """`asr.onnx` -> `asr.onnx.json`: the .onnx, .int8.onnx and .pte of one model each keep their own."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".json")


def write_sidecar(model_path: str | os.PathLike, meta: dict) -> Path:
    out = sidecar_path(model_path)
    atomic_write(out, json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    return out


def quantize_onnx(in_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Dynamic int8 quantisation (onnxruntime): MatMul/Gemm weights stored as int8 with one
    scale per tensor, activations quantised on the fly per call. Writes `out_path` and its
    sidecar (the input's, with `"quantization"` added). Returns `out_path`.

    Only the MatMuls are quantised (the Transformer's Linears and the CTC head: nearly all the
    weights). The convolutions stay fp32: onnxruntime's ConvInteger (what a dynamic Conv
    becomes) runs far slower on CPU than the fp32 Conv it replaces, and the feature encoder
    is the first thing every frame goes through.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    in_path, out_path = Path(in_path), Path(out_path)
    if in_path.resolve() == out_path.resolve():
        raise ValueError(f"quantize_onnx: the output would overwrite the input {in_path}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_exporters(), atomic_output(out_path) as tmp:
        quantize_dynamic(in_path, tmp, op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
    meta = json.loads(sidecar_path(in_path).read_text(encoding="utf-8"))
    meta["quantization"] = "onnxruntime dynamic int8 (MatMul/Gemm weights, per tensor)"
    write_sidecar(out_path, meta)
    return out_path
