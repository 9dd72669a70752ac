from __future__ import annotations

import os

import pytest

from wav2vec2.data import build_manifest, write_synthetic_corpus


@pytest.fixture
def corpus(tmp_path):
    """Nested tree of 12 short FLAC files; returns (root, {relpath: num_samples})."""
    root = tmp_path / "audio"
    written = write_synthetic_corpus(root, num_files=12, min_seconds=0.3, max_seconds=1.5, seed=3)
    return str(root), dict(written)


@pytest.fixture
def manifest(corpus, tmp_path):
    """train.tsv over every file of `corpus` (no valid split); returns its path."""
    root, _ = corpus
    build_manifest(root, str(tmp_path / "manifest"), exts=["flac"], valid_percent=0.0)
    return os.path.join(tmp_path, "manifest", "train.tsv")
