"""The shell scripts' --help prints their usage and does nothing else; a wrong argument is
refused before any work starts.

Each script runs from a temporary copy of scripts/ and setup.cfg, so whatever it would do
(create .venv, data/, runs/) shows in that copy. Should a script start its real work after
all, PYTHON=/bin/false makes its install fail at once (non-zero exit) rather than download
anything, and W2V_DATA/W2V_RUN point into the copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# script -> what its usage must name: its arguments, environment variables, how long it takes.
USAGE = {
    "demo.sh": ["usage: bash scripts/demo.sh [HYDRA_OVERRIDE ...]", "W2V_PYTHON", "W2V_DATA", "W2V_RUN",
                "W2V_TORCH_INDEX", "about 5 minutes", "Hydra overrides"],
    "finetune_demo.sh": ["usage: bash scripts/finetune_demo.sh", "W2V_PYTHON", "W2V_DATA", "W2V_RUN",
                         "W2V_PRETRAIN_UPDATES", "W2V_FINETUNE_UPDATES", "W2V_TORCH_INDEX", "half an hour"],
    "probe_demo.sh": ["usage: bash scripts/probe_demo.sh", "W2V_PYTHON", "W2V_DATA", "W2V_RUN", "W2V_FINETUNE_RUN",
                      "W2V_PRETRAINED", "W2V_FINETUNED", "W2V_PRETRAIN_UPDATES", "W2V_CURVE_EVERY",
                      "W2V_TORCH_INDEX", "13 minutes"],
    "continue_demo.sh": ["usage: bash scripts/continue_demo.sh", "W2V_PYTHON", "W2V_DATA", "W2V_RUN",
                         "W2V_SOURCE_UPDATES", "W2V_EXTRA_UPDATES", "W2V_FINETUNE_UPDATES", "40 minutes"],
    "dutch_demo.sh": ["usage: bash scripts/dutch_demo.sh", "W2V_PYTHON", "W2V_DATA", "W2V_ASTERISK", "W2V_RUN",
                      "W2V_BUDGETS", "W2V_SEEDS", "W2V_PRETRAIN_UPDATES", "W2V_FINETUNE_UPDATES", "W2V_LR",
                      "W2V_SCRATCH_LR", "W2V_TORCH_INDEX", "45 minutes"],
    "test.sh": ["usage: bash scripts/test.sh [PYTEST_ARGUMENT ...]", "goes to pytest", "W2V_TORCH_INDEX",
                "a few minutes", "pytest --help"],
    "setup_env.sh": ["usage: bash scripts/setup_env.sh [EXTRA ...]", "W2V_TORCH_INDEX", "PYTHON",
                     "dev", "first run downloads"],
}


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A checkout with only what the scripts read before their work: scripts/ and setup.cfg."""
    root = tmp_path / "repo"
    shutil.copytree(REPO / "scripts", root / "scripts")
    shutil.copy(REPO / "setup.cfg", root / "setup.cfg")
    return root


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _run(root: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("W2V_")}
    env.update(PYTHON="/bin/false", W2V_DATA=str(root / "data" / "asterisk"), W2V_RUN=str(root / "runs" / "x"))
    return subprocess.run(["bash", str(root / "scripts" / script), *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("script", sorted(USAGE))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_usage_and_does_nothing(copy: Path, script: str, flag: str) -> None:
    before = _files(copy)
    proc = _run(copy, script, flag)
    assert proc.returncode == 0, proc.stderr
    for needle in USAGE[script]:
        assert needle in proc.stdout, f"{script} {flag}: {needle!r} missing from\n{proc.stdout}"
    assert not proc.stdout.lstrip().startswith("#") and "set -euo" not in proc.stdout  # the text, not the code
    assert proc.stderr == ""
    assert _files(copy) == before  # no .venv, data/ or runs/


@pytest.mark.parametrize("script, args, message", [
    ("demo.sh", ["--bogus"], "unknown option --bogus"),
    ("demo.sh", ["optim.max_update=3", "maxupdate"], "maxupdate is not a Hydra override"),
    ("finetune_demo.sh", ["--fast"], "takes no arguments"),
    ("finetune_demo.sh", ["data/x"], "takes no arguments"),
    ("probe_demo.sh", ["--quick"], "takes no arguments"),
    ("continue_demo.sh", ["--fast"], "takes no arguments"),
    ("dutch_demo.sh", ["10min"], "takes no arguments"),
    ("setup_env.sh", ["--upgrade"], "unknown option --upgrade"),
    ("setup_env.sh", ["dev", "gpu"], "unknown extra 'gpu'; setup.cfg has: dev hf export"),
])
def test_wrong_arguments_are_refused_before_any_work(copy: Path, script: str, args: list[str], message: str) -> None:
    before = _files(copy)
    proc = _run(copy, script, *args)
    assert proc.returncode == 2
    assert message in proc.stderr and "usage: bash scripts/" + script in proc.stderr
    assert _files(copy) == before


def test_help_wins_wherever_it_is(copy: Path) -> None:
    """`demo.sh optim.max_update=3 --help` and `test.sh tests/data -h` print the usage too:
    test.sh's other arguments are pytest's, but -h/--help is the script's own."""
    for script, args in (("demo.sh", ["optim.max_update=3", "--help"]), ("test.sh", ["tests/data", "-x", "-h"])):
        proc = _run(copy, script, *args)
        assert proc.returncode == 0 and f"usage: bash scripts/{script}" in proc.stdout
    assert not (copy / ".venv").exists()
