"""A recogniser for phones: a CTC model (any the loader reads) as an ExecuTorch program
(`.pte`: torch.export -> to_edge -> XNNPACK partitioner), with the ONNX export's module,
copy and sidecar (`onnx.py`).

It needs the `executorch` extra (executorch 1.5.1 installs beside torch 2.13.0+cpu without
replacing it; it brings coremltools, pandas and scikit-learn along, so it is not a core
dependency) and imports it lazily. The dev extra includes it, so CI runs the .pte against
eager PyTorch.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from wav2vec2.files import atomic_write
from wav2vec2.interop.loaded import LoadedModel
from wav2vec2.interop.onnx import ExportableCtc, _quiet_exporters, min_samples, sidecar, write_sidecar

INSTALL_HINT = "pip install -e '.[executorch]' (the executorch extra)"


def export_pte(model: LoadedModel, path: str | os.PathLike, *, max_seconds: float = 60.0) -> Path:
    """ExecuTorch program for one utterance, delegated to XNNPACK: torch.export ->
    `to_edge_transform_and_lower(XnnpackPartitioner)` -> `.pte`, plus the same sidecar.

    Same inputs and outputs as the ONNX graph, but batch 1 (XNNPACK's reshape takes a single
    dynamic dimension) and L dynamic up to `max_seconds` (ExecuTorch plans memory for the
    largest shape). Needs the `executorch` package (module docstring).
    """
    try:
        with _quiet_exporters():
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
    except ImportError as err:
        raise ImportError(f"--pte needs ExecuTorch: {INSTALL_HINT} ({err})") from None

    path = Path(path)
    model.require_dictionary()
    module = ExportableCtc(model.build()).eval()
    shortest = min_samples(module.model)
    longest = int(max_seconds * model.sample_rate)
    num_samples = 2 * model.sample_rate
    waveform, lengths = torch.randn(1, num_samples), torch.tensor([num_samples])
    length = torch.export.Dim("length", min=shortest, max=longest)
    with torch.no_grad(), _quiet_exporters():
        # With batch 1, viewing (1, T, D) as (T, D) in every Linear makes torch.export guard
        # on `1 % T != 0`, true for T >= 2 but beyond its solver: a constraint violation.
        # Size-oblivious reasoning (what torch.onnx.export itself runs under) assumes sizes
        # >= 2 and adds no guard; `min_samples` already keeps T >= 2.
        with torch.fx.experimental._config.patch(backed_size_oblivious=True):
            program = torch.export.export(module, (waveform, lengths), dynamic_shapes=({1: length}, None))
    with _quiet_exporters():
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, bytes(lowered.buffer))
    write_sidecar(path, sidecar(model, module.model, runtime="executorch", max_samples=longest))
    return path

