"""The `wav2vec2-train` command (and `scripts/train.py`): Hydra in, plain dataclasses out.

Hydra composes `configs/<config-name>.yaml` over the typed schema registered by
`register_configs()`, so unknown keys and wrong types fail before any compute; the preset
names its task (`task: pretrain`, `task: ctc`) and that task is trained:

    wav2vec2-train --config-name tiny data.manifest_dir=DIR run_dir=runs/tiny
    wav2vec2-train --config-name ctc_base_10h data.manifest_dir=DIR run_dir=runs/ft \
        task.init=runs/base/checkpoint_best.pt
    torchrun --nproc_per_node=8 scripts/train.py --config-name base_librispeech \
        data.manifest_dir=DIR run_dir=runs/base
    wav2vec2-train --config-name base_librispeech hydra/launcher=slurm -m \
        data.manifest_dir=DIR run_dir=runs/base          # SLURM via submitit

Rerunning the same command with the same run_dir resumes from its last checkpoint. Errors
a user can fix (a missing file, a bad value, an unknown key) print one line that says what
to do; W2V_DEBUG=1 shows the traceback instead.

Exit status: 0 the run reached its end; 75 (EX_TEMPFAIL, "try again") it was preempted
(SIGTERM, SIGUSR1, `train.time_limit_minutes`) and checkpointed, so a job script can
requeue on it; 130 Ctrl-C; 2 a usage mistake; 1 any other error (a bad value, a diverged
run, a checkpoint that could not be written). This is the only module of the package
that imports hydra at import time.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from wav2vec2.config import PRESETS, ModelConfig, TrainConfig, architecture
from wav2vec2.tasks import TASKS, build_task, config_from_dict
from wav2vec2.train.checkpoint import CheckpointWriteError
from wav2vec2.train.distributed import CollectiveTimeoutError
from wav2vec2.train.trainer import Trainer

# The repository's configs/ (an editable or source install); `--config-dir` adds another.
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")
_NOT_PRESETS = {"common"}  # shared defaults, not a run
EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: temporary failure, the user is invited to retry
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def register_configs() -> None:
    """Hydra's ConfigStore gets the typed schema (`train_schema`), each task's config in
    the `task` group and each model preset of `wav2vec2.config` in the `model` group, so a
    YAML's `defaults: [train_schema, task: ctc, model: base, _self_]` is type-checked and
    unknown keys fail. Model presets live only in Python: one definition each."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for name, task in TASKS.items():
        cs.store(group="task", name=name, node=task.Config)
    for name, make in PRESETS.items():
        cs.store(group="model", name=name, node=make())


def to_train_config(cfg: Any) -> TrainConfig:
    """A composed Hydra config (DictConfig) as a plain `TrainConfig`.

    Merging into a fresh copy of the schema (with the chosen task's section) rejects keys
    the schema lacks, naming them, even ones Hydra let in with a `+key=value` override.
    """
    return config_from_dict(OmegaConf.to_container(cfg, resolve=True))


# ------------------------------------------------------------------------- --help, checks
def presets(config_dir: str = CONFIG_DIR) -> dict[str, str]:
    """Preset name -> the first line of its leading comment, from `configs/*.yaml`."""
    out = {}
    for path in sorted(Path(config_dir).glob("*.yaml")):
        if path.stem in _NOT_PRESETS:
            continue
        first = next((line for line in path.read_text().splitlines() if line.startswith("#")), "#")
        out[path.stem] = first.lstrip("# ").strip()
    return out


def usage() -> str:
    names = presets()
    width = max(map(len, names))
    lines = [
        "usage: scripts/train.py --config-name PRESET data.manifest_dir=DIR run_dir=DIR [key=value ...]",
        "",
        "Trains what the preset names: wav2vec 2.0 pretraining, CTC fine-tuning (task.init=CHECKPOINT), or a",
        "probe of a frozen model (probe_ctc_*, classify_*: task.init=MODEL; scripts/probe.py runs many).",
        "Rerunning with the same run_dir resumes from its last checkpoint; Ctrl-C saves one and stops.",
        "",
        "presets (configs/):",
        *(f"  {name:<{width}}  {text}" for name, text in names.items()),
        "",
        "Any field can be set as key=value (optim.lr=2e-4, model=large, task.freeze_finetune_updates=0).",
        "Every field is documented where it is declared: wav2vec2/config/training.py (data, optim, ...),",
        "wav2vec2/config/model.py (model), wav2vec2/tasks/pretrain.py, ctc.py and classify.py (task).",
        "--cfg job prints the composed config; --hydra-help shows Hydra's own options.",
    ]
    return "\n".join(lines)


