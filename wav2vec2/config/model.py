"""Configuration dataclasses for the wav2vec 2.0 model.

Defaults are the BASE recipe of the paper as fairseq ships it
(`examples/wav2vec/config/pretraining/wav2vec2_base_librispeech.yaml`): where the
recipe overrides a fairseq dataclass default, the recipe value is the default here and the
field says so. `large()` and `tiny()` derive the other presets.

This module imports nothing from the package, so every component and every test can build
its own sub-config directly.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

_ARCHITECTURE = {"architecture": True}


def arch(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field that defines the architecture: the parameters' shapes or what they
    compute. Weights only load into a model whose architecture fields all match; every
    other field (dropouts, masking, loss weights, schedules) may change between runs."""
    return field(default=default, default_factory=default_factory, metadata=_ARCHITECTURE)


@dataclass
class FeatureEncoderConfig:
    """The convolutional feature encoder (paper §2, fairseq `ConvFeatureExtractionModel`)."""

    conv_dims: list[int] = arch(default_factory=lambda: [512] * 7)
    """Output channels of each conv block."""
    conv_kernels: list[int] = arch(default_factory=lambda: [10, 3, 3, 3, 3, 2, 2])
    """Kernel width (samples for block 0, frames after) of each conv block."""
    conv_strides: list[int] = arch(default_factory=lambda: [5, 2, 2, 2, 2, 2, 2])
    """Stride of each conv block. The product (320) is the frame hop: 20 ms at 16 kHz."""
    mode: str = arch("default")
    """"default": GroupNorm(C, C) after the first conv only (BASE, use with unnormalised
    audio); "layer_norm": LayerNorm over channels after every conv (LARGE, use with
    normalised audio), as fairseq #4687 advises."""
    conv_bias: bool = arch(False)
    """Give the convolutions a bias. False for BASE, True for LARGE."""
    dropout: float = 0.0
    """Dropout after each convolution (fairseq's `dropout` in the extractor is 0)."""
    grad_mult: float = 0.1
    """Multiplies the encoder's gradient on the way back (`feature_grad_mult`): 0.1 in BASE,
    1.0 (the fairseq default) in LARGE. 0 runs the encoder without autograd (frozen)."""
    activation_checkpointing: bool = False
    """Keep only each conv block's input and recompute the block in the backward pass
    (`torch.utils.checkpoint`, non-reentrant): at 15.6 s crops the encoder's 512-channel
    activations are the largest left once the Transformer layers are checkpointed. Same math;
    costs about one more encoder forward (docs/performance.md)."""

    # The frame arithmetic of the conv stack, in one place: the model, CTC's length checks,
    # windowed inference, export and the benchmark all count frames with these.
    @property
    def hop(self) -> int:
        """Samples between consecutive frames: the product of the strides (320, 20 ms at 16 kHz)."""
        return math.prod(self.conv_strides)

    @property
    def receptive_field(self) -> int:
        """Samples one frame sees (400 for the paper's encoder, 25 ms)."""
        field_, hop = 1, 1
        for k, s in zip(self.conv_kernels, self.conv_strides):
            field_ += (k - 1) * hop
            hop *= s
        return field_

    def output_lengths(self, lengths: Any) -> Any:
        """Frames made of `lengths` samples: L <- floor((L - k) / s) + 1 per conv block.

        Works on Python ints, NumPy arrays and integer tensors of any shape. Lengths shorter
        than the receptive field give 0 or negative values; `num_frames` clamps them."""
        for k, s in zip(self.conv_kernels, self.conv_strides):
            lengths = (lengths - k) // s + 1
        return lengths

    def num_frames(self, num_samples: int) -> int:
        """Frames made of `num_samples` samples, 0 for audio shorter than one receptive field.
        Equal to floor((L - receptive_field) / hop) + 1 for L >= receptive_field."""
        return max(0, int(self.output_lengths(int(num_samples))))


