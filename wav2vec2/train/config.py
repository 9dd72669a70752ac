"""Training configuration: the schema every Hydra YAML under `configs/` overrides.

Defaults are the BASE recipe (`wav2vec2_base_librispeech.yaml`, spec §6): the presets in
`configs/` only list what differs. `validate()` checks values the type system cannot and
derives `update_freq` from `distributed.simulated_world_size`; it raises `ValueError`
naming the offending key. Only `register_configs()` touches Hydra, so the package stays
usable with plain dataclasses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from wav2vec2.config import ModelConfig

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class DataConfig:
    """Where the audio is and how it is batched (spec §5)."""

    manifest_dir: str = MISSING
    """Directory holding `{train_subset}.tsv` and `{valid_subset}.tsv` manifests."""
    train_subset: str = "train"
    """Manifest name (without .tsv) used for training."""
    valid_subset: str = "valid"
    """Manifest name (without .tsv) used for validation; "" disables validation."""
    sample_rate: int = 16000
    """Expected sample rate of every file; a mismatch is an error, as in fairseq."""
    max_sample_size: int = 250_000
    """Crop every utterance to at most this many samples (15.6 s; LARGE 320k)."""
    min_sample_size: int = 32_000
    """Drop utterances shorter than this from the manifest (2 s)."""
    normalize: bool = False
    """Zero-mean unit-variance per file (LARGE: true, with the layer_norm encoder)."""
    max_tokens: int = 1_400_000
    """Samples per batch per GPU (fairseq `max_tokens`; LARGE 1.2M)."""
    max_sentences: int | None = None
    """Cap on utterances per batch (LARGE: 4, against OOM); None means no cap."""
    required_batch_size_multiple: int = 8
    """Batch sizes are below this or a multiple of it (fairseq default 8)."""
    num_workers: int = 6
    """DataLoader worker processes per rank (0 loads in the training process)."""


@dataclass
class OptimConfig:
    """Adam with decoupled weight decay and warmup + polynomial decay (spec §6)."""

    lr: float = 5e-4
    """Peak learning rate (BASE 5e-4)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """Adam (beta1, beta2)."""
    eps: float = 1e-6
    """Adam epsilon."""
    weight_decay: float = 0.01
    """Decoupled (AdamW) weight decay, applied to all parameters as fairseq does."""
    warmup_updates: int = 32_000
    """Linear warmup length; lr = peak * max(u, 1) / warmup_updates before it ends."""
    max_update: int = 400_000
    """Total optimizer updates; the schedule reaches `end_lr` here and training stops."""
    end_lr: float = 0.0
    """Learning rate at `max_update`."""
    power: float = 1.0
    """Exponent of the polynomial decay (1 = linear)."""
    clip_norm: float = 0.0
    """Clip the global gradient norm to this; 0 disables clipping (the recipes' value)."""
    update_freq: int = 1
    """Micro-batches accumulated per update on each rank. Leave at 1 when
    `distributed.simulated_world_size` is set: it is then derived."""


@dataclass
class DistributedConfig:
    """Multi-process training. The process group itself comes from torchrun's environment."""

    simulated_world_size: int = 0
    """Number of GPUs the recipe assumes (BASE 64, LARGE 128). If > 0, `optim.update_freq`
    becomes simulated_world_size / world_size, as fairseq's README advises, so the same
    preset gives the same global batch on 1, 8 or 64 GPUs. 0 disables."""
    backend: str = "auto"
    """torch.distributed backend: "auto" (nccl on CUDA, gloo on CPU), "nccl" or "gloo"."""
    find_unused_parameters: bool | None = None
    """DDP's flag; None means True exactly when transformer layerdrop > 0."""


@dataclass
class PrecisionConfig:
    """Numeric precision (spec §6 "Precision and stability")."""

    dtype: str = "fp32"
    """"fp32", "bf16" (autocast, no scaling) or "fp16" (autocast + dynamic loss scaling).
    The model keeps its fp32 islands (norms, Gumbel softmax, logits, losses) in all modes."""
    fp16_init_scale: float = 128.0
    """Initial loss scale (fairseq 128)."""
    fp16_scale_window: int = 0
    """Overflow-free updates before the scale doubles; 0 means fairseq's
    2**14 / world_size / update_freq (256 for BASE at 64 GPUs)."""
    min_loss_scale: float = 1e-4
    """Training stops with FloatingPointError when the scale falls below this."""


@dataclass
class CheckpointConfig:
    """Checkpoint files in `run_dir` and how a run starts from an earlier one."""

    save_every: int = 25_000
    """Write `checkpoint_{update:08d}.pt` every this many updates (and `checkpoint_last`)."""
    keep_last: int = 1
    """Interval snapshots kept on disk (fairseq keeps 1); 0 keeps all."""
    save_last_every: int = 0
    """Also refresh `checkpoint_last.pt` this often (0: only with snapshots and at the end).
    Cheap preemption insurance on clusters with short time limits."""
    continue_from: str = ""
    """Start from this checkpoint when `run_dir` holds none (domain adaptation, or an
    earlier run). Ignored once `run_dir` has its own checkpoint, which always wins."""
    reset_optimizer: bool = False
    """With `continue_from`: fresh Adam moments and loss scale."""
    reset_schedule: bool = False
    """With `continue_from`: restart the update count at 0, so warmup, lr decay and the
    Gumbel temperature start over and `max_update` counts updates of this run."""
    reset_dataloader: bool = False
    """With `continue_from`: start at epoch 1, batch 0 instead of the saved position.
    Set it whenever the manifest changes."""


