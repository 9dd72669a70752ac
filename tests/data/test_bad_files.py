"""`bad_files="skip"`: corrupt files found while reading are replaced deterministically
and reported in `batch["bad_files"]`; `"error"` stops at the first, naming it."""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from wav2vec2.data import (
    Dictionary,
    LabelledAudioDataset,
    RawAudioDataset,
    TokenBudgetBatchSampler,
    build_dataloader,
    write_manifest,
    write_synthetic_corpus,
)
from wav2vec2.data.dataset import BadAudioFile

NUM_FILES = 40


def _garbage(path, n):
    size = os.path.getsize(path)
    open(path, "wb").write(np.random.default_rng(0).bytes(size))


def _truncate(path, n):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _shorter(path, n):  # replaced by a valid file of another length
    sf.write(path, np.zeros(n // 2, np.float32), 16000, format="FLAC", subtype="PCM_16")


def _empty(path, n):
    open(path, "wb").close()


def _no_samples(path, n):
    sf.write(path, np.zeros(0, np.float32), 16000, format="WAV", subtype="PCM_16")


def _wrong_rate(path, n):
    sf.write(path, np.zeros(n, np.float32), 8000, format="FLAC", subtype="PCM_16")


def _nan(path, n):
    wav = np.zeros(n, np.float32)
    wav[n // 3] = np.nan
    sf.write(path, wav, 16000, format="WAV", subtype="FLOAT")  # libsndfile reads by content, not name


def _inf(path, n):
    wav = np.zeros(n, np.float32)
    wav[-1] = np.inf
    sf.write(path, wav, 16000, format="WAV", subtype="FLOAT")


def _delete(path, n):
    os.remove(path)


# Manifest entry -> corruption, about 5% of the files each way; 20-22 are neighbours, so
# some replacements must skip a bad candidate too.
CORRUPT = {3: _garbage, 20: _garbage, 7: _truncate, 21: _shorter, 11: _empty, 22: _no_samples,
           14: _wrong_rate, 29: _wrong_rate, 17: _nan, 33: _inf, 25: _delete, 38: _delete}
REASONS = {_garbage: "cannot read audio", _truncate: "", _shorter: "manifest says", _empty: "empty file",
           _no_samples: "empty (0 samples)", _wrong_rate: "sample rate 8000 Hz", _nan: "non-finite",
           _inf: "non-finite", _delete: "not found"}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """(clean manifest, corrupted manifest): the same entries over two copies of the audio."""
    tmp = tmp_path_factory.mktemp("bad_files")
    entries = write_synthetic_corpus(tmp / "clean", num_files=NUM_FILES, min_seconds=0.2, max_seconds=0.6, seed=5)
    shutil.copytree(tmp / "clean", tmp / "bad")
    for i, corrupt in CORRUPT.items():
        rel, n = entries[i]
        corrupt(str(tmp / "bad" / rel), n)
    write_manifest(tmp / "clean.tsv", str(tmp / "clean"), entries)
    write_manifest(tmp / "bad.tsv", str(tmp / "bad"), entries)
    # A transcript per file that names it, so a replacement's own is recognisable.
    symbols = "ABCDEFGHIJ"
    lines = [" ".join(symbols[int(d)] for d in f"{i:02d}") + " |\n" for i in range(NUM_FILES)]
    (tmp / "clean.ltr").write_text("".join(lines))
    (tmp / "bad.ltr").write_text("".join(lines))
    (tmp / "dict.ltr.txt").write_text("".join(f"{s} 1\n" for s in symbols + "|"))
    return tmp / "clean.tsv", tmp / "bad.tsv"


def _bad_described(ds):
    return {ds.describe(i) for i in CORRUPT}


def _epoch(ds, workers, seed=1):
    sampler = TokenBudgetBatchSampler(ds.sizes, max_tokens=12_000, required_batch_size_multiple=1, seed=seed,
                                      drop_last=False)
    sampler.set_epoch(1)
    return list(build_dataloader(ds, sampler, seed=seed, num_workers=workers))


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k], k


@pytest.mark.parametrize("pad", [False, True], ids=["pretrain", "finetune"])
def test_skip_replaces_and_reports_each_bad_file_once(corpora, pad):
    clean_tsv, bad_tsv = corpora
    kw = dict(max_sample_size=None if pad else 6000, pad=pad)
    ds = RawAudioDataset(bad_tsv, bad_files="skip", **kw)
    clean = _epoch(RawAudioDataset(clean_tsv, **kw), 0)
    runs = [_epoch(ds, 0), _epoch(ds, 0), _epoch(ds, 2)]
    for run in runs[1:]:  # deterministic, also across worker processes
        assert len(run) == len(runs[0])
        for a, b in zip(runs[0], run):
            _same(a, b)

    batches = runs[0]
    reported = [line for b in batches for line in b.get("bad_files", [])]
    assert len(reported) == len(CORRUPT)
    by_file = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in reported}
    assert set(by_file) == _bad_described(ds)
    for i, corrupt in CORRUPT.items():
        assert REASONS[corrupt] in by_file[ds.describe(i)]

    assert len(batches) == len(clean)
    num_dirty = 0
    for b, c in zip(batches, clean):
        if "bad_files" not in b:
            _same(b, c)  # untouched batches are exactly the clean corpus' ones
            continue
        num_dirty += 1
        ids = b["id"].tolist()
        assert not set(ids) & set(CORRUPT)  # replacements are good files
        assert len(ids) == len(c["id"]) and len(b["bad_files"]) == len(set(c["id"].tolist()) & set(CORRUPT))
    assert 0 < num_dirty < len(batches)

    # Replacements keep the batch's shape: as long or longer when cropping (the batch is
    # cropped to its shortest), as short or shorter when padding, else the nearest.
    good = np.array([j for j in range(len(ds)) if j not in CORRUPT])
    for i in CORRUPT:
        j = ds[i]["id"]
        fit = ds.sizes[good] <= ds.sizes[i] if pad else ds.sizes[good] >= ds.sizes[i]
        if fit.any():
            assert j in good[fit]
        else:
            assert abs(ds.sizes[j] - ds.sizes[i]) == np.abs(ds.sizes[good] - ds.sizes[i]).min()


def test_skip_labelled_replacement_carries_its_own_transcript(corpora):
    _, bad_tsv = corpora
    d = Dictionary.load(bad_tsv.parent / "dict.ltr.txt")
    ds = LabelledAudioDataset(bad_tsv, labels_path=bad_tsv.with_suffix(".ltr"), dictionary=d, bad_files="skip")
    seen_bad = 0
    for b in _epoch(ds, 2):
        seen_bad += len(b.get("bad_files", []))
        for row, i in enumerate(b["id"].tolist()):
            got = b["target"][row, : b["target_lengths"][row]].tolist()
            assert got == ds.labels[i]  # `id` is the replacement's, and so is the transcript
    assert seen_bad == len(CORRUPT)


@pytest.mark.parametrize("workers", [0, 2])
def test_error_stops_at_first_bad_file_naming_it(corpora, workers):
    _, bad_tsv = corpora
    ds = RawAudioDataset(bad_tsv, max_sample_size=6000)  # "error" is the default
    # Batches are shuffled: the first bad file met is one of them, named with its line.
    pattern = "|".join(re.escape(s) for s in _bad_described(ds))
    with pytest.raises(BadAudioFile, match=pattern):
        _epoch(ds, workers)
    with pytest.raises(FileNotFoundError, match=re.escape(f"bad.tsv:{25 + 2}")):  # still a FileNotFoundError
        ds[25]


def test_every_candidate_bad_is_a_clear_error(tmp_path):
    entries = write_synthetic_corpus(tmp_path / "a", num_files=3, min_seconds=0.1, max_seconds=0.2)
    write_manifest(tmp_path / "m.tsv", str(tmp_path / "a"), entries)
    shutil.rmtree(tmp_path / "a")
    ds = RawAudioDataset(tmp_path / "m.tsv", bad_files="skip")
    with pytest.raises(BadAudioFile, match=r"m\.tsv:3\) is bad, and so are the 2 files tried"):
        ds[1]


def test_policy_is_checked(make_tiny_cfg):
    with pytest.raises(ValueError, match="bad_files"):
        RawAudioDataset("unused.tsv", bad_files="ignore")
    with pytest.raises(ValueError, match="data.bad_files must be error or skip"):
        make_tiny_cfg("data.bad_files=ignore")
    assert make_tiny_cfg("data.bad_files=skip").data.bad_files == "skip"


def test_training_skips_bad_files_end_to_end(compose_preset, tmp_path):
    """The tiny preset on a corpus with bad train and valid files runs to the end and lists
    the bad files it met in the run directory."""
    from wav2vec2.tasks import build_task
    from wav2vec2.train.trainer import Trainer

    entries = write_synthetic_corpus(tmp_path / "audio", num_files=24, min_seconds=0.5, max_seconds=1.5)
    write_manifest(tmp_path / "train.tsv", str(tmp_path / "audio"), entries[:20])
    write_manifest(tmp_path / "valid.tsv", str(tmp_path / "audio"), entries[20:])
    for i, corrupt in ((2, _garbage), (9, _nan), (15, _delete), (21, _wrong_rate)):
        corrupt(str(tmp_path / "audio" / entries[i][0]), entries[i][1])
    cfg = compose_preset("tiny", [f"data.manifest_dir={tmp_path}", f"run_dir={tmp_path / 'run'}",
                                  "logging.tensorboard=false", "data.bad_files=skip", "optim.max_update=8",
                                  "checkpoint.save_every=100"])
    trainer = Trainer(cfg, build_task(cfg))
    metrics = trainer.fit()
    assert trainer.num_updates == 8 and np.isfinite(metrics["loss"])
    listed = (tmp_path / "run" / "bad_files.rank0.txt").read_text().splitlines()
    bad = {f"{tmp_path / 'audio' / entries[i][0]}" for i in (2, 9, 15, 21)}
    assert {line.split(" (", 1)[0] for line in listed} == bad  # 8 updates are more than an epoch


class _Hangs(RawAudioDataset):
    """Reading item 0 never returns: a file on a dead network mount."""

    def _load(self, index):
        if index == 0:
            import time

            time.sleep(60)
        return super()._load(index)


@pytest.mark.slow  # the hung worker is waited for at shutdown
def test_a_hung_worker_ends_in_an_error_not_a_hang(corpora):
    clean, _ = corpora
    ds = _Hangs(clean, sample_rate=16000)
    sampler = TokenBudgetBatchSampler(ds.sizes, max_tokens=12_000, required_batch_size_multiple=1, seed=1,
                                      drop_last=False)
    sampler.set_epoch(1)
    loader = build_dataloader(ds, sampler, seed=1, num_workers=1, timeout=2.0)
    with pytest.raises(RuntimeError, match="timed out"):
        list(loader)
