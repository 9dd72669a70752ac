"""Training configuration: the schema every Hydra YAML under `configs/` overrides.

Defaults are the BASE pretraining recipe (fairseq's `wav2vec2_base_librispeech.yaml`): the
presets in `configs/` only list what differs. The `task` section is the chosen task's own
dataclass (`wav2vec2.tasks`: `pretrain`, `ctc`). `validate()` checks values the type
system cannot and derives `update_freq` from `distributed.simulated_world_size`; it raises
`ValueError` naming the offending key. Hydra is only touched by `wav2vec2.train.cli`, so
the package stays usable with plain dataclasses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from wav2vec2.config.model import ModelConfig

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
STRATEGIES = ("ddp", "fsdp")


@dataclass
class DataConfig:
    """Where the audio is and how it is batched (fairseq `FileAudioDataset`, `batch_by_size`)."""

    manifest_dir: str = MISSING
    """Directory holding `{train_subset}.tsv` and `{valid_subset}.tsv` manifests."""
    train_subset: str = "train"
    """Manifest name (without .tsv) used for training."""
    valid_subset: str = "valid"
    """Manifest name (without .tsv) used for validation; "" disables validation."""
    sample_rate: int = 16000
    """Expected sample rate of every file; a mismatch is an error, as in fairseq."""
    max_sample_size: int = 250_000
    """Crop every utterance to at most this many samples (15.6 s; LARGE 320k); 0 = no cap.
    CTC fine-tuning never crops (a crop would cut audio from its transcript): 0 there."""
    min_sample_size: int = 32_000
    """Leave out utterances shorter than this (2 s), as fairseq does; the log says how
    many. 0 keeps every file (fine-tuning)."""
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
    train_shards: str = ""
    """Pretraining: read the training set from this directory of tar shards
    (`wav2vec2-shards MANIFEST DIR` writes them from any manifest) instead of
    `{train_subset}.tsv`: a few large files read shard by shard instead of one open per
    utterance (`wav2vec2/data/shards.py`). Validation still reads `{valid_subset}.tsv`. ""
    reads the manifest."""
    shuffle_buffer: int = 10_000
    """With `train_shards`: utterances per batching window. Batches are made within a window
    of this many consecutive utterances of a rank's shards, not over the whole corpus: larger
    is closer to per-file shuffling, at no memory cost (lengths come from the index)."""
    bad_files: str = "error"
    """A missing, unreadable, empty, truncated, wrong-rate or NaN/inf audio file found
    while training or validating: "error" stops, naming the file and its manifest line;
    "skip" replaces it with the next good file of the manifest (the same on every rank and
    after a resume) and the trainer logs it to the run directory."""

    def __post_init__(self) -> None:
        if self.bad_files not in ("error", "skip"):
            raise ValueError(f"data.bad_files must be error or skip, got {self.bad_files!r}")


SCHEDULES = ("polynomial_decay", "tri_stage")


@dataclass
class OptimConfig:
    """Adam with decoupled weight decay and a learning-rate schedule: warmup + polynomial
    decay for pretraining, fairseq's tri-stage for fine-tuning."""

    lr: float = 5e-4
    """Peak learning rate (BASE 5e-4)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """Adam (beta1, beta2)."""
    eps: float = 1e-6
    """Adam epsilon."""
    weight_decay: float = 0.01
    """Decoupled (AdamW) weight decay, applied to all parameters as fairseq does."""
    schedule: str = "polynomial_decay"
    """"polynomial_decay" (warmup_updates, end_lr, power) or "tri_stage" (phase_ratio,
    init_lr_scale, final_lr_scale), as fairseq's schedulers of those names."""
    warmup_updates: int = 32_000
    """polynomial_decay: linear warmup length; lr = peak * max(u, 1) / warmup_updates before it ends."""
    max_update: int = 400_000
    """Total optimizer updates; the schedule reaches `end_lr` here and training stops."""
    end_lr: float = 0.0
    """Learning rate at `max_update`."""
    power: float = 1.0
    """Exponent of the polynomial decay (1 = linear)."""
    phase_ratio: list[float] = field(default_factory=lambda: [0.1, 0.4, 0.5])
    """tri_stage: fractions of `max_update` spent warming up (linearly from
    init_lr_scale * lr to lr), holding at lr, and decaying exponentially to
    final_lr_scale * lr; after the three phases lr stays at final_lr_scale * lr."""
    init_lr_scale: float = 0.01
    """tri_stage: the warmup starts at this fraction of the peak lr."""
    final_lr_scale: float = 0.05
    """tri_stage: the decay ends at this fraction of the peak lr."""
    clip_norm: float = 0.0
    """Clip the global gradient norm to this; 0 disables clipping (the recipes' value)."""
    update_freq: int = 1
    """Micro-batches accumulated per update on each rank (fairseq `update_freq`). Leave at 1
    when `distributed.simulated_world_size` is set: it is then derived."""
    updates_span_epochs: bool = False
    """False (fairseq): an update never spans an epoch boundary. fairseq groups each epoch's
    batches into updates (`GroupedIterator(update_freq)` over one epoch), so the last update
    of an epoch takes what is left, fewer than `update_freq` micro-batches (its gradient is
    still the mean over what it saw), and on a set of fewer batches than one update, each
    update is the whole epoch: every utterance at most once per update. A rank whose shard
    of the epoch is one batch shorter (batches % ranks) runs a stand-in batch at zero weight
    where the others run their last, as fairseq's dummy batch: no batch is dropped, and N
    ranks x update_freq are one process x N*update_freq on the same batches.
    True: this project before issue #20. The stream runs on across epochs, every update has
    `update_freq` micro-batches, and the batches % ranks left over by sharding are skipped
    each epoch (a different few each time) so that ranks stay even."""


