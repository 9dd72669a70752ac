"""scripts/finetune_demo.sh end to end on real speech, shortened (the full run takes about
half an hour; its results are in docs/finetuning.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_finetune_demo_runs_and_scores_both_models(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        W2V_PYTHON=sys.executable,
        W2V_DATA=os.environ.get("W2V_DATA", str(REPO / "data" / "asterisk")),  # cached between runs
        W2V_RUN=str(tmp_path / "run"),
        W2V_PRETRAIN_UPDATES="60",  # the demo warms up for 50
        W2V_FINETUNE_UPDATES="40",
    )
    proc = subprocess.run(["bash", str(REPO / "scripts" / "finetune_demo.sh")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=20 * 60)
    report = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, report
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["subset"] == "test"
    runs = {Path(path).parent.name: r for path, r in results["results"].items()}
    assert set(runs) == {"pretrained", "scratch"}
    for r in runs.values():
        assert r["utterances"] > 100 and r["words"] > 400 and 0 <= r["cer"]
    # the pretrained run really started from the pretraining checkpoint, the other did not
    assert "fine-tuning the encoder of" in (tmp_path / "run" / "pretrained.log").read_text()
    assert "random initialisation" in (tmp_path / "run" / "scratch.log").read_text()
