"""The fairseq worker runs under another interpreter that may lack this package, by path: it
must import nothing from `wav2vec2`, and nothing beside it may shadow a standard module.
(fairseq itself is not installed here, so its updates are not run.)"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import wav2vec2.bench
from wav2vec2.bench import fairseq_worker

WORKER = Path(fairseq_worker.__file__)
BENCH_DIR = Path(wav2vec2.bench.__file__).parent


def test_worker_imports_only_the_standard_library_torch_and_fairseq() -> None:
    tree = ast.parse(WORKER.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    third_party = {name for name in imported if name not in sys.stdlib_module_names and name != "__future__"}
    assert third_party == {"torch", "fairseq"}


def test_worker_runs_by_path_without_loading_the_package(run_python) -> None:
    check = ("import runpy, sys\n"
             f"sys.argv = [{str(WORKER)!r}, '--help']\n"
             "try:\n"
             f"    runpy.run_path({str(WORKER)!r}, run_name='__main__')\n"
             "except SystemExit as e:\n"
             "    assert e.code == 0, e.code\n"
             "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] == 'wav2vec2'))\n")
    proc = run_python("-c", check)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--input" in proc.stdout and "LOADED []" in proc.stdout


def test_no_bench_module_shadows_a_standard_module() -> None:
    """Run by path, the worker has this directory first on sys.path: a `profile.py` here would
    replace the standard library's for torch and fairseq."""
    names = {p.stem for p in BENCH_DIR.glob("*.py")}
    assert not names & set(sys.stdlib_module_names)
