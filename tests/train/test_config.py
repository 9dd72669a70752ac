"""Every preset composes against the typed schema; bad keys and types fail naming the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from wav2vec2.config import demo, large, tiny
from wav2vec2.train.cli import register_configs
from wav2vec2.config import TrainConfig, validate

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")
PRESETS = ["base_librispeech", "large_librivox", "tiny", "demo", "ctc_tiny", "ctc_demo", "ctc_base_10m",
           "ctc_base_1h", "ctc_base_10h", "ctc_base_100h", "ctc_base_960h"]
REQUIRED = ["data.manifest_dir=/data", "run_dir=/runs/x"]


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_composes_to_a_typed_train_config(name: str, compose_preset) -> None:
    cfg = compose_preset(name, REQUIRED)
    assert isinstance(cfg, TrainConfig)
    validate(cfg, world_size=1)


def test_base_preset_is_the_base_recipe(compose_preset) -> None:
    cfg = validate(compose_preset("base_librispeech", REQUIRED), world_size=8)
    assert cfg.model == TrainConfig().model  # BASE model = schema defaults
    assert (cfg.optim.lr, cfg.optim.warmup_updates, cfg.optim.max_update) == (5e-4, 32_000, 400_000)
    assert (cfg.optim.betas, cfg.optim.eps, cfg.optim.weight_decay) == ([0.9, 0.98], 1e-6, 0.01)
    assert (cfg.data.max_tokens, cfg.data.max_sample_size, cfg.data.min_sample_size) == (1_400_000, 250_000, 32_000)
    assert cfg.optim.clip_norm == 0 and cfg.data.normalize is False
    assert cfg.optim.update_freq == 8  # 64 GPUs simulated on 8
    assert (cfg.checkpoint.save_every, cfg.checkpoint.keep_last, cfg.logging.log_every) == (25_000, 1, 200)
    assert (cfg.precision.dtype, cfg.precision.tf32) == ("auto", True)  # mixed precision on a GPU


def test_large_preset_is_the_large_recipe(compose_preset) -> None:
    cfg = validate(compose_preset("large_librivox", REQUIRED), world_size=16)
    assert dataclasses.asdict(cfg.model) == dataclasses.asdict(large())
    assert (cfg.optim.lr, cfg.optim.max_update, cfg.optim.warmup_updates) == (0.005, 1_000_000, 32_000)
    assert (cfg.data.max_tokens, cfg.data.max_sample_size, cfg.data.max_sentences) == (1_200_000, 320_000, 4)
    assert cfg.data.normalize is True
    assert cfg.optim.update_freq == 8  # 128 GPUs simulated on 16
    assert cfg.precision.dtype == "auto"


def test_model_presets_are_defined_once_in_python(compose_preset) -> None:
    """No YAML repeats a model preset: `model: tiny` is wav2vec2.config.tiny() itself."""
    assert not (Path(CONFIG_DIR) / "model").exists()
    assert dataclasses.asdict(compose_preset("tiny", REQUIRED).model) == dataclasses.asdict(tiny())
    assert dataclasses.asdict(compose_preset("demo", REQUIRED).model) == dataclasses.asdict(demo())
    assert compose_preset("tiny", [*REQUIRED, "model=large"]).model == large()


# fairseq's finetuning/base_*.yaml: update_freq x GPUs, max_update, lr, mask_prob, channel prob, layerdrop, freeze
CTC_RECIPES = {
    "ctc_base_10m": (8, 13_000, 5e-5, 0.65, 0.25, 0.1, 10_000),
    "ctc_base_1h": (8, 13_000, 5e-5, 0.65, 0.25, 0.1, 10_000),
    "ctc_base_10h": (8, 20_000, 5e-5, 0.65, 0.5, 0.05, 10_000),
    "ctc_base_100h": (8, 80_000, 3e-5, 0.65, 0.5, 0.1, 0),
    "ctc_base_960h": (8, 320_000, 1e-4, 0.5, 0.1, 0.1, 0),
}


@pytest.mark.parametrize("name", sorted(CTC_RECIPES))
def test_ctc_presets_are_fairseqs_recipes(name: str, compose_preset) -> None:
    batches, max_update, lr, mask_prob, channel_prob, layerdrop, freeze = CTC_RECIPES[name]
    cfg = validate(compose_preset(name, REQUIRED), world_size=2)
    assert cfg.task.name == "ctc" and cfg.optim.update_freq * 2 == batches
    m, o = cfg.model, cfg.optim
    assert (o.max_update, o.lr, m.masking.mask_prob, m.masking.channel_prob) == (max_update, lr, mask_prob, channel_prob)
    assert (m.transformer.layerdrop, cfg.task.freeze_finetune_updates) == (layerdrop, freeze)
    # shared by all five
    assert (m.masking.mask_len, m.masking.channel_len, m.transformer.activation_dropout) == (10, 64, 0.1)
    assert (m.transformer.dropout, m.transformer.attention_dropout, m.dropout_input, cfg.task.final_dropout) == (0, 0, 0, 0)
    assert m.feature_encoder.grad_mult == 0.0 and cfg.data.normalize is False
    assert (o.schedule, o.phase_ratio, o.init_lr_scale, o.final_lr_scale) == ("tri_stage", [0.1, 0.4, 0.5], 0.01, 0.05)
    assert (o.betas, o.eps, o.weight_decay) == ([0.9, 0.98], 1e-8, 0.0)
    assert (cfg.data.max_tokens, cfg.data.max_sample_size, cfg.data.valid_subset) == (3_200_000, 0, "dev_other")
    assert cfg.train.validate_after_updates == (10_000 if freeze else 0)


def test_unknown_key_fails_naming_it(compose_preset) -> None:
    with pytest.raises(Exception, match="lerning_rate"):
        compose_preset("tiny", [*REQUIRED, "optim.lerning_rate=0.1"])
    with pytest.raises(Exception, match="num_layerz"):
        compose_preset("tiny", [*REQUIRED, "+model.transformer.num_layerz=3"])


def test_wrong_type_fails_naming_the_key(compose_preset) -> None:
    with pytest.raises(Exception, match="max_update"):
        compose_preset("tiny", [*REQUIRED, "optim.max_update=many"])
    with pytest.raises(Exception, match="normalize"):
        compose_preset("tiny", [*REQUIRED, "data.normalize=perhaps"])


def test_missing_required_value_fails_naming_it(compose_preset) -> None:
    with pytest.raises(Exception, match="manifest_dir"):
        compose_preset("tiny", ["run_dir=/runs/x"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        (dict(precision=dict(dtype="fp8")), "precision.dtype"),
        (dict(optim=dict(warmup_updates=-1)), "optim.warmup_updates"),
        (dict(optim=dict(lr=0.0)), "optim.lr"),
        (dict(optim=dict(clip_norm=-1.0)), "optim.clip_norm"),
        (dict(distributed=dict(simulated_world_size=64), optim=dict(update_freq=2)), "optim.update_freq"),
        (dict(distributed=dict(simulated_world_size=6)), "distributed.simulated_world_size"),
        (dict(distributed=dict(timeout_minutes=0.0)), "distributed.timeout_minutes"),
        (dict(train=dict(max_consecutive_nonfinite=-1)), "train.max_consecutive_nonfinite"),
    ],
)
def test_validate_names_the_bad_key(override: dict, key: str, compose_preset) -> None:
    cfg = compose_preset("tiny", REQUIRED)
    for section, values in override.items():
        for name, value in values.items():
            setattr(getattr(cfg, section), name, value)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        validate(cfg, world_size=4)


def test_slurm_launcher_composes() -> None:
    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name="base_librispeech",
            overrides=[*REQUIRED, "hydra/launcher=slurm", "hydra.launcher.nodes=8"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert "submitit" in launcher._target_ and "Slurm" in launcher._target_
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (8, 8, 8)
    # Hydra writes no files of its own for a run (no ./outputs, no run_dir/hydra: what a
    # failed start would leave behind, see test_cli.py); a sweep keeps its job files in the run.
    assert cfg.hydra.run.dir == "." and cfg.hydra.output_subdir is None and cfg.hydra.job.chdir is False
    assert cfg.hydra.sweep.dir == "/runs/x/hydra_multirun"
