"""s3prl's upstream protocol (SUPERB's runner) over any model the loader reads.

s3prl (`s3prl/upstream/*/expert.py`, `s3prl/nn/upstream.py`) asks an upstream for two
things: `forward(wavs)`, a list of 1-D 16 kHz waveforms of any lengths, returning
{"hidden_states": [(B, T, D), ...]}, and `get_downsample_rates(key)`, the samples per frame
(320 here). `S3prlUpstream` answers both for this project's checkpoints, fairseq's and
transformers' (`wav2vec2.interop.load.load_model`), the way s3prl runs wav2vec 2.0: the
hidden states are the input of each Transformer layer plus the output (13 for BASE), no
LayerDrop, no masking, the CNN without gradient (`feature_grad_mult` 0), and each waveform
normalised on its own when the model was pretrained on normalised audio. Dropout follows
the module's train/eval mode, as s3prl's runner sets it.

To use it from s3prl's runner, register the entry `wav2vec2_project` in s3prl's hub (a
`hubconf.py` of an `s3prl/upstream/<name>/` directory, as s3prl's `example` upstream does):

    from wav2vec2.infer.s3prl import wav2vec2_project   # then: run_downstream.py -u wav2vec2_project -k CKPT

Shapes: B batch, L samples, T frames, D model dim.
"""

from __future__ import annotations

import copy
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wav2vec2.interop.load import load_model
from wav2vec2.model.wav2vec2 import Wav2Vec2Model


class S3prlUpstream(nn.Module):
    """An s3prl upstream ("expert") for any wav2vec 2.0 model the loader reads."""

    def __init__(self, ckpt: str | os.PathLike, model_config: str | None = None, **kwargs) -> None:
        """`ckpt`: the model (s3prl's `-k`); `model_config` (s3prl's `-g`) is not needed, the
        checkpoint carries its config; s3prl's other keyword arguments (`refresh`) are ignored."""
        super().__init__()
        loaded = load_model(ckpt)
        if loaded.sample_rate != 16000:
            raise ValueError(f"{ckpt}: s3prl feeds 16 kHz audio, the model was trained at {loaded.sample_rate} Hz")
        cfg = copy.deepcopy(loaded.config)
        cfg.transformer.layerdrop = 0.0  # a fixed number of hidden states, as s3prl's wav2vec2 expert
        cfg.feature_encoder.grad_mult = 0.0  # the CNN never trains, as s3prl's `feature_grad_mult = 0`
        self.model = Wav2Vec2Model(cfg)
        self.model.remove_pretraining_modules()
        self.model.load_state_dict(loaded.encoder_weights(), strict=True)
        self.normalize = bool(loaded.normalize)
        """Normalise each waveform (zero mean, unit variance) as the model was pretrained."""

    def get_downsample_rates(self, key: str) -> int:
        """Samples per frame of every output (the conv stack's hop: 320, 20 ms at 16 kHz)."""
        return self.model.cfg.feature_encoder.hop

    def forward(self, wavs: list[Tensor]) -> dict[str, list[Tensor] | Tensor]:
        """Shape: B waveforms (L_b,) -> {"hidden_states": num_layers + 1 tensors (B, T, D),
        "last_hidden_state": (B, T, D)}, T the frames of the longest; frames past an
        utterance's own are padding."""
        if self.normalize:
            wavs = [F.layer_norm(w, w.shape) for w in wavs]
        lengths = [len(w) for w in wavs]
        source = wavs[0].new_zeros(len(wavs), max(lengths))  # (B, L)
        padding_mask = torch.ones(source.shape, dtype=torch.bool, device=source.device)
        for b, w in enumerate(wavs):
            source[b, : len(w)], padding_mask[b, : len(w)] = w, False
        enc = self.model.encode(source, padding_mask if min(lengths) < max(lengths) else None,
                                return_hidden_states=True)
        return {"hidden_states": enc.hidden_states, "last_hidden_state": enc.x}


def wav2vec2_project(ckpt: str | os.PathLike, *args, **kwargs) -> S3prlUpstream:
    """s3prl's hub entry (a `hubconf.py` function): the upstream of the model at `ckpt`."""
    return S3prlUpstream(ckpt, *args, **kwargs)