@dataclass
class DistributedConfig:
    """Multi-process training. The process group itself comes from torchrun's environment."""

    simulated_world_size: int = 0
    """Number of GPUs the recipe assumes (BASE 64, LARGE 128). If > 0, `optim.update_freq`
    becomes simulated_world_size / world_size, as fairseq's README advises, so the same
    preset gives the same global batch on 1, 8 or 64 GPUs. 0 disables."""
    strategy: str = "ddp"
    """How ranks share the model. "ddp": every rank holds all weights and Adam's moments,
    gradients are all-reduced (fairseq's `c10d`). "fsdp": PyTorch's FSDP2 (`fully_shard`)
    shards weights, gradients and Adam's moments over the ranks, one unit per Transformer
    layer, one for the feature encoder, one for the quantizer, the rest with the root
    (`train/sharding.py`): a model past ~1B parameters fits where DDP's copy would not.
    Checkpoints hold gathered full weights either way, so a run may change strategy or
    world size when it resumes. Under fsdp, LayerDrop draws are shared by all ranks."""
    fsdp_reduce_every_micro_batch: bool = False
    """fsdp with `optim.update_freq` > 1: false keeps each micro-batch's gradients unsharded
    on the rank and reduce-scatters once per update (no extra communication; gradient memory
    is that of the whole model, in fp32); true reduce-scatters after every micro-batch
    (update_freq times the traffic; only a shard of the gradients is kept)."""
    backend: str = "auto"
    """torch.distributed backend: "auto" (nccl on CUDA, gloo on CPU), "nccl" or "gloo"."""
    find_unused_parameters: bool | None = None
    """DDP's flag; None means True exactly when transformer layerdrop > 0."""
    timeout_minutes: float = 30.0
    """How long a collective (gradient all-reduce, barrier...) may wait for the other ranks
    before the run fails with an error naming it, instead of hanging. 30 minutes covers a
    slow checkpoint write or validation on rank 0 and is far below NCCL's own default
    (hours with some builds), so a rank that died or hangs costs half an hour, not a job."""


