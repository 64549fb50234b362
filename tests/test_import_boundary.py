"""app/ talks to the service object it is given and never imports the ML stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "app"
FORBIDDEN = {"torch", "peft", "transformers", "bitsandbytes", "accelerate", "trl"}
# Project modules that import torch themselves: the UI gets the service passed in. (The
# CLI, app/cli.py and app/commands.py, is the composition root that builds the service,
# lazily inside its commands, so only the UI modules are held to this list.)
UI_MODULES = {"ui.py", "views.py", "api.py"}
FORBIDDEN_PROJECT = {"trainer.service", "trainer.policy", "trainer.rounds", "trainer.pool",
                     "trainer.generate", "trainer.logprobs", "trainer.losses",
                     "trainer.scoring", "trainer.trainloop", "trainer.modelcache"}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, at any depth (also inside functions)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


@pytest.mark.parametrize("path", sorted(APP.glob("*.py")), ids=lambda p: p.name)
def test_app_module_imports_no_ml_stack(path):
    project = FORBIDDEN_PROJECT if path.name in UI_MODULES else set()
    bad = [f"{path.name}:{line} imports {mod}" for line, mod in _imports(path)
           if mod.split(".")[0] in FORBIDDEN or mod in project]
    assert not bad, "app/ must not import the ML stack: " + "; ".join(bad)


def test_importing_ui_does_not_load_torch():
    code = ("import sys, app.ui, app.views, app.api; "
            "bad = sorted(m for m in ('torch', 'peft', 'transformers', 'bitsandbytes') "
            "if m in sys.modules); print(bad); sys.exit(1 if bad else 0)")
    root = APP.parent
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, f"importing app.ui loaded {res.stdout.strip()} {res.stderr[-800:]}"


def test_checker_finds_nested_and_from_imports(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def f():\n    import torch.nn\n    from transformers import AutoModel\n"
                 "from trainer.service import Service\n")
    mods = {m for _, m in _imports(f)}
    assert {"torch.nn", "transformers", "trainer.service"} <= mods
