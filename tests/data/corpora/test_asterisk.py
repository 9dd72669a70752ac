from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from wav2vec2.data import RawAudioDataset, read_manifest, synth_utterance
from wav2vec2.data.corpora.asterisk import decode_g722, prepare_asterisk, read_transcripts


def test_read_transcripts(tmp_path):
    path = tmp_path / "core-sounds-en.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("; Core Asterisk Sounds in English\n\nactivated: Activated.\ndigits/5: five\n")
    assert read_transcripts(str(path)) == {"activated": "Activated.", "digits/5": "five"}


def test_g722_decode_round_trip(tmp_path):
    G722 = pytest.importorskip("G722")
    x = synth_utterance(16000, sample_rate=16000, rng=np.random.default_rng(0))
    pcm = (x * 32767).astype(np.int16)
    (tmp_path / "a.g722").write_bytes(bytes(G722.G722(16000, 64000).encode(pcm)))
    y = decode_g722(str(tmp_path / "a.g722")).astype(np.float32) / 32768
    assert len(y) == len(x) == 2 * os.path.getsize(tmp_path / "a.g722")
    # The codec delays by a few samples; the best-aligned copy must match closely.
    best = max(np.corrcoef(x[: len(x) - d], y[d:])[0, 1] for d in range(40))
    assert best > 0.95


@pytest.mark.slow
def test_prepare_asterisk_real(tmp_path):
    summary = prepare_asterisk(str(tmp_path / "ast"))
    total = sum(n for n, _ in summary.per_language.values())
    hours = sum(s for _, s in summary.per_language.values()) / 3600
    assert set(summary.per_language) == {"en", "es", "fr", "it", "ru"}
    assert 2400 < total < 2900 and 1.5 < hours < 2.3
    for split in ("train", "valid"):
        _, entries = read_manifest(tmp_path / "ast" / f"{split}.tsv")
        ltr = (tmp_path / "ast" / f"{split}.ltr").read_text().splitlines()
        wrd = (tmp_path / "ast" / f"{split}.wrd").read_text().splitlines()
        assert len(entries) == len(ltr) == len(wrd) > 0
    ds = RawAudioDataset(tmp_path / "ast" / "valid.tsv")
    rms = [ds[i]["source"].pow(2).mean().sqrt().item() for i in range(0, len(ds), 10)]
    assert 0.03 < np.median(rms) < 0.5  # real speech level, not silence or noise
