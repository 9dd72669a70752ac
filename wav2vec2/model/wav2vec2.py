"""The wav2vec 2.0 model (paper §2-3, fairseq `Wav2Vec2Model`).

encode(): feature encoder -> LayerNorm -> projection -> dropout -> [masking] -> context
network. What every downstream use calls (fine-tuning, feature extraction, export): no
quantizer, no negatives, no host synchronisation.

forward(): the pretraining step on the same pieces: encode with span masking (a learned
mask embedding), then quantize the unmasked features at the masked frames -> project_q ->
sample negatives -> final_proj -> cosine logits / kappa. The losses live in `losses.py`.

Shapes: B batch, L samples, T frames, C conv channels, D model dim, F final dim,
M masked frames per utterance, K negatives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from wav2vec2.config import ModelConfig
from wav2vec2.model.dropout import Dropout
from wav2vec2.model.feature_encoder import ConvFeatureEncoder, GradMultiply, frame_padding_mask
from wav2vec2.model.masking import compute_channel_mask, compute_span_mask
from wav2vec2.model.quantizer import GumbelVectorQuantizer
from wav2vec2.model.transformer import ContextNetwork


@dataclass
class EncoderOutput:
    x: Tensor
    """(B, T, D) output of the context network."""
    padding_mask: Tensor | None = None
    """(B, T) bool frame padding mask, True = pad (None when the input had none)."""
    hidden_states: list[Tensor] | None = None
    """With `return_hidden_states`: num_layers + 1 tensors (B, T, D): [0] the input of the
    first layer, [i] the output of layer i; the last is the output `x` (for pre-LN: after
    the final LayerNorm, as transformers 4.x; 5.x gives it before)."""
    features: Tensor | None = None
    """With `return_features`: (B, T, C) feature-encoder output after its LayerNorm, as
    fairseq's `features` and transformers' `extract_features`."""
    time_mask: Tensor | None = None
    """(B, T) bool, True = frame replaced by the mask embedding (None without masking)."""


@dataclass
class Wav2Vec2Output:
    logits: Tensor
    """(B*M, 1+K) fp32 cosine logits / kappa; the positive is column 0, negatives equal to
    it are -inf."""
    feature_penalty: Tensor
    """0-dim fp32: mean of squared feature-encoder outputs (before the LayerNorm)."""
    prob_perplexity: Tensor
    """0-dim, with grad: softmax perplexity over this forward's masked frames."""
    code_perplexity: Tensor
    """0-dim: hard-code perplexity over this forward's masked frames."""
    num_vars: int
    """G*V."""
    temperature: float
    """Gumbel temperature used."""
    time_mask: Tensor
    """(B, T) bool, True = masked frame."""
    padding_mask: Tensor | None = None
    """(B, T) bool frame padding mask, True = pad (None without padding)."""
    negative_indices: Tensor | None = None
    """(B, M, K) indices into each utterance's M masked frames."""
    extras: dict[str, Tensor] = field(default_factory=dict)
    """Intermediates for tests and analysis: "context" (B, T, D), "targets" (B, M, F),
    "codes" (B*M, G)."""


