"""Fixtures for the trainer tests: a small synthetic corpus and composed tiny configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from wav2vec2.data import write_manifest, write_synthetic_corpus
from wav2vec2.train.config import TrainConfig, register_configs, to_train_config

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = str(REPO / "configs")
TRAIN_SCRIPT = str(REPO / "scripts" / "train.py")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 train + 4 valid synthetic clips of 0.5-1.5 s: about 7 tiny batches per epoch."""
    root = tmp_path_factory.mktemp("corpus")
    entries = write_synthetic_corpus(root / "audio", num_files=24, min_seconds=0.5, max_seconds=1.5)
    write_manifest(root / "train.tsv", str(root / "audio"), entries[:20])
    write_manifest(root / "valid.tsv", str(root / "audio"), entries[20:])
    return root


def compose_cfg(config_name: str, overrides: list[str]) -> TrainConfig:
    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    return to_train_config(cfg)


def tiny_cfg(corpus: Path, run_dir: Path, *overrides: str) -> TrainConfig:
    """The tiny preset on the synthetic corpus, without TensorBoard (faster)."""
    return compose_cfg(
        "tiny",
        [f"data.manifest_dir={corpus}", f"run_dir={run_dir}", "logging.tensorboard=false", *overrides],
    )


def run_train_script(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python scripts/train.py ARGS` in a fresh process, as users run it."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, TRAIN_SCRIPT, *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


# Test modules cannot import this file under --import-mode=importlib: the helpers above are
# handed out as fixtures instead.
@pytest.fixture
def compose_preset():
    return compose_cfg


@pytest.fixture
def make_tiny_cfg(tiny_corpus: Path, tmp_path: Path):
    def make(*overrides: str, run_dir: Path | None = None) -> TrainConfig:
        return tiny_cfg(tiny_corpus, run_dir or tmp_path / "run", *overrides)

    return make


@pytest.fixture
def train_script():
    return run_train_script
