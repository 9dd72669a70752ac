"""Every config schema of the project, on the lowest floor: `model.py`, the model's
architecture and recipe (`ModelConfig` and its presets); `training.py`, everything one
training run needs besides the task (`TrainConfig`: data, optim, precision, checkpoints...).
Both import nothing from the rest of the package, so every component, task and test can
build what it needs directly."""

from wav2vec2.config.model import (
    PRESETS,
    FeatureEncoderConfig,
    LossConfig,
    MaskingConfig,
    ModelConfig,
    QuantizerConfig,
    TransformerConfig,
    UpstreamConfig,
    arch,
    architecture,
    architecture_differences,
    base,
    demo,
    large,
    preset,
    tiny,
    with_architecture,
)
from wav2vec2.config.training import (
    PRECISIONS,
    SCHEDULES,
    CheckpointConfig,
    DataConfig,
    DistributedConfig,
    LoggingConfig,
    LoopConfig,
    OptimConfig,
    PrecisionConfig,
    TrainConfig,
    migrate_config_dict,
    validate,
    validate_schedule,
)

__all__ = [
    "PRECISIONS", "PRESETS", "SCHEDULES", "CheckpointConfig", "DataConfig", "DistributedConfig",
    "FeatureEncoderConfig", "LoggingConfig", "LoopConfig", "LossConfig", "MaskingConfig", "ModelConfig",
    "OptimConfig", "PrecisionConfig", "QuantizerConfig", "TrainConfig", "TransformerConfig", "UpstreamConfig", "arch",
    "architecture", "architecture_differences", "base", "demo", "large", "migrate_config_dict", "preset", "tiny",
    "validate", "validate_schedule", "with_architecture",
]
