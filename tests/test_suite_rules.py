"""Rules the test suite keeps: every test checks something, and nothing can hang forever."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
CHECKS = ("assert", "check_", "expect")  # assert_close, assert_inert, check_failed_round...


def _checks_something(fn: ast.FunctionDef) -> bool:
    for node in ast.walk(fn):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in ("raises", "fail", "warns") or name.startswith(CHECKS):
                return True
    return False


def test_every_test_checks_something():
    silent = []
    for path in sorted(TESTS.glob("test_*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_") \
                    and not _checks_something(node):
                silent.append(f"{path.name}::{node.name}")
    assert not silent, f"tests that assert nothing: {silent}"


def test_the_checker_sees_a_silent_test():
    fn = ast.parse("def test_x():\n    f(1)\n").body[0]
    loud = ast.parse("def test_y():\n    with pytest.raises(E):\n        f(1)\n").body[0]
    assert not _checks_something(fn) and _checks_something(loud)


def test_every_test_has_a_timeout(pytestconfig):
    """pytest-timeout ends a hung test (and prints every thread's stack) instead of CI."""
    assert pytestconfig.pluginmanager.hasplugin("timeout")
    assert 0 < float(pytestconfig.getini("timeout")) <= 900
    assert "pytest-timeout" in (TESTS.parent / "requirements-dev.txt").read_text()
