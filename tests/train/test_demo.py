"""The README's demo, end to end on real speech (slow: ~10 minutes of CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wav2vec2.train.plots import load_run, verdict

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_learns_on_real_speech(tmp_path: Path) -> None:
    run = tmp_path / "demo"
    env = dict(
        os.environ,
        W2V_PYTHON=sys.executable,  # the test environment is already installed
        W2V_DATA=os.environ.get("W2V_DATA", str(REPO / "data" / "asterisk")),  # cached between runs
        W2V_RUN=str(run),
    )
    proc = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=40 * 60)
    report = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, report
    assert "healthy: the model learned" in proc.stdout + proc.stderr, report  # the run's verdict
    assert (run / "curves.png").stat().st_size > 10_000
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())

    lines, healthy = verdict(run)  # the pretraining task's checks, as the summary printed them
    assert healthy, "\n".join(lines)
    task, history = load_run(run)
    train = [r for r in history if r["split"] == "train"]
    assert train[0]["contrastive"] > 0.95 * task.chance_bits  # it starts at chance and learns
