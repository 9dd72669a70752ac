"""`bench.py gpu` without CUDA: the same steps on the CPU at tiny sizes, one JSON object whose
figures are sane (positive throughput, MFU within (0, 1], the SDPA report, an exact resume of
the torchrun run), so the GPU check cannot rot before a GPU runs it. ~1 minute: slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "rows.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "scripts/bench.py", "gpu", "--device", "cpu", "--threads", "1",
                           "--json", str(out)], capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    return result, json.loads(out.read_text())


def test_says_it_ran_on_the_cpu_and_which_versions(check):
    result, _ = check
    assert result["device"] == "cpu" and "no CUDA" in result["note"]
    assert result["torch"] == torch.__version__ and result["cuda"] is None
    assert result["model"].startswith("tiny") and result["peak_bf16_tflops"] > 0


def test_sections_have_positive_throughput_and_an_mfu_below_one(check):
    result, _ = check
    for section in ("pretrain_update", "ctc_update", "transcribe"):
        s = result[section]
        assert s["audio_s_per_s"] > 0 and s["seconds"] > 0 and s["tflops_per_s"] > 0, section
        assert 0 < s["mfu"] <= 1, section
        assert s["peak_mem_mb"] > 50, section
    assert result["transcribe"]["audio_s_per_s"] > result["ctc_update"]["audio_s_per_s"]  # no backward


def test_sdpa_report_names_what_runs(check):
    sdpa = check[0]["sdpa"]
    assert sdpa["no_mask"]["math"] == "ok" and sdpa["padding_mask"]["math"] == "ok"  # math runs anything
    assert set(sdpa["no_mask"]) == {"flash", "efficient", "cudnn", "math"}
    assert "cpu_attention" in sdpa["ran_in_pretrain_update"][0]  # dropout on the CPU: not SDPA
    assert sdpa["ran_in_transcribe"] and "cpu_attention" not in sdpa["ran_in_transcribe"][0]  # eval: SDPA


def test_torchrun_resumes_bit_exactly(check):
    run = check[0]["torchrun"]
    assert run["backend"] == "gloo" and [r["returncode"] for r in run["runs"]] == [0, 0, 0]
    assert run["checkpoint_written"] and run["resume_exact"] is True
    assert len(run["train_losses"]) == run["updates"] and all(loss > 0 for loss in run["train_losses"])
    logged = run["logged_last_row"]  # the training log's throughput, with logging.peak_tflops set
    assert logged["device_audio_sec_per_sec"] == logged["audio_sec_per_sec"] > 0 and 0 < logged["mfu"] < 1


def test_warnings_are_a_list_and_the_json_row_holds_the_object(check):
    result, rows = check
    assert isinstance(result["warnings"], list) and isinstance(result["torchrun"]["warnings"], list)
    assert not any("Flash attention kernel not used" in w for w in result["warnings"])  # the probes' own stay out
    assert rows[0]["section"] == "gpu" and rows[0]["check"]["pretrain_update"] == result["pretrain_update"]
