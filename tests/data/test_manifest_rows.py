"""The manifest extensions: segment rows (read by seeking) and several roots, each with its
fairseq-compatible side (one root of whole files stays fairseq's format byte for byte)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from wav2vec2.data import (
    Dictionary,
    LabelledAudioDataset,
    Manifest,
    RawAudioDataset,
    Row,
    build_manifest,
    merge_manifests,
    read_manifest,
    read_rows,
    write_rows,
)
from wav2vec2.data.dataset import BadAudioFile
from wav2vec2.data.manifest_cli import main as manifest_main

from helpers import make_trainer, records

RATE = 16000


def _ramp_file(path, seconds: float, ext: str = "flac") -> np.ndarray:
    """A file whose samples tell where they are: sample i is (i % 1000) / 1000 - 0.5, so a
    segment read from the wrong place cannot pass for the right one."""
    n = int(seconds * RATE)
    wav = ((np.arange(n) % 1000) / 1000 - 0.5).astype(np.float32)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, wav, RATE, subtype="PCM_16")
    return sf.read(path, dtype="float32")[0]  # as stored (16-bit)


def test_segment_rows_read_their_span_by_seeking(tmp_path, monkeypatch) -> None:
    full = _ramp_file(tmp_path / "long" / "talk.flac", 5.0)
    rows = [Row("talk.flac", 16000, start=0), Row("talk.flac", 24000, start=30500), Row("talk.flac", 8000,
                                                                                        start=72000)]
    write_rows(tmp_path / "seg.tsv", Manifest([str(tmp_path / "long")], rows))
    assert (tmp_path / "seg.tsv").read_text().splitlines()[2] == "talk.flac\t24000\tstart=30500"
    reads = []
    real_read = sf.SoundFile.read
    monkeypatch.setattr(sf.SoundFile, "read", lambda self, frames=-1, **kw: reads.append(frames) or
                        real_read(self, frames, **kw))
    ds = RawAudioDataset(tmp_path / "seg.tsv")
    assert list(ds.sizes) == [16000, 24000, 8000]
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(ds[i]["source"].numpy(), full[row.start:row.start + row.num_samples])
    assert reads == [16000, 24000, 8000]  # each read asks for its span only, never the whole file


def test_a_segment_past_the_end_is_a_bad_file_naming_its_line(tmp_path) -> None:
    _ramp_file(tmp_path / "a.flac", 1.0)
    write_rows(tmp_path / "seg.tsv", Manifest([str(tmp_path)], [Row("a.flac", 8000, start=12000)]))
    with pytest.raises(BadAudioFile, match=r"seg.tsv:2\): segment \[12000, 20000\) ends past the file's 16000"):
        RawAudioDataset(tmp_path / "seg.tsv")[0]


def test_several_roots_read_as_one_corpus_and_labels_stay_line_aligned(tmp_path) -> None:
    disk1, disk2 = tmp_path / "disk1", tmp_path / "disk2"
    a = _ramp_file(disk1 / "spk1" / "a.flac", 1.0)
    b = _ramp_file(disk2 / "spk2" / "b.wav", 1.5, ext="wav")
    manifest = Manifest([str(disk1), str(disk2)],
                        [Row("spk1/a.flac", len(a)), Row("spk2/b.wav", len(b), root=1),
                         Row("spk2/b.wav", 4000, start=1000, root=1)])
    write_rows(tmp_path / "train.tsv", manifest)
    assert (tmp_path / "train.tsv").read_text().splitlines() == [
        str(disk1), str(disk2), f"spk1/a.flac\t{len(a)}", f"spk2/b.wav\t{len(b)}\troot=1",
        "spk2/b.wav\t4000\tstart=1000\troot=1"]
    assert read_rows(tmp_path / "train.tsv") == manifest
    (tmp_path / "train.ltr").write_text("A B |\nB |\nA |\n")
    dictionary = Dictionary.from_symbols(["A", "B", "|"])
    ds = LabelledAudioDataset(tmp_path / "train.tsv", labels_path=tmp_path / "train.ltr", dictionary=dictionary)
    items = [ds[i] for i in range(3)]
    np.testing.assert_array_equal(items[0]["source"].numpy(), a)
    np.testing.assert_array_equal(items[1]["source"].numpy(), b)
    np.testing.assert_array_equal(items[2]["source"].numpy(), b[1000:5000])
    assert [" ".join(dictionary.symbols[i] for i in it["target"].tolist()) for it in items] == ["A B |", "B |", "A |"]
    with pytest.raises(ValueError, match="segment rows or several roots"):
        read_manifest(tmp_path / "train.tsv")  # tools that read whole files under one root say so


def test_build_manifest_over_two_disks(tmp_path) -> None:
    _ramp_file(tmp_path / "disk1" / "x" / "a.flac", 0.5)
    _ramp_file(tmp_path / "disk2" / "y" / "b.flac", 0.7)
    summary = build_manifest([str(tmp_path / "disk1"), str(tmp_path / "disk2")], str(tmp_path / "m"),
                             exts=["flac"], valid_percent=0)
    manifest = read_rows(tmp_path / "m" / "train.tsv")
    assert manifest.roots == [os.path.realpath(tmp_path / "disk1"), os.path.realpath(tmp_path / "disk2")]
    assert manifest.rows == [Row("x/a.flac", 8000), Row("y/b.flac", 11200, root=1)]
    assert summary.num_train == 2
    # One disk: fairseq's format, which fairseq's reader (two columns, one root) takes.
    build_manifest(str(tmp_path / "disk2"), str(tmp_path / "m1"), exts=["flac"], valid_percent=0)
    assert (tmp_path / "m1" / "train.tsv").read_text() == f"{os.path.realpath(tmp_path / 'disk2')}\ny/b.flac\t11200\n"


def test_merged_manifests_read_every_row_from_its_own_root(tmp_path, capsys) -> None:
    """Two corpora (one of them already two roots, one root shared) as one manifest: each
    row reads the same samples as from its own manifest, in order, and the CLI writes it."""
    a = _ramp_file(tmp_path / "nl" / "x" / "a.flac", 0.5)
    b = _ramp_file(tmp_path / "en" / "b.flac", 0.7)
    c = _ramp_file(tmp_path / "fr" / "c.flac", 0.3)
    write_rows(tmp_path / "nl.tsv", Manifest([str(tmp_path / "nl")], [Row("x/a.flac", len(a))]))
    write_rows(tmp_path / "two.tsv", Manifest([str(tmp_path / "en"), str(tmp_path / "nl")],
                                              [Row("b.flac", len(b)), Row("x/a.flac", 2000, start=100, root=1),
                                               Row(str(tmp_path / "fr" / "c.flac"), len(c))]))
    merged = merge_manifests([tmp_path / "nl.tsv", tmp_path / "two.tsv"])
    assert merged.roots == [str(tmp_path / "nl"), str(tmp_path / "en")]  # the shared root once
    assert [(r.path, r.root, r.start) for r in merged.rows] == [
        ("x/a.flac", 0, None), ("b.flac", 1, None), ("x/a.flac", 0, 100), (str(tmp_path / "fr" / "c.flac"), 1, None)]
    assert manifest_main(["--merge", str(tmp_path / "m.tsv"), str(tmp_path / "nl.tsv"), str(tmp_path / "two.tsv")]) == 0
    assert "4 rows under 2 root(s)" in capsys.readouterr().out
    assert read_rows(tmp_path / "m.tsv") == merged
    ds = RawAudioDataset(tmp_path / "m.tsv")
    for item, expected in zip((ds[i]["source"].numpy() for i in range(4)), (a, b, a[100:2100], c)):
        np.testing.assert_array_equal(item, expected)
    assert manifest_main(["--merge", str(tmp_path / "m2.tsv"), str(tmp_path / "missing.tsv")]) == 2
    assert "missing.tsv" in capsys.readouterr().err and not (tmp_path / "m2.tsv").exists()


@pytest.mark.parametrize(("body", "line", "what"), [
    ("/r\n/other\na.flac\t100\n", 2, "reads as root 1, which no row names"),
    ("/r\na.flac\t100\troot=1\n", 2, "has 1 root line"),
    ("/r\na.flac\t100\toffset=3\n", 2, "expected start=SAMPLE or root=INDEX"),
    ("/r\na.flac\t100\tstart=-3\n", 2, "expected start=SAMPLE or root=INDEX"),
    ("/r\na.flac\t100\nrelative/not/a/root\n", 3, "expected 'relative/path<TAB>num_samples'"),
])
def test_malformed_extensions_name_their_line(tmp_path, body: str, line: int, what: str) -> None:
    (tmp_path / "m.tsv").write_text(body)
    with pytest.raises(ValueError, match=rf"m.tsv:{line}: .*{what}"):
        read_rows(tmp_path / "m.tsv")


def test_a_segment_and_multi_root_manifest_trains(tiny_corpus, make_tiny_cfg, tmp_path) -> None:
    """The tiny preset trains on a manifest of segments of long files on a second disk beside
    whole files on the first: every item is read (none bad), the loss is finite."""
    train = read_rows(tiny_corpus / "train.tsv")
    disk2 = tmp_path / "disk2"
    rows = list(train.rows)
    for k in range(3):  # long recordings on another root, trained on as 1 s spans
        _ramp_file(str(disk2 / f"long{k}.flac"), 4.0)
        rows += [Row(f"long{k}.flac", RATE, start=s * RATE, root=1) for s in range(4)]
    manifest_dir = tmp_path / "m"
    manifest_dir.mkdir()
    write_rows(manifest_dir / "train.tsv", Manifest([train.roots[0], str(disk2)], rows))
    (manifest_dir / "valid.tsv").write_text((tiny_corpus / "valid.tsv").read_text())
    trainer = make_trainer(make_tiny_cfg(f"data.manifest_dir={manifest_dir}", "optim.max_update=4",
                                         "train.validate_every=0", "logging.log_every=1"))
    trainer.fit()
    losses = [r["loss"] for r in records(trainer.cfg.run_dir)]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert len(trainer.stream.sampler.sizes) == len(train.rows) + 12
