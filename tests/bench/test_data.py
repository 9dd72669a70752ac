"""The `data` section end to end through the command line, on 30 s of audio per format."""

from __future__ import annotations

import json

from wav2vec2.bench.cli import main


def test_bench_data_smoke(tmp_path, capsys):
    args = ["data", "--seconds", "30", "--workers", "0", "1", "--json", str(tmp_path / "r.json")]
    main(args)
    out = capsys.readouterr().out
    assert "soundfile loop" in out and "loader w=1" in out
    assert (tmp_path / "r.json").exists()
    rows = json.loads((tmp_path / "r.json").read_text())
    # one row per format x reader (soundfile loop, w=0, w=1), the keys every row has, in order
    assert [r["name"] for r in rows] == [f"{fmt} {reader}" for fmt in ("flac", "wav")
                                         for reader in ("soundfile loop", "loader w=0", "loader w=1")]
    assert all(list(r)[:7] == ["section", "name", "impl", "precision", "audio_s_per_s", "mfu", "peak_mem_mb"]
               and r["section"] == "data" and r["audio_s_per_s"] > 0 and r["delivered_s_per_s"] > 0 for r in rows)
