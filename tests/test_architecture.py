"""The house rules of docs/architecture.md, checked on every test run:

- the floors: a package imports only from the floors below it (import-linter's layers
  contract in setup.cfg, run as the `lint-imports` command CI users know);
- no import of this package hidden inside a function (the way a cycle or an upward import
  is usually smuggled past such a check), except the few listed below with their reason;
- no module over ~400 lines unless its docstring says why it is one piece.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "wav2vec2"
MAX_LINES = 400
ONE_PIECE = "One file because"
"""What a module over MAX_LINES says at its top, with its reason."""

# (module, imported module): imports inside functions that are there on purpose, and why.
LATE_IMPORTS: dict[tuple[str, str], str] = {}


def _lint_imports() -> str:
    found = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports is missing: it comes with the dev extra (pip install -e '.[dev]')")
    return found


def test_every_floor_imports_only_from_below() -> None:
    proc = subprocess.run([_lint_imports(), "--config", str(REPO / "setup.cfg")], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _late_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of each import of this package inside a function of `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.ImportFrom) and node.level:
                names = [f"(relative) {node.module}"]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found += [(node.lineno, n) for n in names if n.startswith(("wav2vec2", "(relative)"))]
    return found


def test_no_import_of_the_package_is_hidden_in_a_function() -> None:
    hidden = [f"{path.relative_to(REPO)}:{line} imports {module}" for path in _modules()
              for line, module in _late_imports(path) if (_name(path), module) not in LATE_IMPORTS]
    assert not hidden, "imports of wav2vec2 inside functions (move them to the top, or to a lower floor):\n" + \
        "\n".join(hidden)


def test_modules_fit_in_a_readers_head() -> None:
    long = []
    for path in _modules():
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if lines > MAX_LINES and ONE_PIECE not in docstring:
            long.append(f"{path.relative_to(REPO)}: {lines} lines")
    assert not long, (f"modules over {MAX_LINES} lines whose docstring does not say '{ONE_PIECE} ...':\n"
                      + "\n".join(long))


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """The AST check sees a hidden import, and the line count a long module."""
    module = tmp_path / "m.py"
    module.write_text('"""A module."""\n\n\ndef f():\n    from wav2vec2.train import trainer\n    import wav2vec2.tasks\n')
    assert _late_imports(module) == [(5, "wav2vec2.train"), (6, "wav2vec2.tasks")]