@dataclass
class MaskingConfig:
    """Span masking of the latent frames (paper §3.1, fairseq `compute_mask_indices`).

    fairseq's `mask_prob` is not the masked fraction: about `mask_prob * T / mask_len` span
    starts are drawn, so with overlaps p=0.65, M=10 masks ~49% of the frames. The paper
    writes the same thing as p=0.065 per frame start.
    """

    mask_prob: float = 0.65
    """Expected number of spans is `mask_prob * T / mask_len` (plus one uniform draw)."""
    mask_len: int = 10
    """Frames per span (M in the paper)."""
    selection: str = "static"
    """Span length distribution: "static" (M), "uniform" [other, 2M], "normal"
    round(N(M, other)) >= 1, "poisson" round(Poisson(M))."""
    other: float = 0.0
    """Second parameter of `selection` (fairseq `mask_other`)."""
    min_masks: int = 2
    """Minimum number of spans per utterance. Hard-coded to 2 in fairseq's model."""
    no_overlap: bool = False
    """Place spans without overlap, at least `min_space` frames apart."""
    min_space: int = 1
    """Gap kept between non-overlapping spans."""
    require_same_masks: bool = True
    """Equalise the masked count across the batch (needed to reshape targets to (B, M, C))."""
    mask_dropout: float = 0.0
    """Fraction of masked frames unmasked again at random, per utterance."""
    channel_prob: float = 0.0
    """Channel masking (off in pretraining): same semantics as `mask_prob` over channels."""
    channel_len: int = 10
    """Channels per channel-mask span."""
    channel_selection: str = "static"
    """Span length distribution for channel masking."""
    channel_other: float = 0.0
    """Second parameter of `channel_selection`."""
    channel_no_overlap: bool = False
    """Non-overlapping channel spans."""
    channel_min_space: int = 1
    """Gap kept between non-overlapping channel spans."""
    channel_before: bool = False
    """Apply the channel mask before the time mask (fairseq `mask_channel_before`)."""


@dataclass
class QuantizerConfig:
    """Gumbel-softmax product quantizer of the targets (paper §2, §3.2)."""

    num_codebooks: int = arch(2)
    """G, the number of codebooks (`latent_groups`)."""
    num_entries: int = arch(320)
    """V, entries per codebook (`latent_vars`)."""
    codebook_dim: int = arch(0)
    """Total dimension of a quantized vector (the G codewords concatenated; `latent_dim`).
    0 means `final_dim`."""
    max_temp: float = 2.0
    """Gumbel temperature at update 0."""
    min_temp: float = 0.5
    """Temperature floor: 0.5 in BASE, 0.1 in LARGE."""
    temp_decay: float = 0.999995
    """Per-update multiplicative decay: tau(u) = max(max_temp * decay**u, min_temp)."""
    depth: int = arch(1)
    """Layers of the logits projection (1 = a single Linear)."""
    hidden_factor: int = arch(3)
    """Width multiplier of the hidden layers when depth > 1 (`quantizer_factor`)."""


@dataclass
class TransformerConfig:
    """The context network (paper §2, fairseq `TransformerEncoder`)."""

    num_layers: int = arch(12)
    """Transformer layers (BASE 12, LARGE 24)."""
    embed_dim: int = arch(768)
    """D, the model width (BASE 768, LARGE 1024)."""
    ffn_dim: int = arch(3072)
    """Inner width of each layer's feed-forward block (BASE 3072, LARGE 4096)."""
    num_heads: int = arch(12)
    """Attention heads (BASE 12, LARGE 16); embed_dim must divide by it."""
    layer_norm_first: bool = arch(False)
    """Pre-LN (LARGE) instead of post-LN (BASE) layers."""
    dropout: float = 0.1
    """Residual dropout, also applied to the input of the first layer."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities."""
    activation_dropout: float = 0.0
    """Dropout after the FFN's GELU."""
    layerdrop: float = 0.05
    """Probability of skipping each layer while training (fairseq default 0; BASE 0.05)."""
    conv_pos: int = arch(128)
    """Kernel width of the convolutional positional embedding."""
    conv_pos_groups: int = arch(16)
    """Groups of the positional convolution."""
    required_seq_len_multiple: int = 2
    """Pad T up to a multiple of this (padded keys are masked) for efficient kernels."""
    activation_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass instead of keeping them
    (`torch.utils.checkpoint`, non-reentrant): less memory for about one more forward of
    the layers. Same math: dropout's RNG state is replayed, LayerDrop is decided outside."""