def sample_negatives(
    batch: int,
    num_masked: int,
    num_negatives: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """K distractor indices per masked frame, uniform with replacement over the *other*
    masked frames of the same utterance (fairseq: draw in [0, M-2], add 1 if >= self).

    Drawn on `device`, so no host-to-device copy (the CPU draw is a known multi-GPU
    bottleneck in fairseq, #4856).

    Returns (B, M, K) long in [0, M).
    """
    if num_masked < 2:
        raise ValueError(
            f"negative sampling needs at least 2 masked frames per utterance, got {num_masked}; "
            "use longer audio or a larger masking.mask_prob"
        )
    idx = torch.randint(
        0, num_masked - 1, (batch, num_masked, num_negatives), generator=generator, device=device
    )
    self_idx = torch.arange(num_masked, device=device).view(1, -1, 1)
    return idx + (idx >= self_idx).long()


def contrastive_logits(
    context: Tensor, targets: Tensor, negative_indices: Tensor, logit_temp: float, eps: float = 1e-8
) -> Tensor:
    """cos(c_t, candidate) / kappa for the positive and its K negatives, in fp32.

    fairseq (and transformers) broadcast the context against a gathered (B, M, 1+K, F)
    candidate tensor and call `F.cosine_similarity`, which normalises every copy again. Here
    each vector is normalised once (each norm clamped at eps, as `F.cosine_similarity` does),
    one batched matmul gives every context-target cosine of an utterance, (B, M, M), and the
    1+K candidates are gathered from it: 8x cheaper forward + backward at 2 x 15.6 s (#11),
    equal to fairseq's logits within float rounding (~1e-6).

    Shape: context (B, M, F), targets (B, M, F), negative_indices (B, M, K) -> (B*M, 1+K).
    """
    B, M, Fd = targets.shape
    K = negative_indices.shape[-1]

    def unit(x: Tensor) -> Tensor:
        x = x.float()
        return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps)

    cosines = torch.bmm(unit(context), unit(targets).transpose(1, 2))  # (B, M, F) x (B, F, M) -> (B, M, M)
    positives = torch.arange(M, device=targets.device).view(1, M, 1).expand(B, M, 1)
    candidates = torch.cat([positives, negative_indices], dim=2)  # (B, M, 1+K) target indices
    logits = cosines.gather(2, candidates) / logit_temp  # (B, M, 1+K)
    # A negative identical to the positive (same vector, bit for bit) cannot be told apart: exclude it.
    flat = negative_indices + (torch.arange(B, device=targets.device) * M).view(B, 1, 1)
    negatives = targets.reshape(B * M, Fd)[flat.view(-1)].view(B, M, K, Fd)  # (B, M, K, F)
    neg_is_pos = (negatives == targets.unsqueeze(2)).all(dim=-1)  # (B, M, K)
    logits[..., 1:] = logits[..., 1:].masked_fill(neg_is_pos, float("-inf"))
    return logits.view(B * M, 1 + K)


