"""`scripts/train.py` as a new user meets it: --help, mistakes answered in a line or two that
say what to do, nothing left behind by a failed start, Ctrl-C that keeps the progress."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wav2vec2.files import load_checkpoint
from wav2vec2.train.cli import check_overrides, presets, usage

from helpers import TRAIN_SCRIPT, script_env


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, TRAIN_SCRIPT, *args], capture_output=True, text=True, env=script_env(),
                          cwd=cwd, timeout=120)


def test_help_lists_every_preset_and_where_fields_are_documented(tmp_path: Path) -> None:
    proc = _run("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for name in ("tiny", "demo", "base_librispeech", "large_librivox", "ctc_tiny", "ctc_demo", "ctc_base_10h"):
        assert f"  {name} " in proc.stdout
    assert "wav2vec2/config/training.py" in proc.stdout and "common" not in presets()
    assert usage() in proc.stdout


def test_no_arguments_prints_the_usage_not_a_traceback(tmp_path: Path) -> None:
    proc = _run(cwd=tmp_path)
    assert proc.returncode == 2 and "usage:" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["optim.lrr=1"], "optim.lrr is not a config field; did you mean optim.lr?"),
    (["+model.transformer.num_layerz=3"], "did you mean model.transformer.num_layers?"),
    (["model=huge"], "model=huge: no such model; choose one of base, demo, large, tiny"),
    (["task.freeze_finetune_update=3"], "did you mean task.freeze_finetune_updates?"),
    (["--config-name", "ctc_dmeo"], "--config-name ctc_dmeo: no such preset; did you mean ctc_demo?"),
    (["--config-name=demmo", "optim.lr=1"], "--config-name demmo: no such preset; did you mean demo?"),
    (["-cn", "nothing_like_it"], "--config-name nothing_like_it: no such preset; (presets: base_librispeech,"),
])
def test_unknown_keys_get_a_suggestion(args: list[str], message: str) -> None:
    assert message in check_overrides(args)


def test_known_keys_pass() -> None:
    assert check_overrides(["optim.lr=1e-3", "task.init=x.pt", "task.chance_margin=0.1", "model=large",
                            "hydra/launcher=slurm", "--config-name", "ctc_tiny", "+data.normalize=true"]) is None


def test_mistakes_are_one_line_and_leave_nothing_behind(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cases = [
        (["optim.lrr=1", f"run_dir={run}"], 2, "did you mean optim.lr?"),
        ([f"run_dir={run}"], 2, "data.manifest_dir is not set"),
        ([f"data.manifest_dir={tmp_path}/missing", f"run_dir={run}"], 1, "no manifest"),
        ([f"data.manifest_dir={tmp_path}", f"run_dir={run}", "optim.lr=-1"], 1, None),
    ]
    for args, code, message in cases:
        proc = _run(*args, cwd=tmp_path)
        assert proc.returncode == code, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: "), proc.stderr
        assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr
        if message:
            assert message in proc.stderr
    assert "optim.lr must be > 0" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run dir, no hydra/, no outputs/


def test_ctrl_c_checkpoints_and_the_rerun_resumes(tiny_corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [TRAIN_SCRIPT, f"data.manifest_dir={tiny_corpus}", f"run_dir={run}", "optim.max_update=100000",
            "logging.tensorboard=false", "data.num_workers=1", "train.validate_every=0"]
    env = script_env()
    proc = subprocess.Popen([sys.executable, *args], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not (run / "metrics.jsonl").exists() or (run / "metrics.jsonl").read_text().count("\n") < 3:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out  # checkpointed, but interrupted: `train.py && next-step` must not go on
    assert "Traceback" not in out and "rerun the same command to resume" in out
    from wav2vec2.train import checkpoint as ckpt

    stopped_at = load_checkpoint(run / ckpt.LAST)["num_updates"]
    assert stopped_at >= 3
    rerun = subprocess.run([sys.executable, *args[:3], "optim.max_update=" + str(stopped_at + 2), *args[4:]],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0 and f"at update {stopped_at}" in rerun.stderr + rerun.stdout