@dataclass
class LossConfig:
    """Weights of the extra loss terms, each scaled by the number of masked frames."""

    diversity_weight: float = 0.1
    """alpha in the paper: weight of (GV - prob_perplexity) / GV."""
    feature_penalty_weight: float = 10.0
    """Weight of the L2 penalty on the feature encoder output (BASE 10, LARGE 0)."""


@dataclass
class UpstreamConfig:
    """How a downstream head (CTC, classification) reads the encoder: SUPERB's protocol
    (Yang et al. 2021, s3prl's `Featurizer`) when `layer_sum` and `freeze` are on.

    Not architecture: a downstream run keeps its own values whatever model `task.init` is."""

    layer_sum: bool = False
    """Feed the head a learnable softmax-weighted sum of the encoder's hidden states instead
    of its output: weights zero-initialised (a plain mean at first), no extra norm, as SUPERB."""
    layers: list[int] = field(default_factory=list)
    """Which hidden states the sum covers: 0 is the input of the first Transformer layer, i
    the output of layer i (`Wav2Vec2Model.encode(return_hidden_states=True)`); empty: all
    num_layers + 1 (13 for BASE). One layer and `layer_sum` picks that layer."""
    freeze: bool = False
    """Frozen upstream: the whole `Wav2Vec2Model` (CNN included) gets no gradient and is out
    of the optimizer, and runs in eval mode whatever the head's mode, so dropout, LayerDrop
    and masking are off inside it (as s3prl's wav2vec2 wrapper); its weights stay bit-identical."""
    cache: bool = False
    """With `freeze`: run the upstream on each utterance alone, once, and keep what the head
    reads in memory (keyed by a hash of the waveform), so later epochs and validations skip
    it. A probe of a few minutes of audio then costs about one pass of the upstream. An
    utterance's features are then always those it has alone, whatever batch it is in (the
    uncached path differs by float rounding, and for BASE's GroupNorm encoder by its padding)."""


@dataclass
class ModelConfig:
    """The wav2vec 2.0 pretraining model. Defaults: BASE (95,044,608 parameters)."""

    feature_encoder: FeatureEncoderConfig = field(default_factory=FeatureEncoderConfig)
    """Raw audio -> latent frames z."""
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    """Which latent frames the context network must fill in."""
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    """Latent frames -> quantized targets q."""
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    """Masked frames -> context c."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Weights of the diversity and feature-penalty terms."""
    final_dim: int = arch(256)
    """F, dimension the context and the targets are projected to for the contrastive task
    (BASE 256, LARGE 768; 0 means D)."""
    dropout_input: float = 0.1
    """Dropout on the projected features before masking (BASE 0.1)."""
    dropout_features: float = 0.1
    """Dropout on the unmasked features that feed the quantizer (BASE 0.1)."""
    num_negatives: int = 100
    """K distractors per masked frame, drawn from other masked frames of the same utterance."""
    logit_temp: float = 0.1
    """kappa: cosine similarities are divided by this."""
    crop_seq_to_multiple: int = 1
    """Crop the frame sequence to a multiple of this (1 = no crop)."""
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    """What a downstream head reads of the encoder (`UpstreamConfig`); pretraining ignores it."""


def base() -> ModelConfig:
    """BASE: 12 x 768, post-LN, group-norm encoder, final_dim 256 (95.0M parameters)."""
    return ModelConfig()


def large() -> ModelConfig:
    """LARGE (`wav2vec2_large_librivox.yaml`): 24 x 1024 pre-LN, layer-norm encoder with conv
    bias, final_dim 768, temperature floor 0.1, loss weights [0.1, 0], no dropouts
    (317.4M parameters)."""
    cfg = ModelConfig()
    cfg.feature_encoder.mode = "layer_norm"
    cfg.feature_encoder.conv_bias = True
    cfg.feature_encoder.grad_mult = 1.0
    cfg.transformer = TransformerConfig(
        num_layers=24,
        embed_dim=1024,
        ffn_dim=4096,
        num_heads=16,
        layer_norm_first=True,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layerdrop=0.0,
    )
    cfg.quantizer.min_temp = 0.1
    cfg.loss.feature_penalty_weight = 0.0
    cfg.final_dim = 768
    cfg.dropout_input = 0.0
    cfg.dropout_features = 0.0
    return cfg


