"""Plain helpers the test modules share: `from helpers import make_trainer, records`.

setup.cfg puts tests/ on sys.path (`pythonpath = tests`), so this module imports under
`--import-mode=importlib` like any other; fixtures (which need a corpus or tmp_path) stay in
conftest.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "configs")
TRAIN_SCRIPT = str(REPO / "scripts" / "train.py")


def make_trainer(cfg):
    """The Trainer of `cfg` with the task `cfg.task` configures, as the CLI builds it."""
    from wav2vec2.tasks import build_task
    from wav2vec2.train.trainer import Trainer

    return Trainer(cfg, build_task(cfg))


def compose_cfg(config_name: str, overrides: list[str]):
    """A preset with Hydra overrides, as the CLI composes it, as a `TrainConfig`."""
    from hydra import compose, initialize_config_dir

    from wav2vec2.train.cli import register_configs, to_train_config

    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    return to_train_config(cfg)


def script_env() -> dict[str, str]:
    """The environment of a script run from the repository: one thread, the package on the
    path, and errors printed as users see them (no W2V_DEBUG tracebacks)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("W2V_DEBUG", None)
    return env


def run_train_script(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python scripts/train.py ARGS` in a fresh process, as users run it."""
    proc = subprocess.run([sys.executable, TRAIN_SCRIPT, *args], capture_output=True, text=True,
                          env=script_env(), timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def torchrun_train(*args: str, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=NPROC scripts/train.py ARGS` on a free port, as users launch a
    multi-process run (gloo on a CPU); fails the test with the output's tail unless it exits 0."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                           "--master_port", str(free_port()), TRAIN_SCRIPT, *args],
                          env=script_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def torchrun_resumes_exactly(tmp_path: Path, *args: str) -> tuple[dict, dict]:
    """`torchrun_train(ARGS)` twice: straight through, and stopped at update 2 then rerun. Asserts
    that both end with the same weights and logged the same losses, bit for bit; returns both
    last checkpoints (straight, resumed)."""
    from wav2vec2.files import load_checkpoint
    from wav2vec2.train import checkpoint as ckpt

    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    torchrun_train(*args, f"run_dir={straight}")
    torchrun_train(*args, f"run_dir={stopped}", "train.stop_at_update=2")
    torchrun_train(*args, f"run_dir={stopped}")
    a, b = load_checkpoint(straight / ckpt.LAST), load_checkpoint(stopped / ckpt.LAST)
    assert_same_weights(a["model"], b["model"])
    assert [r["loss"] for r in records(straight)] == [r["loss"] for r in records(stopped)]
    return a, b


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a process group's store)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same_weights(a: dict, b: dict) -> None:
    """Two state dicts hold the same names and the same tensors, bit for bit."""
    import torch

    assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


# ---------------------------------------------------------------- a run's metrics.jsonl
def records(run: Path, split: str = "train") -> list[dict]:
    """The logged rows of one split ("train" or "valid") of a finished run."""
    rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == split]


def logged_updates(run: Path) -> list[int]:
    """The train updates a run (possibly still writing, or killed mid-line) has logged."""
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return [r["num_updates"] for r in rows if r["split"] == "train"]


def losses_by_update(run: Path) -> dict[int, float]:
    """update -> train loss; each update must have been logged once (a resume re-logs none)."""
    train = records(run)
    assert len(train) == len({r["num_updates"] for r in train}), "an update was logged twice"
    return {r["num_updates"]: r["loss"] for r in train}


# ---------------------------------------------------------------- processes
def processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, fields of /proc/PID/stat after the command name) of every live process: [0] is
    the state, [1] the parent pid, [2] the process group."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            yield int(entry), stat.rsplit(")", 1)[1].split()
