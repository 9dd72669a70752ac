"""The `shards` loader section end to end on a few seconds of audio; the `fsdp-plan` memory
model: real parameter counts, its parts, and what checkpointing and sharding change; the
`fsdp-memory` measurement on two gloo ranks of the tiny model."""

from __future__ import annotations

import json

import pytest

from wav2vec2.bench.cli import main
from wav2vec2.bench.fsdp_plan import GB, count_parameters, max_frames, memory_model, model_config

from helpers import free_port


def test_bench_shards_smoke(tmp_path, capsys) -> None:
    main(["shards", "--seconds", "40", "--min-seconds", "2", "--max-seconds", "4", "--workers", "0", "1",
          "--shard-mb", "0.5", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert "shards" in out and "opens/s" in out
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [r["name"] for r in rows] == [f"{fmt} {reader} w={w}" for fmt in ("flac", "wav") for w in (0, 1)
                                         for reader in ("files", "shards")]
    for r in rows:
        assert r["section"] == "shards" and r["audio_s_per_s"] > 0 and r["seeks"] >= 0
    files, shards = rows[0], rows[1]
    assert files["opens"] > shards["opens"] >= 1 and shards["seeks"] == files["opens"]  # one seek per utterance


def test_parameter_counts_are_the_published_ones() -> None:
    assert count_parameters(model_config("LARGE")).total == 317_390_592  # the LARGE preset
    assert count_parameters(model_config("1B")).total == 965_514_752  # omniASR-W2V-1B
    assert count_parameters(model_config("7B")).total == 6_488_487_168  # omniASR-W2V-7B


@pytest.mark.parametrize("size", ["1B", "7B"])
def test_memory_model_parts(size) -> None:
    cfg = model_config(size)
    fsdp = memory_model(cfg, frames=3750, num_gpus=8)
    ddp = memory_model(cfg, frames=3750, strategy="ddp")
    assert fsdp["states"] == pytest.approx(16 * fsdp["parameters"] / 8) and ddp["states"] == 16 * ddp["parameters"]
    assert fsdp["activations"] == ddp["activations"] and fsdp["total"] < ddp["total"]
    ckpt = memory_model(cfg, frames=3750, num_gpus=8, checkpointing=True)
    assert ckpt["activations"] < fsdp["activations"] / 2 and ckpt["states"] == fsdp["states"]
    assert memory_model(cfg, frames=7500)["activations"] == pytest.approx(2 * fsdp["activations"], rel=1e-3)
    most = max_frames(cfg, strategy="fsdp")
    assert memory_model(cfg, frames=most)["total"] <= 0.9 * 80 * GB < memory_model(cfg, frames=most + 50)["total"]


def test_7b_needs_sharding() -> None:
    cfg = model_config("7B")
    assert memory_model(cfg, frames=1, strategy="ddp")["states"] > 80 * GB  # Adam + fp32 weights alone
    assert max_frames(cfg, strategy="ddp", checkpointing=True) == 0 < max_frames(cfg, strategy="fsdp")


def test_fsdp_memory_halves_what_a_rank_holds(tmp_path, capsys) -> None:
    """Two gloo ranks of the tiny model: FSDP2's parameters and Adam moments per rank are half
    of DDP's (up to the padding of uneven shards); the measurement runs end to end."""
    main(["fsdp-memory", "--sizes", "TINY", "--port", str(free_port()), "--json", str(tmp_path / "r.json")])
    assert "TINY" in capsys.readouterr().out
    ddp, fsdp = json.loads((tmp_path / "r.json").read_text())
    assert (ddp["name"], fsdp["name"]) == ("TINY ddp", "TINY fsdp")
    assert fsdp["states_mb"] == pytest.approx(ddp["states_mb"] / 2, rel=0.05)
    assert all(r["peak_mem_mb"] >= r["after_mb"] > 0 and len(r["per_rank_peak_mb"]) == 2 for r in (ddp, fsdp))
