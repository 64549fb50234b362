"""The command line as a user runs it: real subprocesses of ``python app.py``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def app(*args, env=None, input=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("LIVEDPO_")}
    e.update(env or {})
    return subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, capture_output=True,
                          text=True, env=e, input=input, timeout=300)


def test_status_json_on_an_empty_data_dir_shows_default_prompts(tmp_path):
    r = app("status", "--json", "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"prompts", "pairs", "votes", "serving_adapter", "adapters", "rounds"} <= set(out)
    assert out["prompts"] >= 90 and out["serving_adapter"] == "base" and out["votes"] == 0
    assert out["agreement"]["overlapped_pairs"] == 0
    assert out["agreement"]["krippendorff_alpha"] == {"value": None, "n": 0, "ci95": None}


def test_env_sets_the_data_dir_and_flags_win(tmp_path):
    r = app("status", "--json", env={"LIVEDPO_DATA_DIR": str(tmp_path / "env")})
    assert json.loads(r.stdout)["data_dir"] == str(tmp_path / "env")
    r = app("status", "--json", "--data-dir", str(tmp_path / "flag"),
            env={"LIVEDPO_DATA_DIR": str(tmp_path / "env")})
    assert json.loads(r.stdout)["data_dir"] == str(tmp_path / "flag")


def test_bad_settings_are_listed_together(tmp_path):
    r = app("status", "--data-dir", str(tmp_path), env={"LIVEDPO_BETA": "-1",
                                                        "LIVEDPO_LORA_R": "0"})
    assert r.returncode == 2
    assert "beta=-1.0: must be > 0" in r.stderr and "lora_r=0: must be >= 1" in r.stderr


def test_import_and_export_round_trip(tmp_path):
    d = str(tmp_path / "d")
    prompts = tmp_path / "p.txt"
    prompts.write_text("First new prompt\nSecond new prompt\n")
    r = app("import-prompts", str(prompts), "--data-dir", d)
    assert r.returncode == 0 and "imported 2 new prompt(s)" in r.stdout
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello!", "rejected": "No."}) + "\n")
    assert app("import-prefs", str(prefs), "--data-dir", d).returncode == 0
    out = tmp_path / "out.jsonl"
    r = app("export", "--format", "dpo", "--out", str(out), "--data-dir", d)
    (row,) = [json.loads(x) for x in out.read_text().split("\n") if x]
    assert r.returncode == 0 and row == {
        "prompt": "Hi?", "chosen": "Hello!", "rejected": "No.", "template": None,
        "pair_id": 1, "votes": 1, "agreement": 1.0, "annotators": {"import": "chosen"},
        "version_chosen": "import", "version_rejected": "import", "chosen_end": None,
        "rejected_end": None, "adjudicated_by": None}
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\n")
    r = app("import-prompts", str(bad), "--data-dir", d)
    assert r.returncode == 2 and "bad.txt, line 2: not valid UTF-8" in r.stderr


def test_add_user_writes_a_salted_hash(tmp_path):
    users = tmp_path / "users.json"
    r = app("add-user", "ada", "--role", "admin", "--auth-file", str(users),
            input="correct horse battery\n")
    assert r.returncode == 0, r.stderr
    text = users.read_text()
    assert "correct horse" not in text and '"admin"' in text
    r = app("add-user", "bob", "--auth-file", str(users), input="short\n")
    assert r.returncode == 2 and "8" in r.stderr


@pytest.mark.slow
def test_generate_and_train_headless(tmp_path, tiny_model_dir):
    d = str(tmp_path / "d")
    common = ["--data-dir", d, "--model", str(tiny_model_dir), "--max-new-tokens", "6"]
    r = app("generate", "--prompt", "Say hi", "--n", "2", "--json", *common)
    assert r.returncode == 0, r.stderr
    pairs = json.loads(r.stdout)
    assert len(pairs) == 2 and all(p["prompt"] == "Say hi" for p in pairs)
    r = app("train", "--rounds", "1", *common)
    assert r.returncode == 1 and "collect more A/B votes" in r.stdout  # no votes yet


@pytest.mark.slow
def test_bad_model_is_a_clear_error(tmp_path):
    r = app("generate", "--prompt", "x", "--data-dir", str(tmp_path), "--model",
            str(tmp_path / "missing-model"))
    assert r.returncode == 2 and "no such directory" in r.stderr


@pytest.mark.slow
def test_simulate_checks_its_input_before_loading_anything(tmp_path):
    """Bad prompts, split or oracle settings fail at once, naming the fix; no DB is made."""
    prompts = tmp_path / "why.txt"
    prompts.write_text("Why is the sky blue?\nWhy do cats purr?\nWhy does ice float?\n")
    data = tmp_path / "d"
    r = app("simulate", "--oracle", "keyword", "--prompts", str(prompts), "--eval-prompts",
            "3", "--data-dir", str(data))
    assert r.returncode == 2 and "--eval-prompts 3: there are 3 prompts" in r.stderr
    r = app("simulate", "--oracle", "keyword", "--prompts", str(tmp_path / "none.txt"),
            "--data-dir", str(data))
    assert r.returncode == 2 and "none.txt" in r.stderr
    r = app("simulate", "--oracle", "keyword", "--keyword", " ", "--data-dir", str(data))
    assert r.returncode == 2 and "--keyword ' ' is empty" in r.stderr
    r = app("simulate", "--oracle", "keyword", "--keyword-tiebreak", "longer")
    assert r.returncode == 2 and "invalid choice: 'longer'" in r.stderr
    r = app("simulate", "--oracle", "keyword", "--resume", "--data-dir", str(data))
    assert r.returncode == 2 and "--resume: no stopped simulate run in --data-dir" in r.stderr
    assert not data.exists()


def test_every_subcommand_has_a_function_and_every_function_a_subcommand():
    import argparse

    from app.cli import COMMANDS, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(COMMANDS)
    assert all(callable(f) for f in COMMANDS.values())
