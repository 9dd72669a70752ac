"""scripts/dutch_demo.sh end to end on the Dutch corpus, shortened (the full run takes about
45 minutes; its results are in docs/finetuning.md), and its report (scripts/budget_report.py)
on results written here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import budget_report  # noqa: E402


def _result(cer: float, wer: float) -> dict:
    return {"cer": cer, "wer": wer, "utterances": 190, "word_errors": 0, "words": 0, "char_errors": 0, "chars": 0}


def test_report_averages_seeds_per_budget_and_arm(tmp_path: Path, capsys) -> None:
    results = {f"runs/d/{name}/checkpoint_best.pt": _result(cer, wer) for name, cer, wer in [
        ("pretrained_10min_s1", 60.0, 95.0), ("pretrained_10min_s2", 64.0, 97.0),
        ("scratch_10min_s1", 80.0, 100.0), ("scratch_10min_s2", 79.0, 99.0),
        ("pretrained_1min_s1", 90.5, 100.0), ("scratch_1min_s1", 95.0, 100.0)]}
    (tmp_path / "results.json").write_text(json.dumps({"subset": "test", "results": results}))
    assert budget_report.main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| 1 min | 90.5 | 95.0 | +4.5 | 100.0 | 100.0 |"  # budgets in order of minutes
    assert lines[3] == ("| 10 min | 62.0 (60.0, 64.0) | 79.5 (80.0, 79.0) | +17.5 | 96.0 (95.0, 97.0) | "
                        "99.5 (100.0, 99.0) |")
    assert (tmp_path / "label_budget.png").stat().st_size > 1000
    results["runs/d/pretrained/checkpoint_best.pt"] = _result(1, 1)  # not ARM_BUDGET_sSEED
    (tmp_path / "results.json").write_text(json.dumps({"subset": "test", "results": results}))
    assert budget_report.main([str(tmp_path)]) == 2
    assert "runs/d/pretrained/checkpoint_best.pt is not in a directory named" in capsys.readouterr().err


@pytest.mark.slow
def test_dutch_demo_runs_both_arms_per_budget_and_reports(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        W2V_PYTHON=sys.executable,
        W2V_DATA=os.environ.get("W2V_FILLETS", str(REPO / "data" / "fillets-nl")),  # cached between runs
        W2V_ASTERISK=os.environ.get("W2V_DATA", str(REPO / "data" / "asterisk")),
        W2V_RUN=str(tmp_path / "run"),
        W2V_BUDGETS="1min 5min",
        W2V_SEEDS="3",
        W2V_PRETRAIN_UPDATES="60",  # the demo warms up for 50
        W2V_FINETUNE_UPDATES="30",
    )
    proc = subprocess.run(["bash", str(REPO / "scripts" / "dutch_demo.sh")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=20 * 60)
    report = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, report
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())["results"]
    assert {Path(p).parent.name for p in results} == {
        "pretrained_1min_s3", "scratch_1min_s3", "pretrained_5min_s3", "scratch_5min_s3"}
    for r in results.values():
        assert r["utterances"] > 150 and 0 <= r["cer"]
    # pretrained on both corpora (Dutch rows, then Asterisk's under a second root)
    train_tsv = (run / "pretrain_data" / "train.tsv").read_text().splitlines()
    assert train_tsv[0].endswith("fillets-nl/audio") and train_tsv[1].endswith("asterisk/audio")
    assert any(line.endswith("root=1") for line in train_tsv) and not train_tsv[2].endswith("root=1")
    # each arm as it should start: from the pretraining checkpoint, or random with the CNN trainable
    assert "fine-tuning the encoder of" in (run / "pretrained_5min_s3.log").read_text()
    assert "random initialisation" in (run / "scratch_5min_s3.log").read_text()
    assert "grad_mult: 1.0" in (run / "scratch_5min_s3" / "config.yaml").read_text()
    assert "grad_mult: 0.0" in (run / "pretrained_5min_s3" / "config.yaml").read_text()
    table = (run / "results.md").read_text()
    assert "| 1 min |" in table and "| 5 min |" in table and (run / "label_budget.png").is_file()