@dataclass
class PrecisionConfig:
    """Numeric precision (fairseq `--fp16`, `FP16Optimizer`)."""

    dtype: str = "fp32"
    """"fp32", "bf16" (autocast, no scaling), "fp16" (autocast + dynamic loss scaling) or
    "auto": on a GPU bf16 where it is supported, else fp16 (fairseq's recipes train in mixed
    precision), and fp32 on a CPU. The model keeps its fp32 islands (norms, Gumbel softmax,
    logits, losses) in all modes."""
    tf32: bool = True
    """CUDA only: TF32 tensor cores for the fp32 matmuls and convolutions (the fp32 islands,
    or everything under dtype fp32), as fairseq's recipes ran on Ampere with older torch's
    default. Off gives IEEE fp32."""
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
    """Save every this many updates (fairseq `save_interval_updates`; BASE 25k), once
    validation may start (`train.validate_after_updates`, as fairseq): `checkpoint_last`
    and a snapshot `checkpoint_{update:08d}.pt`. Such a save validates too, as in fairseq,
    unless it ends an epoch (then `train.validate_every_epochs` decides). 0: never by count."""
    save_every_epochs: int = 1
    """Save `checkpoint_last` at the end of every this many epochs (fairseq `save_interval`,
    default 1). fairseq's recipes set `no_epoch_checkpoints`, so such a save writes no
    numbered file of its own. 0: never at an epoch's end."""
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
    """Metrics: `metrics.jsonl`, TensorBoard events and a console line."""

    log_every: int = 200
    """Log averaged training metrics every this many updates (fairseq 200)."""
    tensorboard: bool = True
    """Write TensorBoard event files under `run_dir/tb`."""
    peak_tflops: float = 0.0
    """One device's peak dense TFLOP/s in the run's precision (an H100 SXM: ~989 in bf16; an
    A100: 312), for the MFU in the train rows (`mfu`: the task's analytical FLOPs of rank 0's
    updates, `wav2vec2.model.flops`, per second of the update over this peak) and on the
    console. 0: unknown, no MFU. Throughput is logged whatever it is: `audio_sec_per_sec`
    (all ranks) and `device_audio_sec_per_sec` (that over the world size)."""


@dataclass
class LoopConfig:
    """The training loop."""

    validate_every: int = 0
    """Validate every this many updates (fairseq `validate_interval_updates`); 0: never by
    count. Whatever the cadence, the end of training always validates, and so does a save
    by `checkpoint.save_every` within an epoch (fairseq's rule, `validate_and_save`)."""
    validate_every_epochs: int = 1
    """Validate at the end of every this many epochs (fairseq `validate_interval`, default
    1); 0: never at an epoch's end. Replaces `validate_every_epoch` (true/false), which
    configs written before issue #20 still load as 1/0 (`migrate_config_dict`)."""
    validate_after_updates: int = 0
    """No validation, and no save by `checkpoint.save_every`, before this many updates
    (fairseq `validate_after_updates`; the low-resource fine-tuning recipes wait for the end
    of the encoder freeze); the end of training always validates."""
    validate_at_start: bool = False
    """Also validate before the first update of a fresh run: the starting point of a run that
    continues a pretrained model (its health warnings compare with it; the continue_*
    presets set it)."""
    max_valid_batches: int = 0
    """Cap on validation batches per rank (0 = the whole valid set)."""
    stop_at_update: int = 0
    """Checkpoint and exit once this update count is reached, without changing the
    schedule (job chaining on time-limited clusters); 0 runs to `optim.max_update`."""
    time_limit_minutes: float = 0.0
    """Checkpoint and exit after this much wall time; 0 = no limit. SIGTERM and SIGUSR1
    do the same at the next update boundary. Either way `scripts/train.py` exits with
    status 75 (EX_TEMPFAIL, "try again"): rerunning the same command resumes. On SLURM,
    `sbatch --signal=USR1@120` sends SIGUSR1 to the job's tasks two minutes before its
    time limit, leaving time for the checkpoint; a job script that resubmits itself on
    status 75 chains jobs to the end of training."""
    max_consecutive_nonfinite: int = 10
    """Updates whose loss or gradient norm is inf/nan (fp32, bf16) are skipped: no
    optimizer step, the update count and lr stay, the batches are consumed; each is logged
    with its files and counted (`nonfinite_skips`). More than this many in a row stop the
    run with an error, leaving the last checkpoint as it was; 0 stops at the first. 10: a
    rare bad batch costs one update, while a diverged model stops within minutes. fp16 has
    its own rule: overflows lower the loss scale, down to `precision.min_loss_scale`."""
    device: str = "auto"
    """"auto" (cuda:LOCAL_RANK if available, else cpu), "cpu" or "cuda"."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms and deterministic cuDNN/cuBLAS (slower on GPU)."""
    num_threads: int = 0
    """torch intra-op threads per process; 0 leaves torch's default."""


