"""trainer.offline: the app's own DPO export trains as it is (texts with line and paragraph
separators included), and through accelerate 2 CPU processes (DDP over gloo) match 1."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent


def _prefs(path: Path) -> Path:
    rows = [{"prompt": f"Question {i}?", "chosen": f"Short answer {i}.",
             "rejected": f"A much longer and rambling answer number {i} that goes on."}
            for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(cmd: list[str]) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.mark.slow
def test_two_process_accelerate_run_matches_single_process_shapes(tmp_path, tiny_model_dir):
    data = _prefs(tmp_path / "prefs.jsonl")
    common = ["-m", "trainer.offline", "--data", str(data), "--model", str(tiny_model_dir),
              "--micro-batch", "2", "--grad-accum", "1", "--epochs", "1", "--lora-r", "4"]
    # accelerate's --cpu launcher starts one process without MPI; --multi_gpu uses torchrun,
    # and trainer.offline runs those processes on CPU (gloo) when no GPU is visible
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    out2 = _run([*launch, "--num_processes", "2", *common, "--out", str(tmp_path / "two")])
    out1 = _run([sys.executable, *common, "--out", str(tmp_path / "one")])
    meta2 = json.loads(out2.strip().splitlines()[-1])
    meta1 = json.loads(out1.strip().splitlines()[-1])
    assert meta2["processes"] == 2 and meta1["processes"] == 1
    w2 = load_file(tmp_path / "two" / "adapter_model.safetensors")
    w1 = load_file(tmp_path / "one" / "adapter_model.safetensors")
    assert w1.keys() == w2.keys() and w1
    assert all(w1[k].shape == w2[k].shape for k in w1)
    assert any(v.abs().sum() > 0 for k, v in w2.items() if "lora_B" in k)  # it trained


def test_bad_data_file_is_a_clear_error(tmp_path):
    from trainer.training.offline import read_dpo_jsonl

    f = tmp_path / "x.jsonl"
    f.write_text('{"prompt": "p", "chosen": "a"}\n')
    with pytest.raises(ValueError, match="x.jsonl:1: not a DPO row"):
        read_dpo_jsonl(f)


# U+2028 LINE SEPARATOR, U+2029 PARAGRAPH SEPARATOR, U+0085 NEXT LINE: json.dumps with
# ensure_ascii=False leaves them raw, and str.splitlines() would split a JSONL row at them.
SEPARATORS = "one\u2028two\u2029three\u0085four"


def _export_with_separators(tmp_path: Path) -> Path:
    from storage.db import Store
    from storage.io import export

    store = Store(None)
    pid = store.add_prompt(f"Why? {SEPARATORS}", source="user")
    a = store.record_pair(pid, f"A {SEPARATORS}", f"B {SEPARATORS}", "base", "base", {}, 7)
    b = store.record_pair(pid, "C", "D", "base", "base", {}, 7)
    store.record_vote(a, "ann", "a")
    store.record_vote(b, "ann", "b", better_answer=f"Better {SEPARATORS}")
    out = tmp_path / "prefs.jsonl"
    export(store, "dpo", out)
    return out


def test_the_apps_dpo_export_reads_back_with_separators_in_every_text(tmp_path):
    from trainer.training.offline import read_dpo_jsonl

    rows = read_dpo_jsonl(_export_with_separators(tmp_path))
    texts = {r[k] for r in rows for k in ("prompt", "chosen", "rejected")}
    assert {f"Why? {SEPARATORS}", f"A {SEPARATORS}", f"B {SEPARATORS}",
            f"Better {SEPARATORS}"} <= texts
    assert all(set(r) == {"prompt", "chosen", "rejected", "template", "chosen_end",
                          "rejected_end"} for r in rows)


@pytest.mark.slow
def test_offline_trainer_trains_on_the_apps_export_with_separators(tmp_path, tiny_model_dir):
    data = _export_with_separators(tmp_path)
    out = _run([sys.executable, "-m", "trainer.offline", "--data", str(data), "--model",
                str(tiny_model_dir), "--micro-batch", "2", "--epochs", "1", "--lora-r", "4",
                "--out", str(tmp_path / "adapter")])
    meta = json.loads(out.strip().splitlines()[-1])
    assert meta["rows"] == len(read_jsonl_rows(data)) >= 2
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def read_jsonl_rows(path: Path) -> list[dict]:
    from storage.readers import read_jsonl

    return read_jsonl(path)


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED", "MEGATRON_LM"])
def test_sharded_modes_are_refused_with_the_fix(kind):
    from trainer.training.offline import check_distributed

    with pytest.raises(SystemExit, match=f"does not support accelerate's {kind} mode.*--multi_gpu"):
        check_distributed(kind)


@pytest.mark.parametrize("kind", ["NO", "MULTI_CPU", "MULTI_GPU"])
def test_data_parallel_modes_are_accepted(kind):
    from trainer.training.offline import check_distributed

    assert check_distributed(kind) is None
