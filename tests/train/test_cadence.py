"""When a run validates and saves, against fairseq 0.12.2's rule written out here.

The rule below is fairseq-hydra-train's loop as read in `fairseq_cli/train.py` (`train`,
`validate_and_save`) and `fairseq/data/iterators.py` (`ShardedIterator`, `GroupedIterator`),
written as a simulation of that loop in its own names; the project's side is
`wav2vec2.train.cadence.due` fed by the stream's arithmetic (`updates_per_epoch`), with the
values of the `ctc_base_*` presets; the recipes' values are fairseq's YAMLs
(`examples/wav2vec/config/finetuning/base_*.yaml`), copied by hand into `RECIPES`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from wav2vec2.config import DataConfig, TrainConfig, migrate_config_dict, validate
from wav2vec2.data import TokenBudgetBatchSampler, updates_per_epoch
from wav2vec2.files import atomic_write, load_checkpoint, serialize
from wav2vec2.tasks import config_from_dict
from wav2vec2.tasks.pretrain import PretrainTaskConfig
from wav2vec2.train import cadence, checkpoint as ckpt

from helpers import make_trainer, records


@dataclass(frozen=True)
class Recipe:
    """What a fairseq fine-tuning YAML says of its cadence (fairseq's defaults otherwise)."""

    gpus: int
    update_freq: int
    max_update: int
    save_interval: int = 1
    save_interval_updates: int = 0
    validate_interval: int = 1
    validate_interval_updates: int = 0
    validate_after_updates: int = 0


RECIPES = {
    "ctc_base_10m": Recipe(2, 4, 13_000, save_interval=1000, save_interval_updates=50, validate_interval=1000,
                           validate_after_updates=10_000),
    "ctc_base_1h": Recipe(2, 4, 13_000, save_interval=50, save_interval_updates=1000, validate_interval=1000,
                          validate_after_updates=10_000),
    "ctc_base_10h": Recipe(2, 4, 20_000, save_interval=50, save_interval_updates=10_000, validate_interval=50,
                           validate_after_updates=10_000),
    "ctc_base_100h": Recipe(2, 4, 80_000),
    "ctc_base_960h": Recipe(8, 1, 320_000),
}


@dataclass
class Schedule:
    validations: list[int]
    saves: list[int]
    """Updates at which checkpoint_last is written."""
    by_count: list[int]
    """The saves due to `save_interval_updates` (fairseq's numbered files, but at an epoch's end)."""


def fairseq_schedule(num_batches: int, r: Recipe) -> Schedule:
    """Run fairseq's loop on paper, for an epoch of `num_batches` batches and no skipped step.

    Each GPU gets every gpus-th batch; shards are evened up with empty (dummy) batches, so
    each has ceil(num_batches / gpus). Each shard is cut into steps of update_freq batches,
    the epoch's last step taking what is left. After each step: stop once max_update is
    reached; a checkpoint is written at the end of every save_interval-th epoch, when
    stopping, and every save_interval_updates updates but only from validate_after_updates
    on; validation happens, never before validate_after_updates, when a checkpoint is
    written in the middle of an epoch, at the end of every validate_interval-th epoch, every
    validate_interval_updates updates, and when stopping.
    """
    per_gpu = math.ceil(num_batches / r.gpus)
    steps = math.ceil(per_gpu / r.update_freq)
    out = Schedule([], [], [])
    num_updates, epoch = 0, 0
    while num_updates < r.max_update:
        epoch += 1
        for step in range(steps):
            num_updates += 1
            end_of_epoch = step == steps - 1
            stopping = num_updates >= r.max_update
            may_validate = num_updates >= r.validate_after_updates
            interval_save = (r.save_interval_updates > 0 and num_updates % r.save_interval_updates == 0
                             and may_validate)
            save = (end_of_epoch and epoch % r.save_interval == 0) or stopping or interval_save
            if may_validate and ((save and not end_of_epoch) or stopping
                                 or (end_of_epoch and epoch % r.validate_interval == 0)
                                 or (r.validate_interval_updates > 0
                                     and num_updates % r.validate_interval_updates == 0)):
                out.validations.append(num_updates)
            if save:
                out.saves.append(num_updates)
            if interval_save:
                out.by_count.append(num_updates)
            if stopping:
                break
    return out


def our_schedule(cfg: TrainConfig, num_batches: int, *, world_size: int) -> Schedule:
    """The updates at which the loop validates and saves, for this config on `world_size`
    processes: the stream's epochs (`updates_per_epoch`) through `cadence.due`."""
    per_epoch = updates_per_epoch(num_batches, num_replicas=world_size, update_freq=cfg.optim.update_freq)
    out = Schedule([], [], [])
    for u in range(1, cfg.optim.max_update + 1):
        epoch, step = divmod(u - 1, per_epoch)
        due = cadence.due(u, epoch=epoch + 1, end_of_epoch=step == per_epoch - 1, last=u == cfg.optim.max_update,
                          loop=cfg.train, checkpoint=cfg.checkpoint)
        for wanted, name in ((due.validate, "validations"), (due.save, "saves"), (due.snapshot, "by_count")):
            if wanted:
                getattr(out, name).append(u)
    return out


def labelled_set_batches(hours: float, max_tokens: int, multiple: int) -> int:
    """Batches per epoch of `hours` of utterances of 5-20 s (mean 12.5 s, LibriSpeech's is
    12.3 s), cut as this project and fairseq cut them (`batch_by_size`)."""
    rng = np.random.default_rng(0)
    seconds = rng.uniform(5, 20, int(hours * 3600 / 5))
    seconds = seconds[: int(np.searchsorted(np.cumsum(seconds), hours * 3600)) + 1]
    sampler = TokenBudgetBatchSampler((seconds * 16000).astype(int), max_tokens=max_tokens,
                                      required_batch_size_multiple=multiple)
    return len(sampler.epoch_batches(1))


SIZES = {"10 min": 1 / 6, "1 h": 1.0, "10 h": 10.0, "100 h": 100.0}
CASES = [(name, size) for name in ("ctc_base_10m", "ctc_base_1h", "ctc_base_10h") for size in ("10 min", "1 h", "10 h")]
CASES += [("ctc_base_100h", "10 h"), ("ctc_base_100h", "100 h"), ("ctc_base_960h", "100 h")]


@pytest.mark.parametrize(("name", "size"), CASES)
def test_the_presets_validate_and_save_when_fairseqs_recipes_do(name: str, size: str, compose_preset) -> None:
    cfg = compose_preset(name, ["data.manifest_dir=/data", "run_dir=/runs/x"])
    num_batches = labelled_set_batches(SIZES[size], cfg.data.max_tokens, cfg.data.required_batch_size_multiple)
    fairseq = fairseq_schedule(num_batches, RECIPES[name])
    for world_size in (1, 2, 8):  # the presets simulate 8 GPUs: update_freq = 8 / world_size
        ours = our_schedule(validate(compose_preset(name, ["data.manifest_dir=/data", "run_dir=/runs/x"]),
                                     world_size=world_size), num_batches, world_size=world_size)
        assert ours == fairseq, (name, size, world_size)
    assert fairseq.validations[-1] == fairseq.saves[-1] == RECIPES[name].max_update


def test_the_schedules_docs_finetuning_quotes(compose_preset) -> None:
    """The numbers docs/finetuning.md gives for the low-resource presets."""
    got = {}
    for name in ("ctc_base_10m", "ctc_base_1h", "ctc_base_10h"):
        cfg = validate(compose_preset(name, ["data.manifest_dir=/data", "run_dir=/runs/x"]), world_size=1)
        size = {"ctc_base_10m": "10 min", "ctc_base_1h": "1 h", "ctc_base_10h": "10 h"}[name]
        n = labelled_set_batches(SIZES[size], cfg.data.max_tokens, cfg.data.required_batch_size_multiple)
        s = our_schedule(cfg, n, world_size=1)
        got[name] = (n, s.validations, len(s.saves), len(s.by_count))
    assert got["ctc_base_10m"] == (6, [10_000, 11_000, 12_000, 13_000], 70, 61)
    assert got["ctc_base_1h"] == (27, [12_000, 13_000], 65, 4)
    assert got["ctc_base_10h"] == (255, [10_000, 11_200, 12_800, 14_400, 16_000, 17_600, 19_200, 20_000], 14, 2)


def test_the_loop_validates_and_saves_by_the_rule(make_ctc_cfg, tmp_path: Path) -> None:
    """A real run: 9 batches per epoch in updates of 2 (the 5th partial, so epochs end at
    updates 5, 10, 15), nothing before update 3, saves every 2 updates (validating within an
    epoch, not at its end) and at every epoch's end, validation every 3rd epoch (never here)
    and every 7 updates."""
    cfg = make_ctc_cfg("optim.max_update=14", "optim.update_freq=2", "optim.updates_span_epochs=false",
                       "train.validate_after_updates=3", "train.validate_every=7", "train.validate_every_epochs=3",
                       "checkpoint.save_every=2", "checkpoint.save_every_epochs=1", "checkpoint.keep_last=0")
    trainer = make_trainer(cfg)
    num_batches = len(trainer.stream.sampler.epoch_batches(1))
    assert num_batches == 9
    saves = []
    real_save = trainer.save

    def save(*, snapshot: bool, best: bool) -> None:
        saves.append((trainer.num_updates, snapshot, best))
        real_save(snapshot=snapshot, best=best)

    trainer.save = save
    trainer.fit()
    rule = fairseq_schedule(num_batches, Recipe(1, 2, 14, save_interval=1, save_interval_updates=2,
                                                validate_interval=3, validate_interval_updates=7,
                                                validate_after_updates=3))
    # 2: too early; 5 and 10 end an epoch (a save, no validation); 7 and 14 by count; 14 the end
    assert (rule.validations, rule.saves) == ([4, 6, 7, 8, 12, 14], [4, 5, 6, 8, 10, 12, 14])
    assert [r["num_updates"] for r in records(cfg.run_dir, "valid")] == rule.validations
    best = {u for u, _, b in saves if b}
    assert best <= set(rule.validations)
    assert [u for u, _, _ in saves] == sorted(set(rule.saves) | best)  # and a new best is always kept
    assert [u for u, snapshot, _ in saves if snapshot] == rule.by_count == [4, 6, 8, 10, 12, 14]
    assert sorted(p.name for p in Path(cfg.run_dir).glob("checkpoint_0*.pt")) == [
        ckpt.snapshot_name(u) for u in rule.by_count]


# ------------------------------------------------------------------ configs written before #20
def _with_old_keys(config: dict, validate_every_epoch: bool) -> dict:
    """`config` as this project wrote it before issue #20: validate_every_epoch, a bool."""
    train = {k: v for k, v in config["train"].items() if k != "validate_every_epochs"}
    return {**config, "train": {**train, "validate_every_epoch": validate_every_epoch}}


@pytest.mark.parametrize(("old", "new"), [(True, 1), (False, 0)])
def test_the_old_epoch_key_is_migrated_and_the_input_left_alone(old: bool, new: int) -> None:
    cfg = TrainConfig(task=PretrainTaskConfig(), data=DataConfig(manifest_dir="d"), run_dir="r")
    stored = _with_old_keys(dataclasses.asdict(cfg), old)
    snapshot = repr(stored)
    assert migrate_config_dict(stored)["train"]["validate_every_epochs"] == new
    assert config_from_dict(stored).train.validate_every_epochs == new
    assert repr(stored) == snapshot


def test_a_checkpoint_written_with_the_old_key_still_resumes(make_tiny_cfg, tmp_path: Path) -> None:
    run = tmp_path / "run"
    fast = ["train.validate_every=0", "data.valid_subset=", "checkpoint.save_every=100"]
    make_trainer(make_tiny_cfg(*fast, "optim.max_update=2", run_dir=run)).fit()
    state = load_checkpoint(run / ckpt.LAST)
    state["config"] = _with_old_keys(state["config"], False)
    atomic_write(run / ckpt.LAST, serialize(state))
    resumed = make_trainer(make_tiny_cfg(*fast, "optim.max_update=3", run_dir=run))
    assert resumed.num_updates == 2
    resumed.fit()
    assert load_checkpoint(run / ckpt.LAST)["num_updates"] == 3
