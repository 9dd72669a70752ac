"""The benchmark's command line: every section parses its flags, `--help` lists the sections
but not the internal commands, and the internal `_memory_child` still runs one memory row."""

from __future__ import annotations

import json

import pytest

from wav2vec2.bench.cli import INTERNAL_COMMANDS, build_parser, main

SECTIONS = ["train", "model", "mask", "memory", "scaling", "profile", "ctc", "all", "data", "shards", "fsdp-plan",
            "fsdp-memory", "align", "gpu"]


def test_help_lists_the_sections_and_hides_the_internal_commands(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "{" + ",".join(SECTIONS) + "}" in out
    assert not any(name in out for name in INTERNAL_COMMANDS)


@pytest.mark.parametrize("section", SECTIONS)
def test_each_section_has_help_and_parses_the_documented_flags(section, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([section, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "usage:" in out and "--json" in out
    assert ("--corpus-dir" in out) == (section in ("data", "shards"))
    assert ("--rounds" in out) == (section not in ("data", "shards", "fsdp-plan", "fsdp-memory", "align", "gpu"))
    if section == "align":
        args = build_parser().parse_args(["align", "--model", "m.pt", "--prompts", "a.tsv", "b.tsv", "--minutes",
                                          "1", "60", "--torchaudio-python", "/x/python", "--json", "r.json"])
        assert (args.model, args.prompts, args.minutes, args.torchaudio_python) == \
            ("m.pt", ["a.tsv", "b.tsv"], [1.0, 60.0], "/x/python")
        assert args.func.__name__ == "bench_align"
        return
    if section == "gpu":
        args = build_parser().parse_args(["gpu", "--device", "cpu", "--threads", "1", "--json", "r.json"])
        assert (args.device, args.threads, args.json) == ("cpu", 1, "r.json")
        assert args.func.__name__ == "bench_gpu"
        return
    if section == "data":
        args = build_parser().parse_args(["data", "--seconds", "900", "--workers", "0", "1", "--json", "r.json"])
        assert (args.seconds, args.workers, args.json) == (900.0, [0, 1], "r.json")
        assert args.func.__name__ == "bench_data"
        return
    if section == "shards":
        args = build_parser().parse_args(["shards", "--seconds", "1800", "--min-seconds", "2", "--max-seconds", "6",
                                          "--workers", "0", "2", "--shard-mb", "8", "--json", "r.json"])
        assert (args.seconds, args.min_seconds, args.workers, args.shard_mb) == (1800.0, 2.0, [0, 2], 8.0)
        assert args.func.__name__ == "bench_shards"
        return
    if section == "fsdp-memory":
        args = build_parser().parse_args(["fsdp-memory", "--sizes", "BASE", "--strategies", "fsdp", "--ranks", "2"])
        assert (args.sizes, args.strategies, args.ranks, args.func.__name__) == (["BASE"], ["fsdp"], 2,
                                                                                 "bench_fsdp_memory")
        return
    if section == "fsdp-plan":
        args = build_parser().parse_args(["fsdp-plan", "--sizes", "1B", "7B", "--gpus", "8", "--card-gb", "80"])
        assert (args.sizes, args.gpus, args.card_gb, args.func.__name__) == (["1B", "7B"], 8, 80.0, "bench_fsdp_plan")
        return
    # The flags docs/performance.md and README.md show, on every model section (`all` passes them on).
    args = build_parser().parse_args([section, "--full", "--precision", "fp32", "--rounds", "3", "--reps", "1",
                                      "--fairseq-python", "/x/python", "--scale-peers", "eager",
                                      "--profile-seconds", "15.6", "--top", "15", "--json", "r.json"])
    assert (args.full, args.precision, args.rounds, args.reps, args.fairseq_python) == \
        (True, ["fp32"], 3, 1, "/x/python")
    assert (args.scale_peers, args.profile_seconds, args.top, args.json) == (["eager"], 15.6, 15, "r.json")
    assert args.func.__name__ == f"bench_{'train' if section == 'model' else section}"  # "model": train's old name


def test_internal_commands_still_dispatch(capsys) -> None:
    for name in INTERNAL_COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--impl" in out and "--input" in out  # the child's and the worker's own flags


def test_memory_child_reports_peak_and_built_rss(run_python) -> None:
    """The row `memory` runs in a fresh process, as it runs it: `-m wav2vec2.bench _memory_child`."""
    proc = run_python("-m", "wav2vec2.bench", "_memory_child", "--impl", "ours", "--batch", "1",
                      "--seconds", "0.5", "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("@@")]
    result = json.loads(line[2:])
    assert result["peak_mb"] > result["built_mb"] > 100  # BASE's weights alone are ~360 MB
