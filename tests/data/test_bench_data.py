from __future__ import annotations

import importlib.util
import os

import pytest


@pytest.fixture
def bench():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "bench.py")
    spec = importlib.util.spec_from_file_location("bench_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_data_smoke(bench, tmp_path, capsys):
    args = ["data", "--seconds", "30", "--workers", "0", "1", "--json", str(tmp_path / "r.json")]
    bench.main(args)
    out = capsys.readouterr().out
    assert "soundfile loop" in out and "loader w=1" in out
    assert (tmp_path / "r.json").exists()