@dataclass
class LoggingConfig:
    """Metrics: `metrics.jsonl`, TensorBoard events and a console line (spec §7)."""

    log_every: int = 200
    """Log averaged training metrics every this many updates (fairseq 200)."""
    tensorboard: bool = True
    """Write TensorBoard event files under `run_dir/tb`."""
    collapse_factor: float = 1.5
    """Warn of codebook collapse when code_perplexity < collapse_factor * G."""
    chance_margin: float = 0.05
    """Warn when contrastive loss is within this many bits of chance after warmup."""


@dataclass
class LoopConfig:
    """The training loop."""

    validate_every: int = 0
    """Validate every this many updates (and always at the end); 0 = only at the end."""
    validate_every_epoch: bool = True
    """Also validate at the first update of every new epoch (fairseq validates per epoch)."""
    max_valid_batches: int = 0
    """Cap on validation batches per rank (0 = the whole valid set)."""
    stop_at_update: int = 0
    """Checkpoint and exit once this update count is reached, without changing the
    schedule (job chaining on time-limited clusters); 0 runs to `optim.max_update`."""
    time_limit_minutes: float = 0.0
    """Checkpoint and exit after this much wall time; 0 = no limit. SIGTERM and SIGUSR1
    do the same at the next update boundary."""
    device: str = "auto"
    """"auto" (cuda:LOCAL_RANK if available, else cpu), "cpu" or "cuda"."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms and deterministic cuDNN/cuBLAS (slower on GPU)."""
    num_threads: int = 0
    """torch intra-op threads per process; 0 leaves torch's default."""


@dataclass
class TrainConfig:
    """Everything one pretraining run needs. Written to `run_dir/config.yaml` and into
    every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    seed: int = 1
    """Model init uses `seed` on every rank; masking, negatives, Gumbel noise and crops
    are seeded from (seed, epoch, global batch index), so they do not depend on the
    number of ranks; dropout uses torch's global RNG seeded with seed + rank."""
    run_dir: str = MISSING
    """Output directory: config, checkpoints, metrics.jsonl, tb/. A run directory that
    already holds a checkpoint resumes from it."""


def validate(cfg: TrainConfig, *, world_size: int = 1) -> TrainConfig:
    """Check values and fill derived ones in place (`optim.update_freq`). Returns `cfg`."""
    o, d, p = cfg.optim, cfg.distributed, cfg.precision
    if p.dtype not in PRECISIONS:
        raise ValueError(f"precision.dtype must be one of {PRECISIONS}, got {p.dtype!r}")
    if d.backend not in ("auto", "nccl", "gloo"):
        raise ValueError(f"distributed.backend must be auto, nccl or gloo, got {d.backend!r}")
    if cfg.train.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device must be auto, cpu or cuda, got {cfg.train.device!r}")
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        raise ValueError(f"optim.betas must be two numbers in [0, 1), got {o.betas}")
    for key, value in (("optim.lr", o.lr), ("optim.eps", o.eps), ("data.max_tokens", cfg.data.max_tokens),
                       ("optim.max_update", o.max_update), ("optim.update_freq", o.update_freq)):
        if not value > 0:
            raise ValueError(f"{key} must be > 0, got {value}")
    if o.warmup_updates < 0 or o.warmup_updates > o.max_update:
        raise ValueError(f"optim.warmup_updates must be in [0, optim.max_update], got {o.warmup_updates}")
    if o.clip_norm < 0 or not math.isfinite(o.clip_norm):
        raise ValueError(f"optim.clip_norm must be >= 0 (0 = off), got {o.clip_norm}")
    if cfg.checkpoint.save_every <= 0:
        raise ValueError(f"checkpoint.save_every must be > 0, got {cfg.checkpoint.save_every}")
    if cfg.logging.log_every <= 0:
        raise ValueError(f"logging.log_every must be > 0, got {cfg.logging.log_every}")
    if d.simulated_world_size > 0:
        if o.update_freq != 1:
            raise ValueError(
                "optim.update_freq is derived from distributed.simulated_world_size; "
                "set one of them, not both"
            )
        if d.simulated_world_size % world_size != 0:
            raise ValueError(
                f"distributed.simulated_world_size={d.simulated_world_size} is not a multiple "
                f"of the {world_size} processes launched"
            )
        o.update_freq = d.simulated_world_size // world_size
        d.simulated_world_size = 0  # derived once: a resumed config must not derive it again
    return cfg


def to_train_config(cfg: Any) -> TrainConfig:
    """A composed Hydra config (DictConfig) as a plain `TrainConfig`.

    Merging into a fresh copy of the schema rejects keys the schema lacks, naming them,
    even ones Hydra let in with a `+key=value` override.
    """
    from omegaconf import OmegaConf

    schema = OmegaConf.structured(TrainConfig)
    return OmegaConf.to_object(OmegaConf.merge(schema, OmegaConf.to_container(cfg, resolve=True)))


def register_configs() -> None:
    """Store `TrainConfig` as `pretrain_schema` in Hydra's ConfigStore, so YAMLs that start
    `defaults: [pretrain_schema, ...]` are type-checked and unknown keys fail."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="pretrain_schema", node=TrainConfig)