@dataclass
class TrainConfig:
    """Everything one training run needs. Written to `run_dir/config.yaml` and into
    every checkpoint."""

    task: Any = MISSING
    """The task's own config section (`PretrainTaskConfig`, `CtcTaskConfig`...), chosen
    by a preset's `task:` default (`task: pretrain`, `task: ctc`)."""
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
    if d.strategy not in STRATEGIES:
        raise ValueError(f"distributed.strategy must be one of {STRATEGIES}, got {d.strategy!r}")
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
    if o.schedule == "polynomial_decay" and not 0 <= o.warmup_updates <= o.max_update:
        raise ValueError(f"optim.warmup_updates must be in [0, optim.max_update], got {o.warmup_updates}")
    if o.clip_norm < 0 or not math.isfinite(o.clip_norm):
        raise ValueError(f"optim.clip_norm must be >= 0 (0 = off), got {o.clip_norm}")
    for key, value in (("checkpoint.save_every", cfg.checkpoint.save_every),
                       ("checkpoint.save_every_epochs", cfg.checkpoint.save_every_epochs),
                       ("train.validate_every", cfg.train.validate_every),
                       ("train.validate_every_epochs", cfg.train.validate_every_epochs)):
        if value < 0:
            raise ValueError(f"{key} must be >= 0 (0 = never), got {value}")
    if cfg.train.max_consecutive_nonfinite < 0:
        raise ValueError(f"train.max_consecutive_nonfinite must be >= 0 (0 = stop at the first), "
                         f"got {cfg.train.max_consecutive_nonfinite}")
    if not d.timeout_minutes > 0:
        raise ValueError(f"distributed.timeout_minutes must be > 0, got {d.timeout_minutes}")
    if cfg.train.validate_after_updates < 0:
        raise ValueError(f"train.validate_after_updates must be >= 0, got {cfg.train.validate_after_updates}")
    validate_schedule(o)
    if cfg.logging.log_every <= 0:
        raise ValueError(f"logging.log_every must be > 0, got {cfg.logging.log_every}")
    if cfg.logging.peak_tflops < 0:
        raise ValueError(f"logging.peak_tflops must be >= 0 (0: unknown), got {cfg.logging.peak_tflops}")
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


def validate_schedule(cfg: OptimConfig) -> None:
    """Raise ValueError naming the offending key if the schedule settings are unusable.

    The name is always checked; the tri_stage keys only when `schedule` is "tri_stage",
    since polynomial_decay ignores them.
    """
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
    if cfg.schedule != "tri_stage":
        return
    ratios = list(cfg.phase_ratio)
    if (
        len(ratios) != 3
        or not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in ratios)
        or not all(r >= 0.0 for r in ratios)  # also rejects nan
        or not abs(sum(ratios) - 1.0) <= 1e-6
    ):
        raise ValueError(
            "optim.phase_ratio must be 3 non-negative numbers (warmup, hold, decay) "
            f"summing to 1, got {ratios}"
        )
    for key, value in (("optim.init_lr_scale", cfg.init_lr_scale),
                       ("optim.final_lr_scale", cfg.final_lr_scale)):
        if not 0.0 < value <= 1.0:  # also rejects nan
            raise ValueError(f"{key} must be in (0, 1], got {value}")


def migrate_config_dict(d: dict[str, Any]) -> dict[str, Any]:
    """A stored config (a checkpoint's, a run's `config.yaml`) in its plain-dict form, with
    the keys of earlier versions renamed to this schema's; the one place that knows them.
    The input is left as it was.

    - `train.validate_every_epoch` (before issue #20: validate at each new epoch, or not)
      is `train.validate_every_epochs`: true is 1, false is 0.
    """
    train = d.get("train")
    if not (isinstance(train, dict) and "validate_every_epoch" in train):
        return d
    train = dict(train)
    train.setdefault("validate_every_epochs", int(bool(train.pop("validate_every_epoch"))))
    return {**d, "train": train}
