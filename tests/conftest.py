"""Shared fixtures: small synthetic corpora (with transcripts for CTC) and composed presets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from wav2vec2.data import write_manifest, write_synthetic_corpus
from wav2vec2.train.cli import register_configs, to_train_config
from wav2vec2.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
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


# Transcripts for the synthetic clips: short phrases from a small vocabulary. The audio
# is not speech, so a model can only memorise them; that is all the CTC tests need.
_WORDS = ("HI", "THE", "CAT", "DOG", "SAYS", "NO", "IT'S")


def write_transcripts(root: Path, num_train: int, num_valid: int, *, seed: int = 0) -> None:
    """`train.ltr`/`valid.ltr` (+ .wrd) line-aligned with the manifests, and dict.ltr.txt."""
    import collections

    import numpy as np

    from wav2vec2.data.corpora.asterisk import letters

    rng = np.random.default_rng(seed)
    phrases = [list(rng.choice(_WORDS, size=int(rng.integers(1, 3)))) for _ in range(num_train + num_valid)]
    for split, part in (("train", phrases[:num_train]), ("valid", phrases[num_train:])):
        (root / f"{split}.ltr").write_text("".join(letters(p) + "\n" for p in part))
        (root / f"{split}.wrd").write_text("".join(" ".join(p) + "\n" for p in part))
    counts = collections.Counter(t for p in phrases for t in letters(p).split())
    (root / "dict.ltr.txt").write_text("".join(f"{k} {v}\n" for k, v in counts.most_common()))


@pytest.fixture(scope="session")
def labelled_corpus(tiny_corpus: Path) -> Path:
    """`tiny_corpus` with transcripts: what CTC fine-tuning reads."""
    write_transcripts(tiny_corpus, 20, 4)
    return tiny_corpus


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
def make_ctc_cfg(labelled_corpus: Path, tmp_path: Path):
    """The ctc_tiny preset on the labelled synthetic corpus, without TensorBoard."""
    def make(*overrides: str, run_dir: Path | None = None) -> TrainConfig:
        return compose_cfg("ctc_tiny", [f"data.manifest_dir={labelled_corpus}", f"run_dir={run_dir or tmp_path / 'run'}",
                                        "logging.tensorboard=false", *overrides])

    return make


@pytest.fixture
def train_script():
    return run_train_script
