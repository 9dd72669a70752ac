from __future__ import annotations

import os
import random

import numpy as np
import pytest
import soundfile as sf

from wav2vec2.data import RawAudioDataset, build_manifest, read_manifest, write_synthetic_corpus
from wav2vec2.data.manifest_cli import main as manifest_main


def _all_entries(dest):
    root, entries = read_manifest(os.path.join(dest, "train.tsv"))
    if os.path.exists(os.path.join(dest, "valid.tsv")):
        valid_root, valid = read_manifest(os.path.join(dest, "valid.tsv"))
        assert valid_root == root
        entries = entries + valid
    return root, entries


def test_round_trip_tree_to_dataset(tmp_path):
    root = tmp_path / "tree"
    flac = write_synthetic_corpus(root / "a", num_files=5, ext="flac", min_seconds=0.2, max_seconds=0.8)
    wav = write_synthetic_corpus(root / "b" / "c", num_files=4, ext="wav", min_seconds=0.2, max_seconds=0.8)
    expected = {os.path.join("a", r): n for r, n in flac} | {os.path.join("b", "c", r): n for r, n in wav}
    (root / "notes.txt").write_text("not audio")

    dest = tmp_path / "m"
    summary = build_manifest(str(root), str(dest), exts=["flac", "wav"], valid_percent=0.3, seed=1)
    man_root, entries = _all_entries(dest)
    assert man_root == os.path.realpath(root)
    assert dict(entries) == expected and len(entries) == len(expected)
    assert summary.num_train + summary.num_valid == 9 and not summary.rejected
    assert summary.seconds == pytest.approx(sum(expected.values()) / 16000)

    seen = {}
    for name in ("train.tsv", "valid.tsv"):
        ds = RawAudioDataset(dest / name)
        for i in range(len(ds)):
            seen[ds.paths[i]] = len(ds[i]["source"])
    assert seen == expected


def test_split_follows_fairseq_rule(corpus, tmp_path):
    root, files = corpus
    build_manifest(root, str(tmp_path / "m"), exts=["flac"], valid_percent=0.4, seed=7)
    rand = random.Random(7)
    want_valid = {r for r in sorted(files) if rand.random() <= 0.4}
    _, valid = read_manifest(tmp_path / "m" / "valid.tsv")
    assert {r for r, _ in valid} == want_valid
    build_manifest(root, str(tmp_path / "m2"), exts=["flac"], valid_percent=0.4, seed=7)
    assert (tmp_path / "m" / "valid.tsv").read_text() == (tmp_path / "m2" / "valid.tsv").read_text()


def test_path_must_contain(corpus, tmp_path):
    root, files = corpus
    build_manifest(root, str(tmp_path / "m"), exts=["flac"], valid_percent=0, path_must_contain="spk1")
    _, entries = read_manifest(tmp_path / "m" / "train.tsv")
    assert {r for r, _ in entries} == {r for r in files if r.startswith("spk1")}


def test_hand_written_fairseq_manifest_loads_identically(corpus, tmp_path):
    root, files = corpus
    # As fairseq writes it: root, then relpath<TAB>frames, newline-terminated.
    text = os.path.realpath(root) + "\n" + "".join(f"{r}\t{n}\n" for r, n in files.items())
    (tmp_path / "fs.tsv").write_text(text)
    build_manifest(root, str(tmp_path / "ours"), exts=["flac"], valid_percent=0)
    a, b = RawAudioDataset(tmp_path / "fs.tsv"), RawAudioDataset(tmp_path / "ours" / "train.tsv")
    assert sorted(zip(a.paths, a.sizes)) == sorted(zip(b.paths, b.sizes))
    # And ours is byte-for-byte what fairseq's format looks like (order aside).
    assert sorted((tmp_path / "ours" / "train.tsv").read_text().splitlines()) == sorted(text.splitlines())


