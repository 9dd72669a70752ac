"""scripts/manifest_kinds_demo.py on a synthetic corpus: its segment and two-root manifests
describe the same samples as the fairseq manifest (so the demo's losses are equal bit for bit,
which the script checks and reports), and the shard run trains."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import soundfile as sf

from wav2vec2.data import write_manifest
from wav2vec2.data.manifest import read_rows
from wav2vec2.data.synthetic import write_synthetic_corpus

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # four short demo runs in fresh processes: ~40 s
def test_every_manifest_kind_trains_the_demo_and_the_three_alike_agree(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    entries = write_synthetic_corpus(data / "audio", num_files=30, min_seconds=2.0, max_seconds=4.0)
    write_manifest(data / "train.tsv", str(data / "audio"), entries[:26])
    write_manifest(data / "valid.tsv", str(data / "audio"), entries[26:])
    out = tmp_path / "out"
    main = runpy.run_path(str(REPO / "scripts" / "manifest_kinds_demo.py"))["main"]
    assert main(["--data", str(data), "--out", str(out), "--updates", "3", "--shard-updates", "3",
                 "optim.warmup_updates=1"]) == 0

    # The segment rows name spans of three long files that hold the training files' samples.
    segments = read_rows(out / "segments" / "train.tsv")
    assert {r.path for r in segments.rows} == {"long/spk0.flac", "long/spk1.flac", "long/spk2.flac"}
    first, span = entries[0], segments.rows[0]
    wav, _ = sf.read(data / "audio" / first[0], dtype="int16")
    long, _ = sf.read(out / "segments" / span.path, dtype="int16", start=span.start, frames=span.num_samples)
    assert span.num_samples == first[1] and (wav == long).all()
    # Every other row lives under the second root, copied there.
    two = read_rows(out / "two_roots" / "train.tsv")
    assert [r.root for r in two.rows[:4]] == [0, 1, 0, 1] and Path(two.abspath(two.rows[1])).is_file()
    table = (out / "results.md").read_text()
    assert table in capsys.readouterr().out
    for kind in ("fairseq", "segments", "two_roots"):
        assert f"| {kind} | 3 |" in table and "| yes (" in table.split(f"| {kind} |")[1].split("\n")[0], table
    assert "| shards | 3 |" in table
