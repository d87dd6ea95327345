"""The test suite's own layout: shared parts live in tests/helpers/, each defined once, and no test module imports
another (a test module's helpers are its own; what two files need goes to tests/helpers/). conftest.py holds the
fixtures; a test may import one of those from it (to re-scope it), nothing else."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

TESTS = Path(__file__).resolve().parent
HELPERS = TESTS / "helpers"

# The helpers there must be one of: a test module defining its own is a copy (import it instead).
ONE_OF_EACH = {"wait_until", "eventually", "StepClock", "free_port", "make_config", "agent_toml", "delivery_config",
               "PtyPair", "telegram_bytes", "RunningAgent", "grant", "Collector", "Gate", "make_reading",
               "abandon", "start_emulator", "stop_emulator", "expected_values"}
FORMER = {"until": "eventually", "config_text": "agent_toml"}  # names the copies had
# Several suites have a neighbourhood of their own, each its own `town` fixture and `Town` class.
TOWNS = {"town", "Town"}


def python_files():
    return [p for p in TESTS.rglob("*.py") if "vendor" not in p.relative_to(TESTS).parts]


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """Every module an import statement names (anywhere in the file, functions included); a relative import as
    '.name'."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, "." * node.level + (node.module or "")))
    return sorted(found)


@cache
def conftest_names() -> set[str]:
    return top_level_definitions(TESTS / "conftest.py")


def is_test_module(name: str) -> bool:
    """tests.test_x, tests.conftest, tests.hil.test_x, a bare test_x or conftest, or a relative import."""
    if name.startswith("."):
        return True
    parts = name.split(".")
    if parts[0] == "tests":
        return parts[1:2] != ["helpers"]
    return parts[0].startswith("test_") or parts[0] == "conftest"


def forbidden_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = [f"{line}: imports {name}" for line, name in imported_modules(tree)
             if is_test_module(name) and name not in ("tests.helpers", "tests.conftest", "tests")]
    fixtures = conftest_names()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "tests.conftest":
            found += [f"{node.lineno}: imports {a.name} from tests.conftest (it is in {helper_of(a.name)})"
                      for a in node.names if a.name not in fixtures]
        if isinstance(node, ast.ImportFrom) and node.module == "tests":
            found += [f"{node.lineno}: imports tests.{a.name}" for a in node.names
                      if a.name not in ("helpers", "conftest")]
    shown = path.relative_to(TESTS.parent) if path.is_relative_to(TESTS.parent) else path
    return [f"{shown}:{where}" for where in found]


def helper_of(name: str) -> str:
    owners = [p for p in sorted(HELPERS.glob("*.py")) if name in top_level_names(p)]
    return f"tests/helpers/{owners[0].name}" if owners else "tests/helpers/"


def test_no_test_module_imports_another():
    offenders = [line for path in python_files() for line in forbidden_imports(path)]
    assert not offenders, "move what is shared to tests/helpers/ and import it from there:\n" + "\n".join(offenders)


def top_level_definitions(path: Path) -> set[str]:
    return {node.name for node in ast.parse(path.read_text()).body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


def top_level_names(path: Path) -> set[str]:
    """Functions, classes and assigned constants."""
    names = top_level_definitions(path)
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                names |= {e.id for e in (target.elts if isinstance(target, ast.Tuple) else [target])
                          if isinstance(e, ast.Name)}
    return names


def test_each_helper_is_defined_once():
    """No two helper modules define the same function or class (but their towns), and no test module defines its
    own copy of a helper that must be one."""
    owners: dict[str, list[str]] = {}
    for path in sorted(HELPERS.glob("*.py")):
        for name in top_level_definitions(path):
            owners.setdefault(name, []).append(path.stem)
    twice = {name: where for name, where in owners.items() if len(where) > 1 and name not in TOWNS}
    assert not twice, twice
    assert ONE_OF_EACH <= owners.keys(), ONE_OF_EACH - owners.keys()
    copies = [f"{path.relative_to(TESTS.parent)}: {name} (import {FORMER.get(name, name)} from "
              f"tests/helpers/{owners[FORMER.get(name, name)][0]}.py)"
              for path in sorted(TESTS.rglob("test_*.py"))
              for name in sorted(top_level_definitions(path) & (ONE_OF_EACH | FORMER.keys()))]
    assert not copies, "\n".join(copies)


def test_the_check_sees_an_import_of_a_test_module():
    """The checks above can fail: each kind of forbidden import is recognised, the allowed ones are not."""
    forbidden = ["tests.test_delivery", "tests.conftest", "test_store", "conftest", ".test_x", "tests.hil.test_hil",
                 "tests.p1_oracle"]
    allowed = ["tests.helpers", "tests.helpers.agent", "agent.store", "drivers.telegram", "aiohttp.test_utils"]
    assert all(is_test_module(name) for name in forbidden)
    assert not any(is_test_module(name) for name in allowed)
    tree = ast.parse("def f():\n    from tests.test_store import abandon\nimport tests.conftest\n")
    assert [name for _, name in imported_modules(tree)] == ["tests.test_store", "tests.conftest"]


def test_the_check_sees_a_helper_imported_from_conftest(tmp_path):
    """conftest.py's fixtures may be imported from it; a helper it merely re-exports may not."""
    module = tmp_path / "test_x.py"
    module.write_text("from tests.conftest import start_agent\nfrom tests.conftest import make_config\n"
                      "from tests import conftest, test_store\n")
    found = forbidden_imports(module)
    assert len(found) == 2 and "make_config from tests.conftest (it is in tests/helpers/agent.py)" in found[0], found
    assert "imports tests.test_store" in found[1], found
