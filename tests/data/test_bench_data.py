from __future__ import annotations


def test_bench_data_smoke(bench, tmp_path, capsys):
    args = ["data", "--seconds", "30", "--workers", "0", "1", "--json", str(tmp_path / "r.json")]
    bench.main(args)
    out = capsys.readouterr().out
    assert "soundfile loop" in out and "loader w=1" in out
    assert (tmp_path / "r.json").exists()