def _known_keys() -> set[str]:
    """Every dotted config key a command line may set (task keys of every task)."""
    def walk(cls: Any, prefix: str) -> set[str]:
        keys = set()
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                keys |= walk(type(default), f"{prefix}{f.name}.")
            else:
                keys.add(prefix + f.name)
        return keys

    keys = walk(TrainConfig, "") - {"task"}
    for task in TASKS.values():
        keys |= walk(task.Config, "task.")
    return keys


def check_overrides(args: list[str]) -> str | None:
    """An error message for the first `key=value` argument whose key is not a config field
    (with the closest real one), or whose preset name does not exist; None if all are fine."""
    keys = _known_keys()
    problem = _check_preset(args)
    if problem:
        return problem
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key.startswith("hydra") or "/" in key:
            continue  # Hydra's own settings and groups (hydra/launcher=slurm)
        if key in ("model", "task"):
            names = PRESETS if key == "model" else TASKS
            if value not in names:
                return f"{key}={value}: no such {key}; choose one of {', '.join(sorted(names))}"
            continue
        if key not in keys:
            close = difflib.get_close_matches(key, sorted(keys), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            return (f"{key} is not a config field{hint} (fields are documented in wav2vec2/config/training.py, "
                    "wav2vec2/config/model.py and wav2vec2/tasks/; see --help)")
    return None


def architecture_overrides(args: list[str]) -> tuple[str, ...]:
    """The architecture fields (dotted, under `model.`) that `key=value` arguments set: each
    `model.FIELD=...` that is one, and all of them for `model=PRESET`. A task whose init
    fixes the architecture refuses those that contradict it."""
    fields = list(architecture(ModelConfig()))
    found: list[str] = []
    for arg in args:
        key = arg.split("=", 1)[0].lstrip("+~") if "=" in arg and not arg.startswith("-") else ""
        if key == "model":
            found += fields
        elif key.startswith("model.") and key[len("model."):] in fields:
            found.append(key[len("model."):])
    return tuple(dict.fromkeys(found))


def _check_preset(args: list[str]) -> str | None:
    """An error message if `--config-name NAME` (or `-cn NAME`, `--config-name=NAME`) names no
    preset of configs/ (unless `--config-dir` adds another directory), with the closest one."""
    if any(a == "--config-dir" or a.startswith(("--config-dir=", "-cd")) for a in args):
        return None
    name = None
    for i, arg in enumerate(args):
        if arg in ("--config-name", "-cn") and i + 1 < len(args):
            name = args[i + 1]
        elif arg.startswith("--config-name="):
            name = arg.split("=", 1)[1]
    names = sorted(presets())
    if name is None or name.removesuffix(".yaml") in names:
        return None
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"--config-name {name}: no such preset; {hint}(presets: {', '.join(names)}; see --help)"


def _fail(message: str, code: int = 1) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


# ------------------------------------------------------------------------- entry point
register_configs()


@hydra.main(config_path=CONFIG_DIR, config_name="tiny", version_base="1.3")
def _train(cfg: DictConfig) -> None:
    try:
        train_cfg = to_train_config(cfg)
        trainer = Trainer(train_cfg, build_task(train_cfg, architecture_overrides=architecture_overrides(sys.argv[1:])))
        trainer.fit()
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", "") or str(err).split(":")[-1].strip()
        _fail(f"{key} is not set: add {key}=... to the command (see --help)", 2)
    except (FileNotFoundError, ValueError, FloatingPointError, CheckpointWriteError) as err:
        if os.environ.get("W2V_DEBUG"):
            raise
        _fail(f"{err}\n(W2V_DEBUG=1 shows the traceback)")
    except CollectiveTimeoutError as err:
        if os.environ.get("W2V_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr, flush=True)
        # Not sys.exit: tearing down a process group whose collective failed can abort the
        # process (gloo/NCCL destructors), which would hide this status.
        logging.shutdown()
        os._exit(1)
    except KeyboardInterrupt:
        if os.environ.get("W2V_DEBUG"):
            raise
        _fail("interrupted; rerun the same command to resume from the last checkpoint", EXIT_INTERRUPTED)
    if trainer.stop_reason == "preempted":
        print(f"preempted at update {trainer.num_updates}, checkpoint written: rerun the same command to resume "
              f"(exit status {EXIT_PREEMPTED})", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    if trainer.stop_reason == "interrupted":
        sys.exit(EXIT_INTERRUPTED)  # the trainer has said where it stopped and how to resume


def main() -> None:
    """`scripts/train.py` / `wav2vec2-train`: our --help and argument checks, then Hydra."""
    args = sys.argv[1:]
    if not args or {"-h", "--help"} & set(args):
        print(usage(), file=sys.stdout if args else sys.stderr)
        sys.exit(0 if args else 2)
    problem = check_overrides(args)
    if problem:
        _fail(problem, 2)
    _train()


if __name__ == "__main__":  # `python -m wav2vec2.train.cli`, as scripts/probe.py runs each probe
    main()
