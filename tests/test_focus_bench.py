"""bench/focus.py (one draft from K decisive votes, measured offline), a small real run on
the tiny model with answers written for it."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from storage.files import atomic_write, jsonl_text

ROOT = Path(__file__).resolve().parents[1]
WORDS = "sky blue light sun air red wave short long sea".split()


def _answers(model_dir: Path, path: Path, prompts: int = 12) -> None:
    """4 answers per prompt, every other one saying 'because', with the tiny tokenizer's
    ids as if sampled (prompt ids under the plain template)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(0)
    rows = []
    for i in range(prompts):
        prompt = f"Why is thing {i} so?"
        p_ids = tok(f"Question: {prompt}\nAnswer:")["input_ids"]
        for j in range(4):
            text = " ".join(rng.choice(WORDS) for _ in range(5))
            text = f"{text} because {rng.choice(WORDS)}" if j % 2 == 0 else text
            rows.append({"prompt": prompt, "text": text, "ended": True, "end": "\nQuestion:",
                         "ids": tok(" " + text + "\nQuestion:", add_special_tokens=False)[
                             "input_ids"], "prompt_ids": p_ids})
    atomic_write(path, jsonl_text(rows))


@pytest.mark.slow
def test_focus_bench_on_the_tiny_model(tiny_model_dir, tmp_path):
    answers, out = tmp_path / "answers.jsonl", tmp_path / "focus.json"
    _answers(tiny_model_dir, answers)
    cmd = [sys.executable, "bench/focus.py", "--model", str(tiny_model_dir), "--answers",
           str(answers), "--votes", "8", "--eval-prompts", "3", "--samples-per-prompt", "2",
           "--config", '{"max_length": 64, "credit_weight": 0}',
           "--config", '{"max_length": 64, "credit_weight": 100, "credit_alpha": 0.5}',
           "--json", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0 and out.is_file(), f"{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    res = json.loads(out.read_text())
    assert res["votes"] == 8 and res["decisive"] == 18  # 2 decisive A/B pairs per voted prompt
    plain, focused = res["results"]
    assert plain["credited"] == [] and focused["credited"][0] == "because"
    for r in (plain, focused):
        assert r["n"] == 6 and r["steps"] == 4  # 8 pairs, 2 x 2 per step, 2 epochs
        assert 0 <= r["win_rate"] <= 1 and 0 <= r["ended"] <= 1