def tiny() -> ModelConfig:
    """TINY: the BASE recipe shrunk for CPU tests (~0.2M parameters). Same stride (320)
    and receptive field structure, 32 conv channels, 2 layers of width 48, 2 x 16 codebook entries."""
    cfg = ModelConfig()
    cfg.feature_encoder.conv_dims = [32] * 7
    cfg.transformer = TransformerConfig(
        num_layers=2, embed_dim=48, ffn_dim=96, num_heads=2, conv_pos=16, conv_pos_groups=2
    )
    cfg.quantizer.num_entries = 16
    cfg.final_dim = 16
    cfg.num_negatives = 10
    return cfg


def demo() -> ModelConfig:
    """DEMO: what learns on 2 CPU cores in minutes (`configs/demo.yaml`; why each value,
    with the runs that led to it: docs/training.md). 0.7M parameters: a 64-channel
    layer-norm encoder (for normalised audio), 4 x 128 post-LN layers, 2 x 32 codebook
    entries; short masks (p=0.3, 3 frames), diversity weight 1.0, a temperature that reaches
    its floor by update ~140, K=20 negatives and no dropout."""
    cfg = ModelConfig()
    fe = cfg.feature_encoder
    fe.conv_dims = [64] * 7
    fe.mode = "layer_norm"
    fe.conv_bias = True
    fe.grad_mult = 1.0
    cfg.transformer = TransformerConfig(
        num_layers=4, embed_dim=128, ffn_dim=256, num_heads=4, conv_pos=32, conv_pos_groups=8,
        dropout=0.0, attention_dropout=0.0, layerdrop=0.0,
    )
    cfg.quantizer.num_entries = 32
    cfg.quantizer.temp_decay = 0.99
    cfg.masking.mask_prob = 0.3
    cfg.masking.mask_len = 3
    cfg.loss.diversity_weight = 1.0
    cfg.final_dim = 64
    cfg.num_negatives = 20
    cfg.dropout_input = 0.0
    cfg.dropout_features = 0.0
    return cfg


PRESETS = {"base": base, "large": large, "tiny": tiny, "demo": demo}


def preset(name: str) -> ModelConfig:
    """A fresh copy of a named preset ("base", "large", "tiny" or "demo")."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name]())


# ------------------------------------------------------------------------- architecture
def architecture(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """The architecture fields (declared with `arch`) of a config dataclass tree, as
    {dotted name: value}, e.g. {"transformer.num_layers": 12, ...}."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(architecture(value, f"{prefix}{f.name}."))
        elif f.metadata.get("architecture"):
            out[prefix + f.name] = value
    return out


def architecture_differences(saved: dict[str, Any], current: ModelConfig) -> list[str]:
    """Dotted names of the architecture fields on which `saved` (a model config as a plain
    dict, as checkpoints store it) differs from `current`. A field `saved` lacks counts
    as the schema default of its time, which is today's default."""
    defaults = architecture(ModelConfig())
    diffs = []
    for name, value in architecture(current).items():
        node: Any = saved
        for part in name.split("."):
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
        if node is _ABSENT:
            node = defaults[name]
        if _plain(node) != _plain(value):
            diffs.append(name)
    return diffs


def with_architecture(cfg: ModelConfig, source: ModelConfig) -> ModelConfig:
    """A copy of `cfg` whose architecture fields are `source`'s: the shapes come from a
    pretrained model, everything else (dropouts, masking...) from `cfg`."""
    out = copy.deepcopy(cfg)
    for name, value in architecture(source).items():
        *path, leaf = name.split(".")
        node = out
        for part in path:
            node = getattr(node, part)
        setattr(node, leaf, copy.deepcopy(value))
    return out


_ABSENT = object()


def _plain(value: Any) -> Any:
    # OmegaConf ListConfig, tuples and lists compare as lists.
    return list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig" else value
