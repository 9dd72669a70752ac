"""Where a run starts from, whether a checkpoint fits it, and restoring it.

A run resumes from the newest checkpoint of its own run directory (everything restored),
else starts from `checkpoint.continue_from` with that section's resets (the RNG streams
always restart), else starts fresh: from the weights its task built (a pretrained model's
through `task.init`), and from Adam's moments the task carries over (`Task.carried_moments`,
continued pretraining with `task.init_optimizer`). Before anything of a checkpoint is used,
it must be of this run's task, its config must fit today's schema, and its architecture must
be this run's; other model settings (dropout, masking...) may change, with a warning. What a
checkpoint holds is `Trainer.state_dict`; `load_into` puts it back.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf.errors import OmegaConfBaseException

from wav2vec2.config import CheckpointConfig, ModelConfig, architecture_differences
from wav2vec2.files import load_checkpoint
from wav2vec2.interop.loaded import kind_of_weights
from wav2vec2.interop.ours import TASK_KINDS
from wav2vec2.tasks import config_from_dict
from wav2vec2.train import checkpoint as ckpt, rng
from wav2vec2.train.optim import load_moments

log = logging.getLogger("wav2vec2.train")

CHECKPOINT_VERSION = 2
"""2: + "task", "task_state" and "best_valid_metric". Version 1 files still load."""


@dataclass(frozen=True)
class Resets:
    """What of a checkpoint is not restored."""

    optimizer: bool = False
    """Adam's moments and the fp16 loss scale."""
    schedule: bool = False
    """The update count (so the lr and Gumbel schedules) and the run's fault counts."""
    dataloader: bool = False
    """The position in the data (epoch and batches consumed)."""
    rng: bool = False
    """The RNG streams, and the best validation metric so far (another run's is no yardstick)."""

    def names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name)]


@dataclass(frozen=True)
class Start:
    """A checkpoint to start from: its file, contents and what of it not to restore."""

    path: Path
    state: dict[str, Any]
    resets: Resets


def find_start(run_dir: Path, c: CheckpointConfig) -> Start | None:
    """The newest loadable checkpoint of `run_dir` with nothing reset (a resumed run), else
    `c.continue_from` with its resets, else None (a fresh start)."""
    found = ckpt.load_latest(run_dir)
    if found is not None:
        return Start(found[0], found[1], Resets())
    if c.continue_from:
        path = Path(c.continue_from)
        resets = Resets(optimizer=c.reset_optimizer, schedule=c.reset_schedule, dataloader=c.reset_dataloader,
                        rng=True)
        return Start(path, load_checkpoint(path), resets)
    return None


def restore(trainer: Any) -> None:
    """Resume or continue `trainer` (a `Trainer`, built but not trained) from a checkpoint
    (`find_start`), or else give its optimizer the moments its task carries over."""
    start = find_start(trainer.run_dir, trainer.cfg.checkpoint)
    if start is None:
        moments = trainer.task.carried_moments()
        if moments is not None:
            count = load_moments(trainer.optimizer, trainer.model, moments, load=trainer.parallel.load_optimizer_state)
            log.info("Adam's moments of %d parameters carried over from task.init", count)
        return
    check_fits(start, task=trainer.task.name, model=trainer.cfg.model)
    load_into(trainer, start.state, start.resets)
    log.info("restored %s at update %d (resets: %s)", start.path, trainer.num_updates, start.resets.names() or "none")


