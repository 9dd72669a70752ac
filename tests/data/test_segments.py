"""Long recordings into segment manifests: equal spans from the header, energy VAD, the lines
of an alignment from scripts/align.py; the rows read back as the audio they name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wav2vec2.data import Manifest, RawAudioDataset, Row, read_rows, write_rows
from wav2vec2.data.segments import fixed_spans, main, segment_alignments, segment_manifest, speech_regions
from wav2vec2.infer.formats import AlignedLine, Alignment

RATE = 16000


def _talk(path: Path, plan: list[tuple[float, bool]], seed: int = 0) -> np.ndarray:
    """A recording of tone bursts (speech) and faint noise (pause), `plan` = [(seconds, speech)]."""
    rng = np.random.default_rng(seed)
    parts = []
    for seconds, speech in plan:
        n = int(seconds * RATE)
        t = np.arange(n) / RATE
        parts.append(0.5 * np.sin(2 * np.pi * 220 * t) if speech else 1e-3 * rng.standard_normal(n))
    wav = np.concatenate(parts).astype(np.float32)
    sf.write(path, wav, RATE, subtype="PCM_16")
    return wav


@pytest.fixture
def recordings(tmp_path: Path) -> Path:
    """Two long recordings and a broken file under one root, and their manifest."""
    root = tmp_path / "audio"
    root.mkdir()
    _talk(root / "a.wav", [(1, False), (2, True), (0.1, False), (1.5, True), (2, False), (3, True), (0.5, False)])
    _talk(root / "b.wav", [(10, True)], seed=1)
    (root / "broken.wav").write_bytes(b"RIFF not audio")
    write_rows(tmp_path / "long.tsv", Manifest([str(root)], [Row("a.wav", 160000), Row("b.wav", 160000),
                                                             Row("broken.wav", 16000)]))
    return tmp_path / "long.tsv"


def test_fixed_spans_cover_the_file_in_equal_pieces() -> None:
    assert fixed_spans(10, max_len=4, min_len=1) == [(0, 3), (3, 3), (6, 4)]
    assert fixed_spans(10, max_len=4, min_len=1, offset=100) == [(100, 3), (103, 3), (106, 4)]
    assert fixed_spans(3, max_len=4, min_len=4) == [] and fixed_spans(0, max_len=4, min_len=1) == []
    spans = fixed_spans(160_003, max_len=48_000, min_len=1)
    assert sum(n for _, n in spans) == 160_003 and max(n for _, n in spans) <= 48_000
    assert all(a + n == b for (a, n), (b, _) in zip(spans, spans[1:]))


def test_vad_finds_the_speech_and_joins_short_pauses(recordings: Path) -> None:
    path = str(Path(read_rows(recordings).roots[0]) / "a.wav")
    regions, rate = speech_regions(path, threshold_db=-35, min_pause=0.3)
    assert rate == RATE
    frame = int(0.03 * RATE)
    expected = [(1.0, 4.6), (6.6, 9.6)]  # the 0.1 s pause is joined, the 2 s one is not
    assert len(regions) == len(expected)
    for (start, n), (a, b) in zip(regions, expected):
        assert abs(start - a * RATE) <= frame and abs(start + n - b * RATE) <= frame
    split, _ = speech_regions(path, threshold_db=-35, min_pause=0.05)
    assert len(split) == 3


def test_segment_manifest_rows_read_back_as_the_spans(recordings: Path, tmp_path: Path, capsys) -> None:
    dest = tmp_path / "seg.tsv"
    counts = segment_manifest(recordings, dest, max_seconds=4, min_seconds=1, threshold_db=-35)
    assert counts == {"files": 3, "segments": 5, "no_segment": 0, "unreadable": 1}
    assert "broken.wav: unreadable" in capsys.readouterr().err
    manifest = read_rows(dest)
    assert [r.path for r in manifest.rows] == ["a.wav"] * 2 + ["b.wav"] * 3  # 3.6 s, 3 s; 10 s in three
    assert all(r.num_samples <= 4 * RATE for r in manifest.rows)
    whole = sf.read(Path(manifest.roots[0]) / "a.wav", dtype="float32")[0]
    ds = RawAudioDataset(dest)
    for i, row in enumerate(manifest.rows[:2]):
        torch.testing.assert_close(ds[i]["source"], torch.from_numpy(whole[row.start:row.start + row.num_samples]))
    parallel = tmp_path / "parallel.tsv"
    assert segment_manifest(recordings, parallel, max_seconds=4, min_seconds=1, threshold_db=-35,
                            num_workers=2) == counts
    assert parallel.read_text() == dest.read_text()
    by_length = segment_manifest(recordings, tmp_path / "len.tsv", max_seconds=4, min_seconds=1)
    assert by_length["segments"] == 6  # no decoding: 10 s and 10 s in three spans each


def _alignment(path: Path, lines: list[tuple[str, float | None, float | None, float | None]]) -> dict:
    """What scripts/align.py writes for `path` (formats.Alignment, the writer's own type)."""
    aligned = [AlignedLine(text, start, end, score, line=k) for k, (text, start, end, score) in enumerate(lines, 1)]
    return Alignment(file=str(path), duration=10.0, lines=aligned).to_dict()


def test_alignment_lines_become_rows_with_their_text(recordings: Path, tmp_path: Path, capsys) -> None:
    audio = Path(read_rows(recordings).roots[0])
    lines = [("HELLO  THERE", 1.0, 3.0, 0.9), ("not found", None, None, None), ("MUMBLE", 3.05, 4.6, 0.2),
             ("AND THEN", 6.6, 9.6, 0.8)]
    (tmp_path / "a.json").write_text(json.dumps(_alignment(audio / "a.wav", lines)))
    b = [json.dumps(_alignment(audio / "b.wav", [("B ONE", 0.5, 2.0, 0.7), ("B LONG", 2.2, 10.0, 0.95)])),
         json.dumps({"file": str(audio / "broken.wav"), "error": "cannot read audio"})]  # align.py's failure row
    (tmp_path / "b.jsonl").write_text("\n".join(b) + "\n")
    dest = tmp_path / "aligned.tsv"
    counts = segment_alignments([tmp_path / "a.json", tmp_path / "b.jsonl"], dest, max_seconds=7,
                                min_seconds=1, min_score=0.5, pad=0.1)
    assert counts == {"files": 2, "failed": 1, "lines": 6, "segments": 3, "not_found": 1, "low_score": 1, "length": 1}
    rows = read_rows(dest).rows
    # 0.1 s of padding, but only half the 0.05 s gap to the next line found (scored or not)
    assert [(r.path, r.start, r.num_samples) for r in rows] == [
        ("a.wav", int(0.9 * RATE), int(2.125 * RATE)), ("a.wav", int(6.5 * RATE), int(3.2 * RATE)),
        ("b.wav", int(0.4 * RATE), int(1.7 * RATE))]
    assert (tmp_path / "aligned.wrd").read_text().splitlines() == ["HELLO THERE", "AND THEN", "B ONE"]
    assert "broken.wav' (" in capsys.readouterr().err


def test_alignment_errors_name_the_file(recordings: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "gone.json").write_text(json.dumps(_alignment(tmp_path / "gone.wav", [("X", 0.0, 2.0, 1.0)])))
    with pytest.raises(ValueError, match=r"gone.json:1: audio file .*gone.wav' not found"):
        segment_alignments([tmp_path / "gone.json"], tmp_path / "x.tsv", max_seconds=5, min_seconds=1)
    (tmp_path / "bad.jsonl").write_text('{"file": "a"}\n{oops\n')
    assert main([str(tmp_path / "bad.jsonl"), str(tmp_path / "x.tsv"), "--alignment"]) == 2
    assert "bad.jsonl:2: not an alignment" in capsys.readouterr().err
    assert main([str(recordings), str(tmp_path / "cli.tsv"), "--max-seconds", "4", "--min-seconds", "1",
                 "--no-progress", "--workers", "1"]) == 0
    assert "6 segments from 3 files" in capsys.readouterr().out
