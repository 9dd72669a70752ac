"""Fixtures of the benchmark's tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_python():
    """`python ARGS` in a fresh process with this checkout first on the path, one thread;
    returns the CompletedProcess (text output)."""
    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout,
                              cwd=REPO)

    return run
