"""scripts/probe.py: every snapshot of a pretraining run probed with the same budget, a table
and a curve; any model the loader reads; what to do when a run kept no snapshots."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wav2vec2.train import checkpoint as ckpt
from wav2vec2.train.probe import main, targets

from helpers import REPO, compose_cfg, make_trainer, script_env


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path) -> Path:
    """Tiny pretraining, 6 updates, a snapshot every 2 kept: checkpoint_00000002/4/6.pt."""
    run = tmp_path_factory.mktemp("pretrain")
    cfg = compose_cfg("tiny", [f"data.manifest_dir={tiny_corpus}", f"run_dir={run}", "logging.tensorboard=false",
                               "optim.max_update=6", "checkpoint.save_every=2", "checkpoint.keep_last=0",
                               "train.validate_every=2"])
    make_trainer(cfg).fit()
    return run


def test_snapshots_are_chosen_from_the_newest(pretrain_run: Path) -> None:
    found, run = targets([pretrain_run])
    assert run == pretrain_run and [t.update for t in found] == [2, 4, 6]
    found, _ = targets([pretrain_run], every=2)
    assert [t.update for t in found] == [2, 6]  # every 2nd counted back from the newest, which is always in
    found, run = targets([pretrain_run / ckpt.LAST, Path("random")])
    names = [(t.name, t.update) for t in found]
    assert run is None and names == [(f"{pretrain_run.name}_checkpoint_last", 6), ("random-init", 0)]


def test_a_run_without_snapshots_says_how_to_keep_them(tmp_path: Path, pretrain_run: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text((pretrain_run / "config.yaml").read_text())
    with pytest.raises(FileNotFoundError, match="checkpoint.keep_last=0 checkpoint.save_every=N"):
        targets([run])


def test_probe_curve_of_a_run(pretrain_run: Path, class_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "probe"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "probe.py"), str(pretrain_run), "--every", "2", "--seeds", "1,2",
         "--preset", "classify_tiny", "--out", str(out), f"data.manifest_dir={class_corpus}", "optim.max_update=4",
         "train.validate_every=2", "logging.tensorboard=false"],
        capture_output=True, text=True, env=script_env(), cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [line.split("\t") for line in (out / "probe.tsv").read_text().splitlines()]
    assert rows[0] == ["model", "update", "seed", "metric", "best valid", "loss", "lowest valid", "seconds"]
    probed = [(r[0], r[1], r[2]) for r in rows[1:] if r[2] in ("1", "2")]
    assert probed == [("checkpoint_00000002", "2", "1"), ("checkpoint_00000002", "2", "2"),
                      ("checkpoint_00000006", "6", "1"), ("checkpoint_00000006", "6", "2")]
    assert [r[2] for r in rows[1:]].count("mean ± sd") == 2
    for name, _, seed in probed:
        records = (out / name / f"seed{seed}" / "metrics.jsonl").read_text()
        best = max(float(x.split('"accuracy": ')[1].split(",")[0].rstrip("}")) for x in records.splitlines()
                   if '"split": "valid"' in x)
        lowest = min(float(x.split('"loss": ')[1].split(",")[0].rstrip("}")) for x in records.splitlines()
                     if '"split": "valid"' in x)
        row = next(r for r in rows if (r[0], r[2]) == (name, seed))
        assert float(row[4]) == pytest.approx(best, rel=1e-3)
        assert row[5] == "loss" and float(row[6]) == pytest.approx(lowest, rel=1e-3)
    assert (out / "probe.png").stat().st_size > 10_000
    assert "| checkpoint_00000006 | 6 |" in proc.stdout  # the Markdown table, printed
    # Rerunning reuses the finished probes as they are (no training), with the time they took.
    table = (out / "probe.tsv").read_text()
    assert main([str(pretrain_run), "--every", "2", "--seeds", "1,2", "--preset", "classify_tiny", "--out", str(out),
                 f"data.manifest_dir={class_corpus}"]) == 0
    assert (out / "probe.tsv").read_text() == table


def test_bad_paths_are_named(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "nothing.pt"), "--preset", "probe_ctc_tiny"]) == 2
    assert "nothing.pt" in capsys.readouterr().err
