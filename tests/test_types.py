"""The pure core type-checks strictly (mypy, the files listed under [tool.mypy] in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_pure_core_type_checks_strictly(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache")], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


def test_the_sandbox_packages_lazy_names_are_the_ones_mypy_sees():
    """sandbox/__init__.py imports its public names lazily (`_EXPORTS`) and states them again for mypy under
    TYPE_CHECKING: both must name the same objects of the same modules."""
    import ast

    import sandbox

    tree = ast.parse((REPO / "sandbox" / "__init__.py").read_text())
    guarded = next(node for node in tree.body
                   if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING")
    typed = {alias.name: node.module for node in guarded.body if isinstance(node, ast.ImportFrom)
             for alias in node.names}
    assert set(typed) == set(sandbox._EXPORTS)
    for name, module in typed.items():
        assert getattr(sandbox, name) is getattr(__import__(module, fromlist=[name]), name), name
