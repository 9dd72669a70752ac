"""Shared fixtures: small synthetic corpora (with transcripts for CTC) and composed presets."""

from __future__ import annotations

from pathlib import Path

import pytest

from wav2vec2.data import write_manifest, write_synthetic_corpus
from wav2vec2.config import TrainConfig

from helpers import REPO, compose_cfg, run_train_script


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

    from wav2vec2.data.labels import letters

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


def tiny_cfg(corpus: Path, run_dir: Path, *overrides: str) -> TrainConfig:
    """The tiny preset on the synthetic corpus, without TensorBoard (faster)."""
    return compose_cfg(
        "tiny",
        [f"data.manifest_dir={corpus}", f"run_dir={run_dir}", "logging.tensorboard=false", *overrides],
    )


# Fixtures hand out what needs a corpus or tmp_path. Plain helpers live in tests/helpers.py,
# which test modules import (`from helpers import ...`; setup.cfg puts tests/ on sys.path):
# conftest.py itself is not importable under --import-mode=importlib. `compose_preset` and
# `train_script` predate helpers.py and stay for the tests that take them as fixtures.
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


@pytest.fixture(scope="session")
def class_corpus(tiny_corpus: Path) -> Path:
    """`tiny_corpus` with class labels (`train.lbl`, `valid.lbl`): its speaker directories,
    spk0..spk2, one name per manifest line. What classification reads."""
    from wav2vec2.data import read_manifest

    for split in ("train", "valid"):
        _, entries = read_manifest(tiny_corpus / f"{split}.tsv")
        (tiny_corpus / f"{split}.lbl").write_text("".join(rel.split("/")[0] + "\n" for rel, _ in entries))
    return tiny_corpus
