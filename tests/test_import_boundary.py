"""The layers hold: storage <- trainer <- app, bench and tests on top, nothing back up.

- storage/ imports neither the ML stack nor gradio, and nothing of trainer/ or app/;
- trainer/ imports no gradio and nothing of app/;
- the UI modules of app/ import no ML stack and, of trainer/, only trainer.config (the
  service is passed in); app/cli.py and app/commands.py build the service (lazily);
- bench/ and tests/ import only the product, not each other;
- no import cycle between the project's modules (module-level imports).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"
ML = {"torch", "peft", "transformers", "bitsandbytes", "accelerate", "trl"}
# The composition root: it builds the service, so it may import trainer/ (lazily).
APP_ROOT = {"cli.py", "commands.py"}


def _imports(path: Path, top_level_only: bool = False) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, at any depth (also inside functions)
    unless ``top_level_only``; ``from a import b`` gives both ``a`` and ``a.b``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _violations(folder: str, bad) -> list[str]:
    return [f"{p.relative_to(ROOT)}:{line} imports {mod}" for p in _files(folder)
            for line, mod in _imports(p) if bad(p, mod)]


def _top(mod: str) -> str:
    return mod.split(".")[0]


def test_storage_imports_no_model_ui_or_upper_layer():
    bad = _violations("storage", lambda p, m: _top(m) in ML | {"gradio", "trainer", "app",
                                                                "bench", "tests"})
    assert not bad, "; ".join(bad)


def test_trainer_imports_no_ui_and_no_app():
    bad = _violations("trainer", lambda p, m: _top(m) in {"gradio", "app", "bench", "tests"})
    assert not bad, "; ".join(bad)


def test_app_ui_modules_import_no_ml_stack():
    def bad(p: Path, m: str) -> bool:
        if _top(m) in ML:
            return True
        if p.name in APP_ROOT:
            return False
        return _top(m) == "trainer" and not (m == "trainer.config"
                                             or m.startswith("trainer.config."))
    found = _violations("app", bad)
    assert not found, "app/ must not import the ML stack: " + "; ".join(found)


def test_bench_and_tests_import_only_the_product():
    bad = (_violations("bench", lambda p, m: _top(m) == "tests")
           + _violations("tests", lambda p, m: _top(m) == "bench"))
    assert not bad, "; ".join(bad)


def test_no_import_cycles():
    modules = {}
    for folder in ("app", "trainer", "storage"):
        for p in _files(folder):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = p
    graph = {name: {m for _, m in _imports(p, top_level_only=True) if m in modules}
             for name, p in modules.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [" -> ".join(c) for name in sorted(graph) if (c := cycle_from(name))]
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_importing_ui_does_not_load_torch():
    code = ("import sys, app.ui, app.views, app.api; "
            "bad = sorted(m for m in ('torch', 'peft', 'transformers', 'bitsandbytes') "
            "if m in sys.modules); print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, f"importing app.ui loaded {res.stdout.strip()} {res.stderr[-800:]}"


@pytest.mark.parametrize("source, expected", [
    ("def f():\n    import torch.nn\n    from transformers import AutoModel\n"
     "from trainer.service import Service\n", {"torch.nn", "transformers", "trainer.service"}),
])
def test_checker_finds_nested_and_from_imports(tmp_path, source, expected):
    f = tmp_path / "x.py"
    f.write_text(source)
    assert expected <= {m for _, m in _imports(f)}
    assert {m for _, m in _imports(f, top_level_only=True)} == {"trainer.service",
                                                                 "trainer.service.Service"}
