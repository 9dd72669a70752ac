"""What a downstream head reads of a pretrained encoder: SUPERB's frozen upstream and its
layer-weighted sum (Yang et al., Interspeech 2021; s3prl's `Featurizer`).

SUPERB judges a pretrained model by freezing it and training a light head on a learnable
softmax-weighted sum of its hidden states: the input of each Transformer layer plus the
output (13 for BASE, 25 for LARGE), the weights zero-initialised (a plain mean at first), no
extra normalisation. `DownstreamModel` is the base of every head of this project
(`Wav2Vec2Ctc`, `Wav2Vec2Classifier`): it owns the encoder under the name `wav2vec2` (the
prefix of its weights in checkpoints), and `model.upstream` (`UpstreamConfig`) says whether
the head reads the encoder's output or a weighted sum, and whether the encoder is frozen.

Frozen means: the encoder's parameters have `requires_grad=False` (out of the optimizer and
DDP), it runs under `no_grad`, and it stays in eval mode when the head trains, so dropout,
LayerDrop and masking are off inside it, as s3prl's wav2vec2 wrapper runs it.

`upstream.cache` (frozen only) keeps each utterance's states in memory after its first pass,
computed on the utterance alone, so a probe's later epochs skip the upstream.

Shapes: B batch, L samples, T frames, D model dim, K hidden states summed.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wav2vec2.config import ModelConfig
from wav2vec2.model.wav2vec2 import Wav2Vec2Model


def hidden_state_indices(cfg: ModelConfig) -> list[int]:
    """The hidden states `model.upstream.layers` selects (all num_layers + 1 when empty), or
    a ValueError naming the field."""
    num_states = cfg.transformer.num_layers + 1
    layers = list(cfg.upstream.layers) or list(range(num_states))
    bad = [i for i in layers if not 0 <= i < num_states]
    if bad or len(set(layers)) != len(layers):
        raise ValueError(f"model.upstream.layers={layers}: each must be a distinct hidden state in 0..{num_states - 1} "
                         f"(0 the input of the first of {cfg.transformer.num_layers} layers, i the output of layer i)")
    return layers


class WeightedLayerSum(nn.Module):
    """softmax(w) . hidden states, w zero-initialised (SUPERB's featurizer, without its
    optional LayerNorm, which SUPERB does not use)."""

    def __init__(self, num_states: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_states))

    def forward(self, states: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Shape: K tensors (B, T, D) -> (B, T, D), and the softmaxed weights (K,)."""
        if len(states) != self.weights.numel():
            raise ValueError(f"expected {self.weights.numel()} hidden states, got {len(states)}")
        weights = F.softmax(self.weights, dim=0)  # (K,)
        stacked = torch.stack(states, dim=0)  # K x (B, T, D) -> (K, B, T, D)
        return (weights.to(stacked.dtype).view(-1, 1, 1, 1) * stacked).sum(dim=0), weights

    def extra_repr(self) -> str:
        return f"num_states={self.weights.numel()}"


@dataclass
class UpstreamOutput:
    x: Tensor
    """(B, T, D) what the head reads: the encoder's output, or the weighted sum."""
    padding_mask: Tensor | None
    """(B, T) bool, True = pad (None without padding)."""
    layer_weights: Tensor | None
    """(K,) the softmaxed weights of the sum (None without `upstream.layer_sum`)."""


class DownstreamModel(nn.Module):
    """A head on the wav2vec 2.0 encoder (module docstring); subclasses add the head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wav2vec2 = Wav2Vec2Model(cfg)
        self.wav2vec2.remove_pretraining_modules()
        up = cfg.upstream
        self.layers = hidden_state_indices(cfg) if up.layer_sum else []
        self.layer_sum = WeightedLayerSum(len(self.layers)) if up.layer_sum else None
        if up.freeze:
            self.wav2vec2.requires_grad_(False)
            self.wav2vec2.eval()
        elif up.cache:
            raise ValueError("model.upstream.cache needs model.upstream.freeze: a trained upstream changes")
        self._cache: dict[bytes, Tensor] = {}
        """upstream.cache: waveform hash -> (K, T, D) states (K = 1: the output) of the utterance alone."""

    def train(self, mode: bool = True) -> DownstreamModel:
        super().train(mode)
        if self.cfg.upstream.freeze:
            self.wav2vec2.eval()  # no dropout, LayerDrop or masking inside a frozen upstream
        return self

    def upstream(self, source: Tensor, padding_mask: Tensor | None = None, *, freeze_encoder: bool = False,
                 generator: torch.Generator | None = None) -> UpstreamOutput:
        """The encoder's reading of `source` for the head. While training (and not frozen) the
        encoder applies the masks of `cfg.masking`, drawn from `generator`, as fairseq's
        fine-tuning does. `freeze_encoder` runs it under no_grad for this call (CTC's
        `freeze_finetune_updates`); `upstream.freeze` does always.

        Shape: source (B, L), padding_mask (B, L) bool True = pad -> x (B, T, D).
        """
        if self.cfg.upstream.cache:
            return self._cached(source, padding_mask)
        frozen = freeze_encoder or self.cfg.upstream.freeze
        with torch.no_grad() if frozen else contextlib.nullcontext():
            enc = self.wav2vec2.encode(source, padding_mask, mask=self.wav2vec2.training, generator=generator,
                                       return_hidden_states=self.layer_sum is not None)
        if self.layer_sum is None:
            return UpstreamOutput(enc.x, enc.padding_mask, None)
        x, weights = self.layer_sum([enc.hidden_states[i] for i in self.layers])
        return UpstreamOutput(x, enc.padding_mask, weights)

    def _cached(self, source: Tensor, padding_mask: Tensor | None) -> UpstreamOutput:
        """`upstream` of a frozen encoder through the cache: each utterance's states, alone,
        padded with zeros into the batch. Shape: source (B, L) -> x (B, T, D)."""
        lengths = [source.shape[1]] * source.shape[0] if padding_mask is None else (~padding_mask).sum(1).tolist()
        states = []
        for wav, n in zip(source, lengths):
            wav = wav[:n]
            key = hashlib.blake2b(wav.detach().cpu().numpy().tobytes(), digest_size=16).digest()
            if key not in self._cache:
                with torch.no_grad():
                    enc = self.wav2vec2.encode(wav[None], return_hidden_states=self.layer_sum is not None)
                chosen = [enc.hidden_states[i] for i in self.layers] if self.layer_sum is not None else [enc.x]
                self._cache[key] = torch.cat(chosen)  # K x (1, T, D) -> (K, T, D)
            states.append(self._cache[key])
        T = max(s.shape[1] for s in states)
        padded = source.new_zeros(len(states), states[0].shape[0], T, states[0].shape[2])  # (B, K, T, D)
        frame_padding = torch.ones(len(states), T, dtype=torch.bool, device=source.device)
        for b, s in enumerate(states):
            padded[b, :, : s.shape[1]] = s
            frame_padding[b, : s.shape[1]] = False
        mask = None if padding_mask is None else frame_padding
        if self.layer_sum is None:
            return UpstreamOutput(padded[:, 0], mask, None)
        x, weights = self.layer_sum(list(padded.unbind(dim=1)))
        return UpstreamOutput(x, mask, weights)