def load_into(trainer: Any, state: dict[str, Any], resets: Resets) -> None:
    """Restore what `Trainer.state_dict` saved into `trainer`, but for what `resets` leaves."""
    trainer.parallel.load_model_state(state["model"])
    trainer.task.load_state_dict(state.get("task_state", {}))
    if not resets.optimizer:
        trainer.parallel.load_optimizer_state(trainer.optimizer, state["optimizer"])
        if trainer.scaler is not None and state.get("loss_scaler"):
            trainer.scaler.load_state_dict(state["loss_scaler"])
    if not resets.schedule:
        trainer.num_updates = int(state["num_updates"])
        trainer.nonfinite.total = int(state.get("nonfinite_skips", 0))
        trainer.num_bad_files = int(state.get("bad_files", 0))
    if not resets.dataloader:
        try:
            trainer.stream.load_state_dict(state["data"])
        except ValueError as err:  # other world size or batching: position is meaningless
            log.warning("cannot restore the data position (%s); starting the next epoch", err)
            trainer.stream.epoch, trainer.stream.consumed = state["data"]["epoch"] + 1, 0
    if not resets.rng:
        # version 1: "best_valid_loss"
        best = state.get("best_valid_metric", {"name": "loss", "value": state.get("best_valid_loss")})
        if best["name"] == trainer.task.best_metric and best["value"] is not None:
            trainer.best_valid = float(best["value"])
        if state.get("world_size") == trainer.dist.world_size:
            rng.set_rng_state(state["rng"][trainer.dist.rank])
        else:
            log.warning("checkpoint from %s ranks, now %s: RNG streams restart", state.get("world_size"),
                        trainer.dist.world_size)


def check_fits(start: Start, *, task: str, model: ModelConfig) -> None:
    """Raise ValueError, naming the file, unless `start` is a checkpoint of `task` whose
    config fits the schema and whose architecture is `model`'s."""
    saved = checkpoint_task(start.state, start.path)
    if saved != task:
        raise ValueError(f"{start.path} is a checkpoint of the {saved!r} task, this run is {task!r}")
    check_config(start.state, start.path)
    check_architecture(start.state, start.path, model)


def checkpoint_task(state: dict[str, Any], path: Path) -> str:
    """The task that wrote a checkpoint: its "task" field, or for a version 1 file (none)
    what its weights are (`interop.loaded.kind_of_weights`, the loader's rule): a
    `Wav2Vec2Ctc`'s or a pretraining `Wav2Vec2Model`'s. Anything else is refused."""
    if "task" in state:
        return state["task"]
    weights = state.get("model")
    kind = kind_of_weights(weights) if isinstance(weights, dict) else None
    task = {kind_: task_ for task_, kind_ in TASK_KINDS.items()}.get(kind)
    if task is None:
        raise ValueError(f"{path} names no task and its weights are neither a CTC model's (proj.weight, wav2vec2.*) "
                         "nor a pretraining model's (feature_encoder.*, quantizer.*): cannot tell which task wrote it")
    return task


def check_config(state: dict[str, Any], path: Path) -> None:
    """A checkpoint's config must fit today's schema (no unknown key, every value of its
    field's type) before anything of it is used: raise naming the key. Version 1 files
    predate the current names and are only checked on their architecture."""
    if state.get("version", 1) < 2 or "config" not in state:
        return
    try:
        config_from_dict(state["config"])
    except (OmegaConfBaseException, ValueError) as err:
        key = getattr(err, "full_key", None)
        what = f"{key}: {str(err).splitlines()[0]}" if key else str(err).splitlines()[0]
        raise ValueError(f"{path}: its config does not fit this version's schema ({what}); it was written "
                         "by another version of wav2vec2 or edited by hand") from None


def check_architecture(state: dict[str, Any], path: Path, model: ModelConfig) -> None:
    """A different architecture cannot load: raise naming the keys. Other model settings
    (dropout, masking...) may change when continuing: warn."""
    saved = state.get("config", {}).get("model")
    if saved is None:
        return
    bad = architecture_differences(saved, model)
    if bad:
        raise ValueError(f"{path} was trained with a different model architecture: "
                         f"model.{', model.'.join(bad)} differ")
    current, before = _flatten(dataclasses.asdict(model)), _flatten(saved)
    others = [k for k, v in current.items() if before.get(k, v) != v]
    if others:
        log.warning("model settings differ from %s: %s", path, ", ".join(others))


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