class Wav2Vec2Model(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.transformer.embed_dim
        final_dim = cfg.final_dim or D
        vq_dim = cfg.quantizer.codebook_dim or final_dim

        self.feature_encoder = ConvFeatureEncoder(cfg.feature_encoder)
        C = self.feature_encoder.out_dim
        self.layer_norm = nn.LayerNorm(C)
        # fairseq only projects when the widths differ.
        self.post_extract_proj = nn.Linear(C, D) if C != D else None
        self.dropout_input = Dropout(cfg.dropout_input)
        self.dropout_features = Dropout(cfg.dropout_features)
        self.mask_emb = nn.Parameter(torch.empty(D))
        self.encoder = ContextNetwork(cfg.transformer)
        # The pretraining heads; `remove_pretraining_modules()` drops them for fine-tuning.
        self.quantizer: GumbelVectorQuantizer | None = GumbelVectorQuantizer(
            cfg.quantizer, input_dim=C, codebook_dim=vq_dim)
        self.project_q: nn.Linear | None = nn.Linear(vq_dim, final_dim)
        self.final_proj: nn.Linear | None = nn.Linear(D, final_dim)
        self.init_weights()

    def init_weights(self) -> None:
        """Every initialisation, in one place (fairseq `ConvFeatureExtractionModel`, `init_bert_params`,
        `GumbelVectorQuantizer`):

        - feature-encoder convs: Kaiming-normal weights (bias, if any: PyTorch default);
        - encoder Linears (q/k/v/out, fc1, fc2): N(0, 0.02), bias 0; LayerNorms 1/0;
        - positional conv: N(0, sqrt(4/(k*D))), bias 0, weight-norm gain = ||v|| per tap;
        - quantizer: codebook U[0, 1), logits projection N(0, 1) with bias 0;
        - mask_emb U[0, 1); post_extract_proj, project_q, final_proj: PyTorch Linear default.
        """
        self.feature_encoder.reset_parameters()
        self.layer_norm.reset_parameters()
        for linear in (self.post_extract_proj, self.project_q, self.final_proj):
            if linear is not None:
                linear.reset_parameters()
        nn.init.uniform_(self.mask_emb)
        self.encoder.reset_parameters()
        if self.quantizer is not None:
            self.quantizer.reset_parameters()

    def remove_pretraining_modules(self) -> None:
        """Drop the quantizer, project_q and final_proj (fairseq's method of this name):
        what fine-tuning and feature extraction keep is `encode`. `mask_emb` stays, since
        fine-tuning masks too."""
        self.quantizer = None
        self.project_q = None
        self.final_proj = None

    # ------------------------------------------------------------------ encoder
    def _features(self, source: Tensor, *, penalty: bool) -> tuple[Tensor, Tensor | None]:
        """Shape: source (B, L) -> z (B, T, C) after the LayerNorm, and the penalty (0-dim)."""
        grad_mult = self.cfg.feature_encoder.grad_mult
        if grad_mult > 0:
            z = self.feature_encoder(source)
            if grad_mult != 1.0:
                z = GradMultiply.apply(z, grad_mult)
        else:
            with torch.no_grad():
                z = self.feature_encoder(source)
        feature_penalty = z.float().pow(2).mean() if penalty else None  # before the LayerNorm, fp32
        z = self.layer_norm(z.transpose(1, 2))  # (B, C, T) -> (B, T, C)
        return z, feature_penalty

    def _frame_padding(self, padding_mask: Tensor | None, source: Tensor, num_frames: int) -> Tensor | None:
        if padding_mask is None:
            return None
        if padding_mask.shape != source.shape:
            raise ValueError(
                f"padding_mask must have the shape of source {tuple(source.shape)}, "
                f"got {tuple(padding_mask.shape)}"
            )
        return frame_padding_mask(padding_mask, self.feature_encoder, num_frames)

    def _apply_masks(
        self, x: Tensor, frame_padding: Tensor | None, time_mask: Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor | None]:
        """Replace masked frames by mask_emb and zero masked channels. With
        `masking.mask_prob` 0 (and no `time_mask` given) no frame is masked, as fairseq.

        Shape: x (B, T, D) -> (B, T, D), time_mask (B, T) or None.
        """
        mcfg = self.cfg.masking
        B, T, D = x.shape

        def channel_mask() -> Tensor:
            m = compute_channel_mask(
                B, D, mask_prob=mcfg.channel_prob, mask_len=mcfg.channel_len,
                generator=generator, device=x.device, selection=mcfg.channel_selection,
                other=mcfg.channel_other, no_overlap=mcfg.channel_no_overlap,
                min_space=mcfg.channel_min_space,
            )
            return m.unsqueeze(1)  # (B, D) -> (B, 1, D), the same channels at every frame

        # Whenever masking is asked for, as fairseq (its pretraining validation masks too);
        # fine-tuning only asks while training.
        use_channels = mcfg.channel_prob > 0
        if use_channels and mcfg.channel_before:
            x = x.masked_fill(channel_mask(), 0.0)
        if time_mask is None and mcfg.mask_prob > 0:
            time_mask = compute_span_mask(
                (B, T), mask_prob=mcfg.mask_prob, mask_len=mcfg.mask_len, generator=generator,
                device=x.device, padding_mask=frame_padding, min_masks=mcfg.min_masks,
                selection=mcfg.selection, other=mcfg.other, no_overlap=mcfg.no_overlap,
                min_space=mcfg.min_space, require_same_masks=mcfg.require_same_masks,
                mask_dropout=mcfg.mask_dropout,
            )
        elif time_mask is not None and time_mask.shape != (B, T):
            raise ValueError(f"time_mask must have shape {(B, T)}, got {tuple(time_mask.shape)}")
        if time_mask is not None:
            x = torch.where(time_mask.unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        if use_channels and not mcfg.channel_before:
            x = x.masked_fill(channel_mask(), 0.0)
        return x, time_mask

    def _encode(
        self, source: Tensor, padding_mask: Tensor | None, *, mask: bool,
        generator: torch.Generator | None, time_mask: Tensor | None = None,
        return_hidden_states: bool = False, pretraining: bool = False,
    ) -> tuple[EncoderOutput, Tensor | None, Tensor | None]:
        """`encode`, plus what only pretraining needs: the feature penalty and the features
        after `dropout_features` that feed the quantizer (drawn before `dropout_input`, so the
        dropout streams are fairseq's order)."""
        if source.dim() != 2:
            raise ValueError(f"source must have shape (B, L), got {tuple(source.shape)}")
        z, feature_penalty = self._features(source, penalty=pretraining)  # (B, T, C)
        frame_padding = self._frame_padding(padding_mask, source, z.shape[1])

        multiple = self.cfg.crop_seq_to_multiple
        if multiple > 1:
            T = z.shape[1] - z.shape[1] % multiple
            z = z[:, :T]
            frame_padding = frame_padding[:, :T] if frame_padding is not None else None

        unmasked = self.dropout_features(z) if pretraining else None  # feeds the quantizer
        x = self.post_extract_proj(z) if self.post_extract_proj is not None else z
        x = self.dropout_input(x)  # (B, T, D)
        if mask:
            x, time_mask = self._apply_masks(x, frame_padding, time_mask, generator)
        else:
            time_mask = None
        context, hidden_states = self.encoder(x, frame_padding, return_hidden_states=return_hidden_states)
        out = EncoderOutput(
            x=context, padding_mask=frame_padding, features=z, time_mask=time_mask,
            hidden_states=hidden_states if return_hidden_states else None,
        )
        return out, feature_penalty, unmasked

    def encode(
        self,
        source: Tensor,
        padding_mask: Tensor | None = None,
        *,
        return_hidden_states: bool = False,
        return_features: bool = False,
        mask: bool = False,
        generator: torch.Generator | None = None,
    ) -> EncoderOutput:
        """The context network on raw audio: no quantizer, no negatives, no host sync.

        `mask=True` applies the time (and channel) masks of `cfg.masking`, as fine-tuning
        does while training (fairseq `extract_features(mask=...)`), drawing from
        `generator`; the default leaves the input unmasked. Dropout and LayerDrop follow
        the module's train/eval mode.

        Shape: source (B, L) float, padding_mask (B, L) bool True = pad -> EncoderOutput
        with x (B, T, D) and padding_mask (B, T).
        """
        out, _, _ = self._encode(source, padding_mask, mask=mask, generator=generator,
                                 return_hidden_states=return_hidden_states)
        if not return_features:
            out.features = None
        return out

    # ------------------------------------------------------------------ pretraining
    def forward(
        self,
        source: Tensor,
        padding_mask: Tensor | None = None,
        *,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
        time_mask: Tensor | None = None,
        negative_indices: Tensor | None = None,
    ) -> Wav2Vec2Output:
        """One pretraining forward.

        `temperature` is the Gumbel temperature; the trainer passes the schedule's value for
        the current update (`gumbel_temperature`), None means its value at update 0
        (`quantizer.max_temp`). `generator` (on source's device) drives masking, negatives
        and Gumbel noise; dropout and LayerDrop use torch's global RNG. `time_mask` and
        `negative_indices` override the random draws (for tests and equivalence checks).

        Shape: source (B, L) float, padding_mask (B, L) bool True = pad,
        time_mask (B, T) bool, negative_indices (B, M, K) long.
        """
        if self.quantizer is None or self.project_q is None or self.final_proj is None:
            raise RuntimeError("the pretraining modules were removed: use encode(), or a "
                               "model that still has its quantizer")
        if temperature is None:
            temperature = self.cfg.quantizer.max_temp
        enc, feature_penalty, unmasked = self._encode(
            source, padding_mask, mask=True, generator=generator, time_mask=time_mask, pretraining=True)
        context, time_mask = enc.x, enc.time_mask  # (B, T, D), (B, T)
        if time_mask is None:
            raise ValueError("pretraining needs masked frames: masking.mask_prob must be > 0")
        B = context.shape[0]

        # The one host sync of the forward: the masked count sets the target shapes.
        counts = time_mask.sum(dim=1).tolist()
        M = counts[0]
        if any(c != M for c in counts):
            raise ValueError(
                "every utterance must have the same number of masked frames "
                f"(masking.require_same_masks), got {counts}"
            )
        # Masked frame positions in time order: a stable sort puts True (1) first.
        positions = time_mask.to(torch.int8).sort(dim=1, descending=True, stable=True).indices[:, :M]  # (B, M)

        def gather(t: Tensor) -> Tensor:  # (B, T, X) -> (B, M, X)
            return t.gather(1, positions.unsqueeze(-1).expand(-1, -1, t.shape[-1]))

        q = self.quantizer(
            gather(unmasked).reshape(B * M, -1), temperature=temperature, generator=generator
        )
        targets = self.project_q(q.q).view(B, M, -1)  # (B*M, vq) -> (B, M, F)
        c = self.final_proj(gather(context))  # (B, M, F)

        if negative_indices is None:
            negative_indices = sample_negatives(
                B, M, self.cfg.num_negatives, generator=generator, device=source.device
            )
        logits = contrastive_logits(c, targets, negative_indices, self.cfg.logit_temp)
        return Wav2Vec2Output(
            logits=logits,
            feature_penalty=feature_penalty,
            prob_perplexity=q.prob_perplexity,
            code_perplexity=q.code_perplexity,
            num_vars=self.quantizer.num_vars,
            temperature=temperature,
            time_mask=time_mask,
            padding_mask=enc.padding_mask,
            negative_indices=negative_indices,
            extras={"context": context, "targets": targets, "codes": q.codes},
        )