@pytest.mark.parametrize(
    "body, line, what",
    [
        ("a.flac\t100\nb.flac 200\n", 3, "expected"),
        ("a.flac\t100\nb.flac\tabc\n", 3, "integer"),
        ("a.flac\t100\n\nb.flac\t5\n", 3, "expected"),
        ("a.flac\t100\tx\n", 2, "expected"),
        ("a.flac\t-4\n", 2, "negative"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, body, line, what):
    path = tmp_path / "bad.tsv"
    path.write_text("/data\n" + body)
    with pytest.raises(ValueError, match=rf"bad\.tsv:{line}: .*{what}"):
        read_manifest(path)


def test_empty_manifest(tmp_path):
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(ValueError, match="empty.tsv: empty manifest"):
        read_manifest(tmp_path / "empty.tsv")
    (tmp_path / "root_only.tsv").write_text("/data\n")
    assert read_manifest(tmp_path / "root_only.tsv") == ("/data", [])
    with pytest.raises(ValueError, match="root_only.tsv: manifest lists no files"):
        RawAudioDataset(tmp_path / "root_only.tsv")


def test_unreadable_and_empty_files_are_reported(corpus, tmp_path):
    root, files = corpus
    with open(os.path.join(root, "corrupt.flac"), "wb") as f:
        f.write(np.random.default_rng(0).bytes(5000))
    open(os.path.join(root, "zero_bytes.flac"), "wb").close()
    # A header-only WAV: readable, 0 frames (libsndfile cannot even open a 0-frame FLAC).
    sf.write(os.path.join(root, "no_frames.wav"), np.zeros(0, dtype=np.float32), 16000)
    summary = build_manifest(root, str(tmp_path / "m"), exts=["flac", "wav"], valid_percent=0, num_workers=2)
    rejected = {os.path.basename(p): reason for p, reason in summary.rejected}
    assert set(rejected) == {"corrupt.flac", "zero_bytes.flac", "no_frames.wav"}
    assert rejected["no_frames.wav"] == "zero samples"
    assert rejected["corrupt.flac"].startswith("unreadable")
    report = (tmp_path / "m" / "rejected.tsv").read_text().splitlines()
    assert len(report) == 3 and all("\t" in line for line in report)
    _, entries = read_manifest(tmp_path / "m" / "train.tsv")
    assert dict(entries) == files


def test_header_readers_in_parallel_write_what_one_writes(corpus, tmp_path, capsys):
    """--workers splits the header reads, with progress bars, and changes nothing written."""
    root, _ = corpus
    open(os.path.join(root, "zero_bytes.flac"), "wb").close()
    one = build_manifest(root, str(tmp_path / "one"), exts=["flac"], valid_percent=0.3, num_workers=1)
    two = build_manifest(root, str(tmp_path / "two"), exts=["flac"], valid_percent=0.3, num_workers=2, progress=True)
    assert str(one) == str(two) and len(two.rejected) == 1
    for name in ("train.tsv", "valid.tsv", "rejected.tsv"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()
    err = capsys.readouterr().err
    assert "scanning" in err and "reading headers" in err


def test_directory_without_audio(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"no audio under .*x.* flac"):
        build_manifest(str(tmp_path / "x"), str(tmp_path / "m"), exts=["flac"])
    with pytest.raises(ValueError, match="not a directory"):
        build_manifest(str(tmp_path / "missing"), str(tmp_path / "m"), exts=["flac"])


def test_cli(corpus, tmp_path, capsys):
    root, files = corpus
    code = manifest_main([root, "--dest", str(tmp_path / "m"), "--ext", "flac", "--ext", "wav",
                          "--valid-percent", "0.25", "--seed", "3", "--workers", "2"])
    assert code == 0
    out = capsys.readouterr().out
    assert f"{len(files)} files" in out and "0 rejected" in out
    _, entries = _all_entries(tmp_path / "m")
    assert dict(entries) == files
